"""FVD benchmarks: Fréchet distance at D=400 per square-root method, I3D throughput, stats memory.

Run: ``python -m pytest benchmarks/test_bench_fvd.py --benchmark-enable -o addopts=""``
(the project's default options skip benchmarks). Targets: Fréchet distance at D=400 < 50 ms per call;
statistics memory independent of the number of videos. Throughput (clips/s) goes to ``extra_info``.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from cmdbench.metrics.frechet import SQRT_METHODS, FeatureStats, frechet_distance
from cmdbench.metrics.i3d import InceptionI3d

D = 400


@pytest.fixture(scope="module")
def gaussians():
    rng = np.random.default_rng(0)
    out = []
    for shift in (0.0, 0.3):
        x = rng.standard_normal((2048, D)) @ rng.standard_normal((D, D)) * 0.05 + shift
        s = FeatureStats(D)
        s.update(x)
        out.extend(s.mean_cov(1))
    return out  # mu1, sigma1, mu2, sigma2


@pytest.mark.parametrize("method", SQRT_METHODS)
def test_bench_frechet_distance_d400(benchmark, gaussians, method):
    value = benchmark(frechet_distance, *gaussians, method=method)
    benchmark.extra_info.update(method=method, dim=D, value=value, target_ms=50)
    assert value > 0


@pytest.mark.parametrize("batch", [2, 4])
def test_bench_i3d_cpu_throughput(benchmark, batch):
    """Full-size I3D (12.7M parameters), random weights, fp32, CPU, (B, 3, 16, 224, 224)."""
    torch.manual_seed(0)
    model = InceptionI3d().eval()
    x = torch.rand(batch, 3, 16, 224, 224) * 2 - 1

    def forward():
        with torch.no_grad():
            return model(x)

    out = benchmark.pedantic(forward, rounds=3, iterations=1, warmup_rounds=1)
    assert out.shape == (batch, 400)
    mean = benchmark.stats.stats.mean
    benchmark.extra_info.update(batch=batch, clips_per_s=batch / mean, frames_per_s=16 * batch / mean,
                                threads=torch.get_num_threads())


def test_stats_memory_independent_of_video_count(benchmark):
    """Bytes held by FeatureStats after 256, 2048 and 16384 feature rows: identical."""
    rng = np.random.default_rng(1)
    chunk = rng.standard_normal((256, D))
    sizes = {}
    stats = FeatureStats(D)
    t0 = time.perf_counter()
    for _ in range(64):
        stats.update(chunk)
        if stats.n in (256, 2048, 16384):
            sizes[stats.n] = stats.nbytes()
    benchmark.extra_info.update(bytes_by_count=sizes, update_s_per_256=(time.perf_counter() - t0) / 64)
    benchmark(stats.update, chunk)
    assert len(set(sizes.values())) == 1 and sizes[256] == 8 * (D + D * D)
