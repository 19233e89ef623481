"""pytest-benchmark: tiny-size sampling of every registered generator (regression tracking, not tests).

Run with ``nox -s benchmark`` or
``pytest benchmarks/ --benchmark-only --benchmark-autosave --benchmark-compare --benchmark-compare-fail=median:25%``.
Each generator is its random-weight miniature (``GeneratorSpec(tiny=True)``) at its own defaults, one
video per round; the paper-convention TMACs of that setting are stored in ``extra_info`` so a change in
time can be told apart from a change in work.
"""

from __future__ import annotations

import os

import pytest
import torch

from cmdbench.interfaces import GeneratorSpec
from cmdbench.metrics.efficiency import count_generator_cost
from cmdbench.registry import GENERATORS, load_plugins
from cmdbench.seeding import make_generators

os.environ.setdefault("HF_HUB_OFFLINE", "1")
load_plugins()
NAMES = GENERATORS.names()


def _conditions(gen, batch: int) -> dict:
    if gen.conditioning == "text":
        return {"prompts": ["a panda playing a guitar"] * batch}
    if gen.conditioning == "class":
        return {"labels": [0] * batch}
    return {}


@pytest.mark.benchmark(group="sampling-tiny")
@pytest.mark.parametrize("name", NAMES)
def test_sample_tiny(benchmark, name):
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    gen = GENERATORS.get(name)(GeneratorSpec(tiny=True))
    d = gen.defaults
    kwargs = dict(num_frames=d.num_frames, height=d.height, width=d.width, steps=d.steps,
                  guidance_scale=d.guidance_scale, **_conditions(gen, 1))
    out = benchmark.pedantic(lambda: gen.sample(generator=make_generators([0]), **kwargs),
                             rounds=3, iterations=1, warmup_rounds=1)
    assert out.dtype == torch.uint8 and out.shape[0] == 1
    benchmark.extra_info.update({"generator": name, "setting": f"{d.height}x{d.width}x{d.num_frames}:{d.steps}",
                                 "torch": torch.__version__, "threads": torch.get_num_threads()})
    if hasattr(gen, "cost_stages"):
        meta = GENERATORS.get(name)(GeneratorSpec(tiny=True, device="meta"))
        cost = count_generator_cost(meta, d.num_frames, d.height, d.width, d.steps)
        benchmark.extra_info.update({"tmacs_paper": cost.paper_tmacs, "tflops_true": cost.true_tflops})
