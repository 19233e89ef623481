"""KVD: the unbiased cubic-kernel MMD² against a plain float64 double loop, KID-style subsets, the streaming metric
on a tiny random I3D, and the reference guard (per-clip features needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cmdbench.metrics.catalog  # noqa: F401  (registers kvd)
from cmdbench.metrics.frechet import FeatureStats, GaussianStats, InsufficientSamplesError
from cmdbench.metrics.fvd import get_protocol
from cmdbench.metrics.kvd import KVD, kernel_distance, mmd2_unbiased
from cmdbench.metrics.reference import ProtocolMismatchError
from cmdbench.registry import METRICS


def mmd2_double_loop(x: np.ndarray, y: np.ndarray) -> float:
    """Bińkowski et al.'s unbiased MMD² with k(a, b) = (a·b/d + 1)³, one pair at a time in float64."""
    n, m, d = len(x), len(y), x.shape[1]

    def k(a, b):
        return (sum(float(a[i]) * float(b[i]) for i in range(d)) / d + 1.0) ** 3

    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2.0 * xy


def test_estimator_equals_the_double_loop():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((9, 5))
    y = rng.standard_normal((7, 5)) * 1.3 + 0.4
    assert mmd2_unbiased(x, y) == pytest.approx(mmd2_double_loop(x, y), rel=1e-12)
    assert mmd2_unbiased(y, x) == pytest.approx(mmd2_double_loop(x, y), rel=1e-12)  # symmetric
    z = rng.standard_normal((9, 5))
    same = mmd2_unbiased(x, z)
    assert same == pytest.approx(mmd2_double_loop(x, z), rel=1e-10)
    assert same < mmd2_unbiased(x, y)  # a shifted, wider set is farther
    with pytest.raises(InsufficientSamplesError):
        mmd2_unbiased(x[:1], y)


def test_one_subset_when_both_sets_have_the_subset_size():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((8, 4)), rng.standard_normal((8, 4)) + 0.2
    kd = kernel_distance(x, y, subsets=100, subset_size=1000)
    assert kd.subset_size == 8 and kd.subsets == 1 and kd.std is None
    assert kd.value == pytest.approx(mmd2_double_loop(x, y), rel=1e-12)


def test_subsets_are_seeded_draws_without_replacement():
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((30, 4)), rng.standard_normal((25, 4)) + 0.3
    kd = kernel_distance(x, y, subsets=6, subset_size=10, seed=7)
    assert kd.subsets == 6 and kd.subset_size == 10 and len(kd.values) == 6
    assert kd.value == pytest.approx(np.mean(kd.values)) and kd.std == pytest.approx(np.std(kd.values))
    assert kd.std > 0
    draw = np.random.default_rng(7)  # the documented order: real indices, then generated ones, per subset
    first_r, first_f = draw.choice(30, 10, replace=False), draw.choice(25, 10, replace=False)
    assert len(set(first_r)) == 10
    assert kd.values[0] == pytest.approx(mmd2_double_loop(x[first_r], y[first_f]), rel=1e-12)
    assert kernel_distance(x, y, subsets=6, subset_size=10, seed=7) == kd
    assert kernel_distance(x, y, subsets=6, subset_size=10, seed=8).value != kd.value
    # fewer clips than the subset size: min(subset_size, n_real, n_fake), recorded
    assert kernel_distance(x, y, subsets=3, subset_size=1000).subset_size == 25
    with pytest.raises(ValueError, match="same d"):
        kernel_distance(x, y[:, :3])


def clips(n: int, seed: int, t: int = 16, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 1, 3, 1, 1, generator=g) * 150 + shift
    noise = torch.rand(n, t, 3, 16, 16, generator=g) * torch.rand(n, 1, 1, 1, 1, generator=g) * 80
    return (base + noise).clamp(0, 255).to(torch.uint8)


def test_metric_on_tiny_i3d_records_kernel_and_needs_real_features():
    p = get_protocol("videogpt").__class__(**{**get_protocol("videogpt").__dict__, "num_real": 5, "num_fake": 5})
    m = METRICS.get("kvd")(protocol=p, extractor="i3d-random-tiny", batch_size=5)
    assert m.name == "kvd" and m.fake.bank is not None
    real, fake = clips(5, 0, t=20), clips(5, 1, shift=40)
    m.update_real(real)  # first 16 frames of each
    m.update(fake)
    out = m.compute()
    a = m.extractor.extract(real[:, :16])
    b = m.extractor.extract(fake)
    assert out.value == pytest.approx(mmd2_double_loop(a, b), rel=1e-6)  # 5 and 5 clips: one subset
    assert out.std is None and out.extra["subsets"] == 1 and out.extra["subset_size"] == 5
    assert out.protocol == "videogpt" and "(x·y/d + 1)^3" in out.extra["describe"]
    assert m.extractor.checksum[:12] in out.extra["describe"] and out.extra["conformant"]
    # the FVD reference of the same preset serves KVD when it keeps the features; without them: a clear error
    with_features = m.real_accum
    k2 = KVD(p, extractor=m.extractor, reference=with_features)
    k2.update(fake)
    assert k2.compute().value == pytest.approx(out.value, rel=1e-9)
    no_features = FeatureStats(with_features.dim, metadata=with_features.metadata)
    no_features.update(with_features.bank.array())
    with pytest.raises(ValueError, match="per-clip real features"):
        KVD(p, extractor=m.extractor, reference=no_features)
    mu, sigma = with_features.mean_cov(1, allow_singular=True)
    with pytest.raises(ValueError, match="per-clip real features"):
        KVD(p, extractor=m.extractor, reference=GaussianStats(mu, sigma, n=5, metadata=with_features.metadata))
    other = get_protocol("tats").__class__(**{**get_protocol("tats").__dict__, "num_real": 5, "num_fake": 5})
    with pytest.raises(ProtocolMismatchError):
        KVD(other, extractor="i3d-random-tiny", reference=with_features)
    m.update(clips(1, 2))
    with pytest.raises(InsufficientSamplesError, match="num_fake=5"):
        m.compute()
    assert KVD(p, extractor="i3d-random-tiny", strict=False, subsets=3, subset_size=4).subsets == 3
