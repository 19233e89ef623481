"""The generator contract, checked for every registered generator built with ``GeneratorSpec(tiny=True)``.

For each name: output dtype/shape/device at the generator's defaults (fewer steps when allowed),
different seeds give different videos, determinism for a seed, batch-size invariance (sample i alone
== sample i in a batch, up to 2/255 from float rounding), stage-hook brackets, clear
``ConditioningError`` for missing/wrong conditioning and ``UnsupportedSettingError`` for impossible
settings. New generators are picked up automatically through ``registry.load_plugins()``.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from cmdbench.interfaces import (
    ConditioningError,
    GeneratorSpec,
    SamplingDefaults,
    UnsupportedSettingError,
    VideoGenerator,
)
from cmdbench.registry import GENERATORS, load_plugins
from cmdbench.seeding import make_generators
from cmdbench.video import validate_video

load_plugins()
GENERATOR_NAMES = GENERATORS.names()
BATCH_TOLERANCE = 2  # uint8 levels: batched and single float computations may round differently
FEW_STEPS = 2

_cache: dict[str, tuple[Any, dict[str, Any]]] = {}


def conditions(gen: Any, seeds: list[int]) -> dict[str, Any]:
    """Prompts or labels for ``seeds``, a function of the seed only (so batches line up with singles)."""
    if gen.conditioning == "text":
        pool = list(getattr(gen, "eval_prompts", None) or ["a red ball bouncing", "a cat on a sofa"])
        return {"prompts": [pool[s % len(pool)] for s in seeds]}
    if gen.conditioning == "class":
        return {"labels": [s % (gen.num_classes or 1) for s in seeds]}
    return {}


def settings(gen: Any) -> dict[str, Any]:
    """The defaults, with steps cut to FEW_STEPS when the generator accepts that (keeps the suite fast)."""
    d: SamplingDefaults = gen.defaults
    base = {"num_frames": d.num_frames, "height": d.height, "width": d.width, "guidance_scale": d.guidance_scale}
    steps = min(d.steps, FEW_STEPS)
    if steps != d.steps:
        try:
            gen.sample(**conditions(gen, [0]), **base, steps=steps, generator=make_generators([0]))
        except UnsupportedSettingError:
            steps = d.steps
    return {**base, "steps": steps}


def built(name: str) -> tuple[Any, dict[str, Any]]:
    if name not in _cache:
        gen = GENERATORS.get(name)(GeneratorSpec(tiny=True))
        _cache[name] = (gen, settings(gen))
    return _cache[name]


def draw(gen: Any, kw: dict[str, Any], seeds: list[int]) -> torch.Tensor:
    return gen.sample(**conditions(gen, seeds), **kw, generator=make_generators(seeds))


@pytest.fixture(scope="module", params=GENERATOR_NAMES)
def case(request):
    """(name, generator, settings, batch of seeds [0, 1], seed 1 alone, seed 1 alone again with a hook)."""
    gen, kw = built(request.param)
    batch = draw(gen, kw, [0, 1])
    single = draw(gen, kw, [1])
    events: list[tuple[str, str]] = []
    gen.stage_hook = lambda stage_name, event: events.append((stage_name, event))
    try:
        again = draw(gen, kw, [1])
    finally:
        gen.stage_hook = None
    return {"name": request.param, "gen": gen, "kw": kw, "batch": batch, "single": single, "again": again,
            "events": events}


def test_registry_is_not_empty():
    assert "tiny-unet3d" in GENERATOR_NAMES


def test_attributes(case):
    gen = case["gen"]
    assert isinstance(gen, VideoGenerator)
    assert gen.name == case["name"]
    assert gen.conditioning in ("class", "text", "none")
    assert isinstance(gen.defaults, SamplingDefaults)
    if gen.conditioning == "class":
        assert isinstance(gen.num_classes, int) and gen.num_classes >= 1
    assert hasattr(gen, "stage_hook")
    assert callable(getattr(gen, "cost_stages", None))


def test_output_shape_dtype_range(case):
    kw, batch = case["kw"], case["batch"]
    validate_video(batch, name=f"{case['name']} output")
    assert batch.dtype == torch.uint8
    assert batch.device.type == "cpu"
    assert tuple(batch.shape) == (2, kw["num_frames"], 3, kw["height"], kw["width"])


def test_different_seeds_give_different_videos(case):
    batch = case["batch"]
    assert not torch.equal(batch[0], batch[1])


def test_deterministic_for_a_seed(case):
    assert torch.equal(case["single"], case["again"])


def test_batch_size_invariance(case):
    diff = (case["batch"][1:2].int() - case["single"].int()).abs().max().item()
    assert diff <= BATCH_TOLERANCE, f"sample 1 differs by {diff} levels between batch and single"


def test_stage_hook_brackets_stages(case):
    events = case["events"]
    assert events, "sample() never called stage_hook; wrap its stages in cmdbench.interfaces.stage()"
    open_stages: list[str] = []
    for stage_name, event in events:
        if event == "start":
            open_stages.append(stage_name)
        else:
            assert open_stages and open_stages[-1] == stage_name, f"unbalanced stage events {events}"
            open_stages.pop()
    assert not open_stages


def test_missing_or_wrong_conditioning_raises(case):
    gen, kw = case["gen"], case["kw"]
    gens = make_generators([0])
    if gen.conditioning == "text":
        with pytest.raises(ConditioningError, match="prompts"):
            gen.sample(**kw, generator=gens)
        with pytest.raises(ConditioningError):
            gen.sample(prompts=["a"], labels=[0], **kw, generator=gens)
        with pytest.raises(ConditioningError, match="1 generators"):
            gen.sample(prompts=["a", "b"], **kw, generator=gens)
    elif gen.conditioning == "class":
        with pytest.raises(ConditioningError, match="labels"):
            gen.sample(**kw, generator=gens)
        with pytest.raises(ConditioningError):
            gen.sample(prompts=["a"], **kw, generator=gens)
        with pytest.raises(ConditioningError, match="out of range"):
            gen.sample(labels=[gen.num_classes], **kw, generator=gens)
    else:
        with pytest.raises(ConditioningError, match="unconditional"):
            gen.sample(prompts=["a"], **kw, generator=gens)
        with pytest.raises(ConditioningError, match="unconditional"):
            gen.sample(labels=[0], **kw, generator=gens)


def test_impossible_settings_raise_unsupported(case):
    gen, kw = case["gen"], case["kw"]
    cond = conditions(gen, [0])
    for field in ("num_frames", "height", "width", "steps"):
        with pytest.raises(UnsupportedSettingError, match=field):
            gen.sample(**cond, **{**kw, field: 0}, generator=make_generators([0]))
    if gen.conditioning == "none":
        with pytest.raises(UnsupportedSettingError, match="guidance"):
            gen.sample(**{**kw, "guidance_scale": 7.5}, generator=make_generators([0]))
