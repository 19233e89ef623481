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
