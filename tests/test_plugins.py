"""Third-party plugins: both entry-point forms register, broken plugins are named and skipped, the worked
example package (``examples/cmdbench-example-plugin``) loads through ``importlib.metadata`` and passes the
contract, and the importable contract (:mod:`cmdbench.testing`) catches generators that break it.

Distributions are "installed" the way an installer leaves them: a ``<name>-<version>.dist-info`` folder
(``METADATA``, ``entry_points.txt``) on ``sys.path`` beside the package; ``monkeypatch`` takes the path
away again and the ``plugin_env`` fixture forgets the imported modules and restores the registries.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from cmdbench import registry
from cmdbench.interfaces import (
    CostStage,
    GeneratorSpec,
    SamplingDefaults,
    UnsupportedSettingError,
    check_conditioning,
    stage,
)
from cmdbench.seeding import randn_per_sample
from cmdbench.testing import check_generator, isolated_registries
from cmdbench.video import float_to_uint8

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "cmdbench-example-plugin"


def write_dist(site: Path, name: str, version: str, entry_points: dict[str, str],
               group: str = registry.ENTRY_POINT_GROUP) -> Path:
    """A minimal installed distribution's metadata under ``site``: METADATA and entry_points.txt."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{group}]\n{lines}")
    return info


def write_module(site: Path, package: str, source: str) -> None:
    (site / package).mkdir(parents=True)
    (site / package / "__init__.py").write_text(textwrap.dedent(source))


@pytest.fixture
def plugin_env(tmp_path, monkeypatch):
    """A site folder on sys.path; registries, loaded flag and imported plugin modules restored afterwards."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    before = set(sys.modules)
    monkeypatch.delenv(registry.STRICT_PLUGINS_ENV, raising=False)
    registry.load_plugins()  # built-ins registered before the snapshot (their modules import only once)
    with isolated_registries():
        registry._loaded = False
        yield site
    for name in set(sys.modules) - before:  # forget the plugin modules (files under tmp_path or EXAMPLE)
        origin = str(getattr(sys.modules[name], "__file__", "") or "")
        if origin.startswith((str(tmp_path), str(EXAMPLE))):
            del sys.modules[name]


# --- Entry-point forms ------------------------------------------------------------------------------------

REGISTERING_MODULE = """
    from cmdbench.registry import GENERATORS
    GENERATORS.register("{name}", lambda spec: None, description="registered on import")
"""
REGISTER_FUNCTION = """
    def register():
        from cmdbench.registry import GENERATORS
        GENERATORS.register("{name}", lambda spec: None, description="registered by register()")
"""


def test_entry_point_naming_a_register_function_registers(plugin_env):
    # The documented "module:register" form: loading the entry point only returns the function; it must be
    # called (before the fix ep.load() alone registered nothing).
    write_module(plugin_env, "callable_plugin", REGISTER_FUNCTION.format(name="from-callable"))
    write_dist(plugin_env, "callable-plugin", "1.0", {"mine": "callable_plugin:register"})
    assert "from-callable" not in registry.GENERATORS
    registry.load_plugins()
    assert "from-callable" in registry.GENERATORS
    assert "tiny-unet3d" in registry.GENERATORS  # built-ins loaded as well
    assert not registry.BROKEN_PLUGINS


def test_entry_point_naming_a_module_registers_on_import(plugin_env):
    write_module(plugin_env, "module_plugin", REGISTERING_MODULE.format(name="from-module"))
    write_dist(plugin_env, "module-plugin", "1.0", {"mine": "module_plugin"})
    assert registry.load_entry_points() == ["mine"]
    assert registry.GENERATORS.get("from-module")(None) is None


def test_broken_plugins_are_named_rolled_back_and_skipped(plugin_env, capsys):
    write_module(plugin_env, "bad_import", "import module_that_does_not_exist_1234\n")
    write_module(plugin_env, "needs_args", "def register(registry):\n    pass\n")
    write_module(plugin_env, "half_done", """
        from cmdbench.registry import GENERATORS, METRICS
        def register():
            GENERATORS.register("half-registered", lambda spec: None)
            METRICS.register("half-metric", lambda: None)
            raise RuntimeError("boom after registering")
    """)
    write_module(plugin_env, "duplicate", """
        from cmdbench.registry import GENERATORS
        def register():
            GENERATORS.register("tiny-unet3d", lambda spec: None)
    """)
    write_module(plugin_env, "good_one", REGISTER_FUNCTION.format(name="good-model"))
    write_dist(plugin_env, "broken-plugins", "0.3", {
        "bad-import": "bad_import", "needs-args": "needs_args:register", "half": "half_done:register",
        "dup": "duplicate:register", "good": "good_one:register",
    })
    registry.load_plugins()  # never raises for a third-party failure
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4, err  # one line per broken plugin
    broken = registry.BROKEN_PLUGINS
    assert set(broken) == {"bad-import = bad_import", "needs-args = needs_args:register",
                           "half = half_done:register", "dup = duplicate:register"}
    assert "module_that_does_not_exist_1234" in broken["bad-import = bad_import"]
    assert "needs arguments" in broken["needs-args = needs_args:register"]
    assert "boom after registering" in broken["half = half_done:register"]
    assert "already registered" in broken["dup = duplicate:register"]
    assert any("'half = half_done:register' from broken-plugins 0.3" in line for line in err)
    # Everything a failed plugin registered is gone; the built-in it tried to replace is intact.
    assert "half-registered" not in registry.GENERATORS and "half-metric" not in registry.METRICS
    assert registry.GENERATORS.get("tiny-unet3d").__module__ == "baselines.tiny_unet3d.generator"
    assert "good-model" in registry.GENERATORS


def test_strict_mode_raises_with_the_entry_point_name(plugin_env, monkeypatch):
    write_module(plugin_env, "bad_import", "import module_that_does_not_exist_1234\n")
    write_dist(plugin_env, "broken", "0.1", {"bad": "bad_import"})
    monkeypatch.setenv(registry.STRICT_PLUGINS_ENV, "1")
    with pytest.raises(registry.PluginError, match="'bad = bad_import' from broken 0.1"):
        registry.load_entry_points()


def test_cmdbench_list_works_with_a_broken_plugin(plugin_env, capsys):
    from cmdbench.cli import main

    write_module(plugin_env, "bad_import", "raise ImportError('plugin needs a GPU library')\n")
    write_dist(plugin_env, "broken", "0.1", {"bad": "bad_import"})
    assert main(["list", "generators"]) == 0
    out, err = capsys.readouterr()
    assert "tiny-unet3d" in out
    assert "skipped plugin 'bad = bad_import' from broken 0.1: ImportError: plugin needs a GPU library" in err


# --- The worked example package ----------------------------------------------------------------------------


def install_example(site: Path, monkeypatch) -> dict:
    """Put the example's sources and a dist-info written from its pyproject.toml on sys.path."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    write_dist(site, project["name"], project["version"], project["entry-points"][registry.ENTRY_POINT_GROUP])
    return project


def test_example_plugin_is_listed_and_passes_the_contract(plugin_env, monkeypatch, capsys):
    from cmdbench.cli import main
    from cmdbench.env import generator_provenance

    project = install_example(plugin_env, monkeypatch)
    assert main(["list", "generators"]) == 0
    out = capsys.readouterr().out
    assert "example-pixel-ddim" in out and "example plugin" in out
    case = check_generator("example-pixel-ddim")
    assert case.gen.conditioning == "class"
    provenance = generator_provenance(registry.GENERATORS.get("example-pixel-ddim"))
    assert provenance is not None
    assert (provenance["package"], provenance["version"]) == (project["name"], project["version"])


def test_example_plugin_own_test_suite_runs(plugin_env, monkeypatch):
    import importlib.util

    install_example(plugin_env, monkeypatch)
    spec = importlib.util.spec_from_file_location("example_plugin_tests", EXAMPLE / "tests" / "test_contract.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.test_registered_generator_follows_the_contract()


@pytest.mark.slow
def test_example_plugin_installs_with_pip_and_lists(tmp_path):
    """The real packaging path: pip builds and installs the example into a target folder, and a fresh
    ``python -m cmdbench list generators`` with that folder on PYTHONPATH shows its generator."""
    target, source = tmp_path / "target", tmp_path / "source"
    shutil.copytree(EXAMPLE, source)  # setuptools writes build/ and *.egg-info beside the sources
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                          "--no-index", "--target", str(target), str(source)], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-m", "cmdbench", "list", "generators"], capture_output=True, text=True,
                         env=env)
    assert out.returncode == 0, out.stderr
    assert "example-pixel-ddim" in out.stdout
    assert "skipped plugin" not in out.stderr


# --- The importable contract catches what it should ---------------------------------------------------------


class NoiseVideos:
    """A minimal unconditional generator that follows the contract unless ``fault`` breaks one rule."""

    name = "noise-videos"
    conditioning = "none"
    num_classes = None
    defaults = SamplingDefaults(num_frames=2, height=4, width=4, steps=1)

    def __init__(self, fault: str | None = None) -> None:
        self.fault = fault
        self.stage_hook = None

    def sample(self, *, prompts=None, labels=None, num_frames, height, width, steps, generator,
               guidance_scale=None):
        if self.fault != "accepts_prompts":
            check_conditioning(self.name, "none", len(generator), prompts=prompts, labels=labels)
        for what, v in (("num_frames", num_frames), ("height", height), ("width", width), ("steps", steps)):
            if v < 1:
                raise UnsupportedSettingError(f"{what}={v}; allowed >= 1")
        if guidance_scale not in (None, 1.0):
            raise UnsupportedSettingError("unconditional: guidance_scale must be None")
        shape = (num_frames, 3, height, width)
        with stage(None if self.fault == "no_stage" else self.stage_hook, "denoiser"):
            if self.fault == "batch_noise":  # one generator for the whole batch: depends on the batch
                x = torch.randn((len(generator), *shape), generator=generator[0])
            elif self.fault == "global_rng":
                x = torch.randn((len(generator), *shape))
            else:
                x = randn_per_sample(generator, shape)
        if self.fault == "float":
            return x
        if self.fault == "same_video":
            x = x[:1].expand_as(x)
        return float_to_uint8(x.clamp(-1, 1), value_range=(-1.0, 1.0))

    def cost_stages(self, *, num_frames, height, width, steps):
        if self.fault == "no_cost":
            return []
        return [CostStage("denoiser", torch.nn.Identity(), lambda b: {"input": torch.zeros(b)}, calls=steps)]


def test_contract_passes_a_conforming_generator():
    check_generator(NoiseVideos())


@pytest.mark.parametrize(("fault", "check"), [
    ("batch_noise", "batch_size_invariance"), ("global_rng", "deterministic"), ("no_stage", "stage_hook"),
    ("float", "output_shape_dtype_range"), ("same_video", "different_seeds_differ"),
    ("accepts_prompts", "conditioning_errors"), ("no_cost", "cost_stages"),
])
def test_contract_names_the_broken_rule(fault, check):
    with pytest.raises(AssertionError, match=rf"(?m)^  {check}: ") as err:
        check_generator(NoiseVideos(fault))
    if fault in ("batch_noise", "no_stage"):  # others also break this one's preconditions
        assert str(err.value).count("\n") == 1, str(err.value)


def test_contract_builds_registered_names_with_the_given_spec(plugin_env):
    seen = []

    def factory(spec):
        seen.append(spec)
        return NoiseVideos()

    registry.GENERATORS.register("noise-videos", factory)
    check_generator("noise-videos", GeneratorSpec(tiny=True, dtype="float16"))
    assert seen == [GeneratorSpec(tiny=True, dtype="float16")]
