"""CLIPSIM throughput on CPU: full-size CLIP ViT-B/32 with random weights, 16 frames per call.

Run: ``python -m pytest benchmarks/test_bench_clipsim.py --benchmark-enable -o addopts=""``
(the project's default options skip benchmarks). Frames/s = 16 / mean time, in ``extra_info``.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from cmdbench.metrics.clipsim import CLIPSIM, LoadedCLIP, describe_clip

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from clip.clip import _transform
    from clip.model import CLIP

FRAMES = 16


@pytest.fixture(scope="module")
def vit_b32():
    """Published ViT-B/32 shapes (151.3M parameters), random weights, fp32, CPU."""
    torch.manual_seed(0)
    model = CLIP(512, 224, 12, 768, 32, 77, 49408, 512, 8, 12).eval().requires_grad_(False)
    assert describe_clip(model) == "ViT-B/32"
    return LoadedCLIP(model, _transform(224), "ViT-B/32", None, None)


@pytest.fixture(scope="module")
def video():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (1, FRAMES, 3, 256, 256), dtype=torch.uint8, generator=g)  # (B, T, 3, H, W)


def _report(benchmark, what: str) -> None:
    mean = benchmark.stats.stats.mean
    benchmark.extra_info.update({"frames": FRAMES, "frames_per_s": FRAMES / mean, "what": what,
                                 "threads": torch.get_num_threads()})


def test_bench_clipsim_update_16_frames(benchmark, vit_b32, video):
    """The metric end to end: PIL preprocess of 16 frames, one text encoding, encode_image, cosines."""
    metric = CLIPSIM(clip_model=vit_b32, batch_size=FRAMES)
    benchmark.pedantic(metric.update, args=(video, ["a dog running on the beach"]), rounds=5, warmup_rounds=1)
    _report(benchmark, "CLIPSIM.update, 1 video x 16 frames 256x256, 1 prompt")


def test_bench_clip_encode_image_16(benchmark, vit_b32):
    """The network alone: encode_image on a (16, 3, 224, 224) batch."""
    pixels = torch.randn(FRAMES, 3, 224, 224)

    def run():
        with torch.inference_mode():
            return vit_b32.model.encode_image(pixels)

    benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    _report(benchmark, "encode_image, 16 x 3 x 224 x 224")
