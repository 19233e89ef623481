"""The generator contract, importable: what every generator must do to take part in cmdbench.

One contract, used by this repository's ``tests/test_contract.py`` (over every registered generator)
and by plugin authors in their own test suites::

    from cmdbench.testing import check_generator

    def test_my_model_follows_the_cmdbench_contract():
        check_generator("my-model")                    # a registered name (plugins loaded first)
        # or: check_generator(build_my_model(GeneratorSpec(tiny=True)))

or one pytest test per check (clearer failures)::

    import pytest
    from cmdbench.testing import CHECKS, contract_case

    @pytest.fixture(scope="module")
    def case():
        return contract_case("my-model")

    @pytest.mark.parametrize("check", sorted(CHECKS))
    def test_contract(case, check):
        CHECKS[check](case)

What is checked (at the generator's defaults, steps cut to :data:`FEW_STEPS` when it accepts that):
attributes (``name``, ``conditioning``, ``num_classes``, ``defaults``, ``stage_hook``, ``cost_stages``),
output uint8 ``(B, T, 3, H, W)`` on the CPU, different seeds give different videos, the same seed the
same video, batch-size invariance (sample ``i`` alone equals sample ``i`` in a batch up to
:data:`BATCH_TOLERANCE` levels of float rounding), balanced stage-hook brackets,
:class:`~cmdbench.interfaces.ConditioningError` for missing or wrong prompts/labels and
:class:`~cmdbench.interfaces.UnsupportedSettingError` naming the field for impossible settings.
Text generators are prompted from their ``eval_prompts`` (else two fixed prompts), class generators with
``seed % num_classes``.

:func:`isolated_registries` lets a test register (or load entry points) and leave the registries as
they were.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from cmdbench.interfaces import (
    ConditioningError,
    CostStage,
    GeneratorSpec,
    SamplingDefaults,
    UnsupportedSettingError,
    VideoGenerator,
)
from cmdbench.seeding import make_generators
from cmdbench.video import validate_video

BATCH_TOLERANCE = 2  # uint8 levels: batched and single float computations may round differently
FEW_STEPS = 2
DEFAULT_PROMPTS = ("a red ball bouncing", "a cat on a sofa")


@dataclass
class ContractCase:
    """One generator with the videos the checks look at.

    batch: seeds [0, 1] in one call; single: seed 1 alone; again: seed 1 alone once more, with a
    recording stage hook whose ``events`` are kept.
    """

    name: str
    gen: Any
    settings: dict[str, Any]
    batch: torch.Tensor
    single: torch.Tensor
    again: torch.Tensor
    events: list[tuple[str, str]] = field(default_factory=list)


def conditions(gen: Any, seeds: list[int]) -> dict[str, Any]:
    """Prompts or labels for ``seeds``, a function of the seed only (so batches line up with singles)."""
    if gen.conditioning == "text":
        pool = list(getattr(gen, "eval_prompts", None) or DEFAULT_PROMPTS)
        return {"prompts": [pool[s % len(pool)] for s in seeds]}
    if gen.conditioning == "class":
        return {"labels": [s % (gen.num_classes or 1) for s in seeds]}
    return {}


def contract_settings(gen: Any) -> dict[str, Any]:
    """The defaults, with steps cut to FEW_STEPS when the generator accepts that (keeps suites fast)."""
    d: SamplingDefaults = gen.defaults
    base = {"num_frames": d.num_frames, "height": d.height, "width": d.width, "guidance_scale": d.guidance_scale}
    steps = min(d.steps, FEW_STEPS)
    if steps != d.steps:
        try:
            gen.sample(**conditions(gen, [0]), **base, steps=steps, generator=make_generators([0]))
        except UnsupportedSettingError:
            steps = d.steps
    return {**base, "steps": steps}


def draw(gen: Any, settings: dict[str, Any], seeds: list[int]) -> torch.Tensor:
    return gen.sample(**conditions(gen, seeds), **settings, generator=make_generators(seeds))


def contract_case(generator: str | Any, spec: GeneratorSpec | None = None) -> ContractCase:
    """Build the videos the checks need from a registered name (built with ``spec``, default
    ``GeneratorSpec(tiny=True)``; plugins are loaded first) or from a generator object."""
    if isinstance(generator, str):
        from cmdbench.registry import GENERATORS, load_plugins

        load_plugins()
        name = generator
        gen = GENERATORS.get(name)(spec or GeneratorSpec(tiny=True))
    else:
        gen, name = generator, getattr(generator, "name", type(generator).__name__)
    settings = contract_settings(gen)
    batch = draw(gen, settings, [0, 1])
    single = draw(gen, settings, [1])
    events: list[tuple[str, str]] = []
    previous = getattr(gen, "stage_hook", None)
    gen.stage_hook = lambda stage_name, event: events.append((stage_name, event))
    try:
        again = draw(gen, settings, [1])
    finally:
        gen.stage_hook = previous
    return ContractCase(name, gen, settings, batch, single, again, events)


# --- The checks (each raises AssertionError or an unexpected exception) --------------------------------


def check_attributes(case: ContractCase) -> None:
    gen = case.gen
    assert isinstance(gen, VideoGenerator), f"{case.name} lacks a VideoGenerator attribute or sample()"
    assert gen.name == case.name, f"generator.name {gen.name!r} differs from its registry name {case.name!r}"
    assert gen.conditioning in ("class", "text", "none"), f"conditioning {gen.conditioning!r}"
    assert isinstance(gen.defaults, SamplingDefaults), "defaults must be a cmdbench.interfaces.SamplingDefaults"
    if gen.conditioning == "class":
        assert isinstance(gen.num_classes, int) and gen.num_classes >= 1, f"num_classes {gen.num_classes!r}"
    assert hasattr(gen, "stage_hook"), "add `stage_hook = None` (the harness sets it to time stages)"
    assert callable(getattr(gen, "cost_stages", None)), "add cost_stages(num_frames=, height=, width=, steps=)"
    if gen.conditioning == "text" and getattr(gen, "eval_prompts", None) is not None:
        prompts = list(gen.eval_prompts)
        assert prompts and all(isinstance(p, str) and p for p in prompts), "eval_prompts: non-empty strings"


def check_cost_stages(case: ContractCase) -> None:
    s = case.settings
    stages = case.gen.cost_stages(num_frames=s["num_frames"], height=s["height"], width=s["width"],
                                  steps=s["steps"])
    assert stages, "cost_stages() returned no stage"
    for st in stages:
        assert isinstance(st, CostStage), f"cost_stages() must return CostStage objects, got {type(st).__name__}"
        assert isinstance(st.module, torch.nn.Module), f"stage {st.name!r}: module is not a torch.nn.Module"
        assert st.calls >= 1 and st.guidance_passes in (1, 2), f"stage {st.name!r}: calls/guidance_passes"
        assert callable(st.make_inputs), f"stage {st.name!r}: make_inputs must be callable"


def check_output_shape_dtype_range(case: ContractCase) -> None:
    s, batch = case.settings, case.batch
    validate_video(batch, name=f"{case.name} output")
    assert batch.device.type == "cpu", f"sample() must return a CPU tensor, got {batch.device}"
    expected = (2, s["num_frames"], 3, s["height"], s["width"])
    assert tuple(batch.shape) == expected, f"output shape {tuple(batch.shape)}, expected {expected}"


def check_different_seeds_differ(case: ContractCase) -> None:
    assert not torch.equal(case.batch[0], case.batch[1]), "seeds 0 and 1 gave the same video"


def check_deterministic(case: ContractCase) -> None:
    assert torch.equal(case.single, case.again), "the same seed gave different videos in two calls"


def check_batch_size_invariance(case: ContractCase) -> None:
    diff = (case.batch[1:2].int() - case.single.int()).abs().max().item()
    assert diff <= BATCH_TOLERANCE, (
        f"sample 1 differs by {diff} levels between a batch of 2 and alone (allowed {BATCH_TOLERANCE}); draw "
        "each sample's noise from its own generator (cmdbench.seeding.randn_per_sample)"
    )


def check_stage_hook(case: ContractCase) -> None:
    events = case.events
    assert events, "sample() never called stage_hook; wrap its stages in cmdbench.interfaces.stage()"
    open_stages: list[str] = []
    for stage_name, event in events:
        if event == "start":
            open_stages.append(stage_name)
        else:
            assert open_stages and open_stages[-1] == stage_name, f"unbalanced stage events {events}"
            open_stages.pop()
    assert not open_stages, f"stages {open_stages} were started and never ended"


def _raises(exc: type[Exception], match: str | None, call: Callable[[], Any], what: str) -> None:
    try:
        call()
    except exc as err:
        if match is not None and match not in str(err):
            raise AssertionError(f"{what}: {exc.__name__} message {str(err)!r} does not mention {match!r}") from err
        return
    raise AssertionError(f"{what}: expected {exc.__name__}, nothing was raised")


def check_conditioning_errors(case: ContractCase) -> None:
    gen, kw = case.gen, case.settings

    def call(**cond: Any) -> Callable[[], Any]:
        return lambda: gen.sample(**cond, **kw, generator=make_generators([0]))

    if gen.conditioning == "text":
        _raises(ConditioningError, "prompts", call(), "no prompts")
        _raises(ConditioningError, None, call(prompts=["a"], labels=[0]), "prompts and labels")
        _raises(ConditioningError, "1 generators", call(prompts=["a", "b"]), "2 prompts for 1 generator")
    elif gen.conditioning == "class":
        _raises(ConditioningError, "labels", call(), "no labels")
        _raises(ConditioningError, None, call(prompts=["a"]), "prompts for a class generator")
        _raises(ConditioningError, "out of range", call(labels=[gen.num_classes]), "label = num_classes")
    else:
        _raises(ConditioningError, "unconditional", call(prompts=["a"]), "prompts for an unconditional generator")
        _raises(ConditioningError, "unconditional", call(labels=[0]), "labels for an unconditional generator")


def check_unsupported_settings(case: ContractCase) -> None:
    gen, kw = case.gen, case.settings
    cond = conditions(gen, [0])
    for name in ("num_frames", "height", "width", "steps"):
        _raises(UnsupportedSettingError, name,
                lambda name=name: gen.sample(**cond, **{**kw, name: 0}, generator=make_generators([0])),
                f"{name}=0")
    if gen.conditioning == "none":
        _raises(UnsupportedSettingError, "guidance",
                lambda: gen.sample(**{**kw, "guidance_scale": 7.5}, generator=make_generators([0])),
                "guidance_scale=7.5 for an unconditional generator")


CHECKS: dict[str, Callable[[ContractCase], None]] = {
    "attributes": check_attributes,
    "cost_stages": check_cost_stages,
    "output_shape_dtype_range": check_output_shape_dtype_range,
    "different_seeds_differ": check_different_seeds_differ,
    "deterministic": check_deterministic,
    "batch_size_invariance": check_batch_size_invariance,
    "stage_hook": check_stage_hook,
    "conditioning_errors": check_conditioning_errors,
    "unsupported_settings": check_unsupported_settings,
}


def check_generator(generator: str | Any, spec: GeneratorSpec | None = None) -> ContractCase:
    """Run every check; raises one AssertionError naming each failing check and why. Returns the case."""
    case = contract_case(generator, spec)
    failures = []
    for name, check in CHECKS.items():
        try:
            check(case)
        except Exception as err:  # noqa: BLE001  (report every failing check, not only the first)
            failures.append(f"  {name}: {type(err).__name__}: {err}")
    if failures:
        raise AssertionError(f"{case.name} breaks the cmdbench generator contract:\n" + "\n".join(failures))
    return case


@contextmanager
def isolated_registries() -> Iterator[None]:
    """Registries, the loaded-plugins flag and the broken-plugin record restored on exit."""
    from cmdbench import registry

    states = [r.snapshot() for r in registry.REGISTRIES]
    loaded, broken = registry._loaded, dict(registry.BROKEN_PLUGINS)
    try:
        yield
    finally:
        for r, state in zip(registry.REGISTRIES, states, strict=True):
            r.restore(state)
        registry._loaded = loaded
        registry.BROKEN_PLUGINS.clear()
        registry.BROKEN_PLUGINS.update(broken)
