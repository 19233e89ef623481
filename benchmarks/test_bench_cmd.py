"""pytest-benchmark: CMD sampling on the CPU (regression tracking, not tests).

Run with ``pytest benchmarks/test_bench_cmd.py --benchmark-only``. ``cmd-tiny`` is the random miniature at
its defaults (one video per round, 4 DDIM steps per stage, guidance on); the per-stage split of the last
round (text encoder, content, motion, decoder) goes to ``extra_info``. The full-architecture run (the
UCF-101 preset at its native 16x64x64, random weights, 1 DDIM step per stage, ~5 GB of RAM, minutes on two
cores) is marked ``slow`` and only runs with ``CMDBENCH_BENCH_FULL=1``.
"""

from __future__ import annotations

import os
import time

import pytest
import torch

from cmdbench.interfaces import GeneratorSpec
from cmdbench.registry import GENERATORS, load_plugins
from cmdbench.seeding import make_generators

os.environ.setdefault("HF_HUB_OFFLINE", "1")
load_plugins()


def _timed_stages(gen) -> dict[str, float]:
    starts: dict[str, float] = {}
    spans: dict[str, float] = {}

    def hook(name: str, event: str) -> None:
        if event == "start":
            starts[name] = time.perf_counter()
        else:
            spans[name] = spans.get(name, 0.0) + time.perf_counter() - starts.pop(name)

    gen.stage_hook = hook
    return spans


def _conditions(gen) -> dict:
    return {"prompts": ["Fireworks"]} if gen.conditioning == "text" else {"labels": [0]}


@pytest.mark.benchmark(group="cmd-sampling")
def test_cmd_tiny_sampling(benchmark):
    gen = GENERATORS.get("cmd-tiny")(GeneratorSpec(tiny=True))
    d = gen.defaults
    spans = _timed_stages(gen)
    kwargs = dict(num_frames=d.num_frames, height=d.height, width=d.width, steps=d.steps,
                  guidance_scale=d.guidance_scale, **_conditions(gen))

    def once():
        spans.clear()
        return gen.sample(generator=make_generators([0]), **kwargs)

    out = benchmark.pedantic(once, rounds=5, iterations=1, warmup_rounds=1)
    assert out.shape == (1, d.num_frames, 3, d.height, d.width)
    benchmark.extra_info.update({"setting": f"{d.num_frames}x{d.height}x{d.width}:{d.steps}",
                                 "threads": torch.get_num_threads(),
                                 "stages_s": {k: round(v, 4) for k, v in spans.items()}})


@pytest.mark.slow
@pytest.mark.benchmark(group="cmd-sampling-full")
@pytest.mark.skipif(os.environ.get("CMDBENCH_BENCH_FULL") != "1", reason="set CMDBENCH_BENCH_FULL=1 (minutes, ~5 GB)")
def test_cmd_ucf101_full_architecture_one_step(benchmark):
    gen = GENERATORS.get("cmd-ucf101-64")(GeneratorSpec())
    d = gen.defaults
    spans = _timed_stages(gen)
    out = benchmark.pedantic(
        lambda: gen.sample(labels=[0], num_frames=d.num_frames, height=d.height, width=d.width, steps=1,
                           generator=make_generators([0])),
        rounds=1, iterations=1, warmup_rounds=0,
    )
    assert out.shape == (1, 16, 3, 64, 64)
    benchmark.extra_info.update({"setting": "16x64x64:1", "threads": torch.get_num_threads(),
                                 "stages_s": {k: round(v, 2) for k, v in spans.items()}})


@pytest.mark.gpu
@pytest.mark.benchmark(group="cmd-sampling-gpu")
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cmd_webvid_paper_setting_gpu(benchmark):
    """The paper's efficiency setting (Table 9): 16x512x1024, 50 DDIM steps per stage, fp16, batch 1;
    paper: 3.13 s and 5.56 GB on an A100 40GB, SD decoder excluded (its time is in ``stages_s``)."""
    gen = GENERATORS.get("cmd-webvid-512x1024")(GeneratorSpec(device="cuda", dtype="float16"))
    spans = _timed_stages(gen)

    def once():
        spans.clear()
        out = gen.sample(prompts=["Fireworks"], num_frames=16, height=512, width=1024, steps=50,
                         generator=make_generators([0]))
        torch.cuda.synchronize()
        return out

    torch.cuda.reset_peak_memory_stats()
    out = benchmark.pedantic(once, rounds=3, iterations=1, warmup_rounds=1)
    assert out.shape == (1, 16, 3, 512, 1024)
    benchmark.extra_info.update({
        "setting": "16x512x1024:50", "dtype": "float16", "device": torch.cuda.get_device_name(),
        "peak_memory_GB": torch.cuda.max_memory_allocated() / 1e9,
        "stages_s": {k: round(v, 3) for k, v in spans.items()},
    })
