"""Registries: registration, lookup, unknown names with close matches, plugin loading."""

from __future__ import annotations

import pytest

from cmdbench.registry import GENERATORS, Registry, UnknownNameError, load_plugins


def test_register_and_get():
    r = Registry[int]("widget")
    r.register("alpha", 1, description="first")
    assert r.get("alpha") == 1
    assert "alpha" in r and len(r) == 1
    assert [e.description for e in r.entries()] == ["first"]


def test_decorator_registration_uses_docstring():
    r = Registry("widget")

    @r.register("beta")
    def beta():
        """Makes betas.

        More text."""

    assert r.get("beta") is beta
    assert next(r.entries()).description == "Makes betas."


def test_unknown_name_lists_close_matches_and_all_names():
    r = Registry[int]("generator")
    r.register("tiny-unet3d", 1)
    r.register("cmd-ucf101", 2)
    with pytest.raises(UnknownNameError, match="Did you mean 'tiny-unet3d'") as err:
        r.get("tiny-unet")
    assert "Known: cmd-ucf101, tiny-unet3d" in str(err.value)
    assert isinstance(err.value, KeyError) and isinstance(err.value, ValueError)


def test_duplicate_registration_is_an_error():
    r = Registry[object]("widget")
    r.register("a", object())
    with pytest.raises(ValueError, match="already registered"):
        r.register("a", object())


def test_load_plugins_registers_the_reference_generator():
    load_plugins()
    load_plugins()  # idempotent
    assert "tiny-unet3d" in GENERATORS.names()


# --- Name schemes -----------------------------------------------------------------------------------------


def test_scheme_names_resolve_through_the_resolver():
    r = Registry("generator")
    r.register("tiny-unet3d", 1)
    seen = []
    r.register_scheme("diffusers", lambda arg: seen.append(arg) or f"factory for {arg}",
                      description="any pipeline", argument="path-or-id")
    assert r.get("diffusers:/models/a:b") == "factory for /models/a:b"  # only the first colon splits
    assert seen == ["/models/a:b"]
    assert "diffusers:/models/x" in r and "diffusers:" not in r and "other:/x" not in r  # what get() resolves
    assert r.names() == ["tiny-unet3d"] and len(r) == 1  # a scheme is not a name (the contract test skips it)
    assert [e.name for e in r.entries()] == ["tiny-unet3d", "diffusers:<path-or-id>"]


def test_scheme_errors_and_close_matches():
    r = Registry("generator")
    r.register("tiny-unet3d", 1)
    r.register_scheme("diffusers", lambda arg: arg, description="any pipeline", argument="path-or-id")
    with pytest.raises(UnknownNameError, match=r"'diffusers:': write diffusers:<path-or-id> \(any pipeline\)"):
        r.get("diffusers:")
    with pytest.raises(UnknownNameError, match=r"Did you mean 'diffusers:\.\.\.'\? Known: tiny-unet3d, "
                                               r"diffusers:<path-or-id>"):
        r.get("diffuser:/x")
    with pytest.raises(ValueError, match="already registered"):
        r.register_scheme("diffusers", lambda arg: arg)
    with pytest.raises(ValueError, match="would shadow the diffusers: scheme"):
        r.register("diffusers:special", 2)
    with pytest.raises(ValueError, match="without ':'"):
        r.register_scheme("a:b", lambda arg: arg)


def test_snapshot_and_restore_cover_names_and_schemes():
    r = Registry("generator")
    r.register("a", 1)
    state = r.snapshot()
    r.register("b", 2)
    r.register_scheme("s", lambda arg: arg)
    r.restore(state)
    assert r.names() == ["a"] and r.schemes() == []


def test_the_diffusers_scheme_is_registered_by_load_plugins():
    load_plugins()
    assert "diffusers" in GENERATORS.schemes()
