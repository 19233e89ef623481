"""Fréchet core: closed forms, symmetry, agreement of the square-root methods, streaming == batch."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch

from cmdbench.metrics.frechet import (
    SQRT_METHODS,
    FeatureStats,
    FrechetNumericsError,
    InsufficientSamplesError,
    bootstrap_fd,
    frechet,
    frechet_distance,
    stats_distance,
    stats_frechet,
    trace_sqrt_product,
)


def random_spd(rng: np.random.Generator, d: int, cond: float = 10.0) -> np.ndarray:
    """A random SPD matrix with eigenvalues log-spaced in [1/cond, 1]."""
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    ev = np.logspace(0, -np.log10(cond), d)
    return (q * ev) @ q.T


@pytest.mark.parametrize("method", SQRT_METHODS)
def test_identical_statistics_give_zero(method):
    rng = np.random.default_rng(0)
    mu, sigma = rng.standard_normal(32), random_spd(rng, 32)
    assert frechet_distance(mu, sigma, mu, sigma, method=method) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("method", SQRT_METHODS)
def test_diagonal_gaussians_match_closed_form(method):
    rng = np.random.default_rng(1)
    d = 20
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    v1, v2 = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    got = frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2), method=method)
    assert got == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("method", SQRT_METHODS)
def test_symmetric(method):
    rng = np.random.default_rng(2)
    a = (rng.standard_normal(16), random_spd(rng, 16))
    b = (rng.standard_normal(16), random_spd(rng, 16))
    assert frechet_distance(*a, *b, method=method) == pytest.approx(frechet_distance(*b, *a, method=method), rel=1e-9)


@pytest.mark.parametrize(
    ("d", "cond"), [(8, 1e1), (8, 1e10), (64, 1e1), (64, 1e6), (64, 1e10), pytest.param(400, 1e8, marks=pytest.mark.slow)]
)
def test_sqrt_methods_agree(d, cond):
    rng = np.random.default_rng(d)
    s1, s2 = random_spd(rng, d, cond), random_spd(rng, d, cond)
    mu1, mu2 = rng.standard_normal(d) * 0.1, rng.standard_normal(d) * 0.1
    values = {m: frechet_distance(mu1, s1, mu2, s2, method=m) for m in SQRT_METHODS}
    ref = values["svd"]
    for m, v in values.items():
        assert v == pytest.approx(ref, rel=1e-6), (m, values)


def test_trace_sqrt_product_of_commuting_matrices():
    # Σ₁ = diag(a), Σ₂ = diag(b): tr (Σ₁Σ₂)^½ = Σ √(aᵢbᵢ)
    a, b = np.array([1.0, 4.0, 9.0]), np.array([16.0, 1.0, 0.25])
    for m in SQRT_METHODS:
        assert trace_sqrt_product(np.diag(a), np.diag(b), m) == pytest.approx(np.sqrt(a * b).sum(), rel=1e-12)


def test_not_a_covariance_raises():
    neg = -np.eye(4)
    with pytest.raises(FrechetNumericsError):
        frechet_distance(np.zeros(4), neg, np.zeros(4), np.eye(4), method="scipy")
    with pytest.raises(FrechetNumericsError):
        frechet_distance(np.zeros(4), np.eye(4) * np.nan, np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="allowed"):
        frechet_distance(np.zeros(4), np.eye(4), np.zeros(4), np.eye(4), method="cholesky")


def test_stats_match_numpy_moments():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((200, 10)) * rng.uniform(0.1, 10, 10) + 5.0
    stats = FeatureStats(10)
    stats.update(x)
    for ddof in (0, 1):
        mu, cov = stats.mean_cov(ddof)
        np.testing.assert_allclose(mu, x.mean(0), rtol=1e-12)
        np.testing.assert_allclose(cov, np.cov(x, rowvar=False, ddof=ddof), rtol=1e-10, atol=1e-12)
    assert stats.mean_cov(0)[1][0, 0] != stats.mean_cov(1)[1][0, 0]


def test_streaming_equals_batch():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((300, 12))
    one = FeatureStats(12)
    one.update(x)
    shards = [FeatureStats(12) for _ in range(3)]
    for s, part in zip(shards, np.array_split(x, 3), strict=True):
        for chunk in np.array_split(part, 4):
            s.update(torch.from_numpy(chunk))  # torch float64 input works too
    merged = shards[0].merge(shards[1]).merge(shards[2])
    assert merged.n == one.n == 300
    np.testing.assert_allclose(merged.sum, one.sum, rtol=1e-13, atol=1e-12)
    np.testing.assert_allclose(merged.outer, one.outer, rtol=1e-13, atol=1e-12)


def test_nan_features_rejected():
    stats = FeatureStats(4)
    x = np.zeros((3, 4))
    x[1, 2] = np.nan
    with pytest.raises(FrechetNumericsError, match="rows \\[1\\]"):
        stats.update(x)
    assert stats.n == 0
    with pytest.raises(ValueError, match="dimension 5"):
        stats.update(np.zeros((2, 5)))


def test_too_few_samples():
    stats = FeatureStats(8)
    stats.update(np.random.default_rng(0).standard_normal((8, 8)))
    with pytest.raises(InsufficientSamplesError, match="singular"):
        stats.mean_cov(1)
    mu, cov = stats.mean_cov(1, allow_singular=True)
    assert np.linalg.matrix_rank(cov) == 7
    one = FeatureStats(8)
    one.update(np.ones((1, 8)))
    with pytest.raises(InsufficientSamplesError, match="at least 2"):
        one.mean_cov(1, allow_singular=True)


def test_save_load_roundtrip(tmp_path):
    rng = np.random.default_rng(5)
    stats = FeatureStats(6, keep_features=True, metadata={"protocol_hash": "abc"})
    stats.update(rng.standard_normal((20, 6)))
    path = stats.save(tmp_path / "s.npz")
    back = FeatureStats.load(path)
    assert back.n == 20 and back.metadata == {"protocol_hash": "abc"}
    np.testing.assert_array_equal(back.outer, stats.outer)
    np.testing.assert_array_equal(back.bank.array(), stats.bank.array())
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="corrupt"):
        FeatureStats.load(tmp_path / "bad.npz")


def test_memory_independent_of_count():
    stats = FeatureStats(400)
    before = stats.nbytes()
    rng = np.random.default_rng(6)
    for _ in range(5):
        stats.update(rng.standard_normal((256, 400)))
    assert stats.n == 1280 and stats.nbytes() == before == 400 * 8 + 400 * 400 * 8


def test_bootstrap_spread():
    rng = np.random.default_rng(7)
    real = rng.standard_normal((400, 4))
    fake = rng.standard_normal((400, 4)) + 0.5
    mean, std = bootstrap_fd(real, fake, rounds=20, seed=0)
    full = stats_distance(_stats(real), _stats(fake))
    assert std > 0
    assert abs(mean - full) < 4 * std + 0.05  # the bootstrap centres near the full-sample value
    assert bootstrap_fd(real, fake, rounds=5, seed=1) == bootstrap_fd(real, fake, rounds=5, seed=1)
    with pytest.raises(InsufficientSamplesError):
        bootstrap_fd(real[:4], fake[:4], rounds=3)


def _stats(x):
    s = FeatureStats(x.shape[1])
    s.update(x)
    return s


# --- all-reduce across 2 gloo processes ---------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, x: np.ndarray, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        stats = FeatureStats(x.shape[1], keep_features=True)
        for chunk in np.array_split(np.array_split(x, world)[rank], 3):
            stats.update(chunk)
        stats.all_reduce()
        stats.save(os.path.join(out_dir, f"rank{rank}.npz"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_all_reduce_two_gloo_processes(tmp_path):
    import torch.multiprocessing as mp

    x = np.random.default_rng(8).standard_normal((50, 7))
    # fork is much faster than spawn here (torch is already imported); gloo works with either
    mp.start_processes(_worker, args=(2, _free_port(), x, str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    one = _stats(x)
    for rank in range(2):
        got = FeatureStats.load(tmp_path / f"rank{rank}.npz")
        assert got.n == 50
        np.testing.assert_allclose(got.sum, one.sum, rtol=1e-13, atol=1e-12)
        np.testing.assert_allclose(got.outer, one.outer, rtol=1e-13, atol=1e-12)
        np.testing.assert_array_equal(got.bank.array(), x)  # gathered in rank order


@pytest.mark.parametrize("d", [16, 64])
def test_sqrt_methods_agree_on_singular_covariance(d):
    # rank d/2 (fewer samples than dimensions): the eig method falls back from Cholesky to eigvals
    rng = np.random.default_rng(10 + d)
    a = rng.standard_normal((d, d // 2))
    s1, s2 = a @ a.T / d, random_spd(rng, d, 1e3)
    values = [frechet_distance(np.zeros(d), s1, np.ones(d), s2, method=m) for m in SQRT_METHODS]
    assert values == pytest.approx([values[0]] * 3, rel=1e-6)
    with pytest.raises(np.linalg.LinAlgError):
        np.linalg.cholesky(s1)  # (the fallback really is exercised)


@pytest.mark.parametrize(("d", "cond"), [(16, 1e1), (64, 1e8)])
def test_svd_method_equals_tfgan_svd_form(d, cond):
    # the "svd" method (evaluated with eigh) against TF-GAN's literal SVD form: U diag(√s) Vᵀ of Σ₁, then the
    # singular values of √Σ₁ Σ₂ √Σ₁
    rng = np.random.default_rng(100 + d)
    s1, s2 = random_spd(rng, d, cond), random_spd(rng, d, cond)
    u, s, vt = np.linalg.svd(s1)
    sqrt1 = (u * np.sqrt(s)) @ vt
    inner = sqrt1 @ s2 @ sqrt1
    tfgan = np.sqrt(np.linalg.svd((inner + inner.T) / 2, compute_uv=False)).sum()
    assert trace_sqrt_product(s1, s2, "svd") == pytest.approx(tfgan, rel=1e-9)


def test_svd_method_refuses_indefinite_matrix():
    with pytest.raises(FrechetNumericsError, match="not positive semi-definite"):
        frechet_distance(np.zeros(4), -np.eye(4), np.zeros(4), np.eye(4), method="svd")


# --- rounding: tolerances follow the numerics (issue 11, point 8) ----------------------------------------


def near_singular(rng: np.random.Generator, d: int, rank: int, ridge: float) -> np.ndarray:
    a = rng.standard_normal((d, rank)) * 10
    return a @ a.T / rank + ridge * np.eye(d)


@pytest.mark.parametrize("method", SQRT_METHODS)
@pytest.mark.parametrize(("d", "rank", "ridge"), [(128, 20, 1e-6), (64, 5, 0.0), (128, 127, 1e-9)])
def test_identical_near_singular_gaussians_give_exactly_zero(method, d, rank, ridge):
    # the case (rank 20 + 1e-6 ridge, d = 128) came out as -3e-5..-8e-4 and raised under a fixed
    # relative tolerance of 1e-9; the derived bound treats it as the rounding noise it is
    rng = np.random.default_rng(d + rank)
    sigma, mu = near_singular(rng, d, rank, ridge), rng.standard_normal(d)
    result = frechet(mu, sigma, mu, sigma.copy(), method)
    assert result.value == 0.0
    assert frechet_distance(mu, sigma, mu, sigma, method=method) == 0.0
    # the same pair with the second covariance rounded differently (one ulp-level perturbation, as a second
    # pass over the same features gives): never raises, and stays within the bound of 0
    other = sigma * (1 + np.finfo(float).eps)
    result = frechet(mu, sigma, mu, other, method)
    assert 0.0 <= result.value <= result.error_bound
    assert abs(result.raw) <= result.error_bound
    assert any(("clamped" if result.raw < 0 else "indistinguishable") in n for n in result.notes)


@pytest.mark.parametrize("method", SQRT_METHODS)
@pytest.mark.parametrize(("d", "n", "rank"), [(128, 300, 20), (400, 300, 400), (64, 40, 64)])
def test_fd_of_a_feature_set_with_itself_is_zero_with_fewer_samples_than_dims(method, d, n, rank):
    # N <= D (allow_singular): scipy's sqrtm of the singular product has imaginary parts ~1e-5..1e-4 that a
    # fixed IMAG_RTOL refused; they are within d·√δ_M and dropped with a note
    rng = np.random.default_rng(n + rank)
    x = rng.standard_normal((n, rank)) @ rng.standard_normal((rank, d)) * 3 + 1e-3 * rng.standard_normal((n, d))
    stats = FeatureStats(d)
    stats.update(x)
    assert stats_frechet(stats, stats, ddof=1, method=method, allow_singular=True).value == 0.0
    # the same features accumulated in another order (another chunking): equal up to rounding, so not
    # bitwise-identical statistics; the distance is noise within the bound and never raises
    shuffled = FeatureStats(d)
    for part in np.array_split(x[rng.permutation(n)], 7):
        shuffled.update(part)
    result = stats_frechet(stats, shuffled, ddof=1, method=method, allow_singular=True)
    assert 0.0 <= result.value <= result.error_bound and abs(result.raw) <= result.error_bound


@pytest.mark.parametrize("method", SQRT_METHODS)
def test_matches_closed_form_oracle_for_non_commuting_covariances(method):
    # Independent oracle: with Σ₂ = Σ₁^-½ B Σ₁^-½, Σ₁^½ Σ₂ Σ₁^½ = B, so tr(Σ₁Σ₂)^½ = Σ √β for B = P diag(β) Pᵀ.
    # Σ₁^-½ is formed once from a known eigendecomposition (no code under test is involved).
    rng = np.random.default_rng(7)
    d = 48
    q1, _ = np.linalg.qr(rng.standard_normal((d, d)))
    lam = np.logspace(0, -2, d)
    sigma1 = (q1 * lam) @ q1.T
    inv_sqrt1 = (q1 / np.sqrt(lam)) @ q1.T
    p, _ = np.linalg.qr(rng.standard_normal((d, d)))
    beta = rng.uniform(0.1, 4.0, d)
    sigma2 = inv_sqrt1 @ ((p * beta) @ p.T) @ inv_sqrt1
    sigma2 = (sigma2 + sigma2.T) / 2
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = np.sum((mu1 - mu2) ** 2) + lam.sum() + np.trace(sigma2) - 2 * np.sqrt(beta).sum()
    got = frechet(mu1, sigma1, mu2, sigma2, method)
    assert got.value == pytest.approx(expected, rel=1e-10)
    assert got.notes == ()  # nothing to clamp or drop on well-conditioned inputs
    # the bound is tight enough to mean something on well-conditioned inputs: a-posteriori from the
    # eigenvalues (svd, eig) or a-priori d·√δ_M (scipy, which returns only the root)
    assert got.error_bound < (1e-6 if method == "scipy" else 1e-9) * expected


def test_tolerance_scales_with_the_numerics_not_a_constant():
    # an eigenvalue of -1e-8·||Σ|| is far beyond float64 rounding for d = 16 (~d·eps·||Σ|| = 4e-15), so it is a
    # real problem and raises (a fixed 1e-5 relative tolerance let it through) ...
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.standard_normal((16, 16)))
    ev = np.linspace(1.0, 2.0, 16)
    ev[0] = -1e-8
    bad = (q * ev) @ q.T
    for method in SQRT_METHODS:
        with pytest.raises(FrechetNumericsError, match=r"eigenvalue of -1e-08.*not\s+positive semi-definite"):
            frechet(np.zeros(16), bad, np.zeros(16), np.eye(16), method)
    # ... while a mean difference just above the bound is reported, not swallowed
    sigma = random_spd(rng, 16)
    base = frechet(np.zeros(16), sigma, np.zeros(16), sigma, "svd")
    shift = np.zeros(16)
    shift[0] = np.sqrt(100 * base.error_bound)
    assert frechet(shift, sigma, np.zeros(16), sigma, "svd").value == pytest.approx(shift[0] ** 2, rel=1e-3)


def test_covariance_rounding_error_widens_the_check_for_cancellation():
    # features with a large mean: the streaming covariance (Σxxᵀ − nμμᵀ)/(n−1) loses ~eps·|μ|² to
    # cancellation, which can show up as a negative eigenvalue far below d·eps·||Σ||; FD(x, x) must stay 0
    rng = np.random.default_rng(11)
    d, n = 32, 64
    x = 1e6 + rng.standard_normal((n, 4)) @ rng.standard_normal((4, d))
    stats = FeatureStats(d)
    stats.update(x)
    for method in SQRT_METHODS:
        assert stats_frechet(stats, stats, method=method, allow_singular=True).value == 0.0
    assert stats.cov_rounding_error() > d * np.finfo(float).eps * np.linalg.norm(stats.mean_cov(1)[1])


def test_nan_and_asymmetric_inputs_still_raise():
    with pytest.raises(FrechetNumericsError, match="NaN"):
        frechet(np.zeros(3), np.eye(3), np.full(3, np.nan), np.eye(3))
    skew = np.eye(3)
    skew[0, 1] = 0.5
    with pytest.raises(FrechetNumericsError, match="not symmetric"):
        frechet(np.zeros(3), skew, np.zeros(3), np.eye(3))


def test_bootstrap_never_stops_on_the_covariances_own_rounding():
    # features far from 0 with a small spread: the streaming covariance's cancellation leaves eigenvalues
    # of -1e-16 on resamples with repeated rows; without its rounding error (cov_rounding_error) 30 of 50
    # rounds raised "not positive semi-definite"
    rng = np.random.default_rng(0)
    real = 50 + rng.standard_normal((6, 4)) * 0.05
    fake = 50.3 + rng.standard_normal((6, 4)) * 0.05
    mean, std = bootstrap_fd(real, fake, rounds=50, seed=0, allow_singular=True)
    assert 0.2 < mean < 0.6 and std > 0
