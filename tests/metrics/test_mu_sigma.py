"""Statistics exchanged with other tools in the (mu, sigma) ``.npz`` layout: exact formulas against numpy, the
file layout a plain ``np.load`` reads, peer files without a count, and an FVD against a peer file equal to the
Fréchet distance computed independently (numpy + scipy) from the same features."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from cmdbench.metrics.frechet import (
    FeatureStats,
    GaussianStats,
    InsufficientSamplesError,
    frechet,
    is_mu_sigma_file,
    load_mu_sigma,
    save_mu_sigma,
    stats_frechet,
)
from tests.commands.conftest import notes_of, records_of, write_videos


def features(n: int, d: int, seed: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) * 0.3 + shift


@pytest.mark.parametrize("ddof", [0, 1])
def test_mu_sigma_are_numpy_mean_and_cov(ddof):
    x = features(300, 12, 0, shift=2.0)
    stats = FeatureStats(12)
    stats.update(x[:100])
    stats.update(x[100:])
    g = stats.to_gaussian(ddof)
    np.testing.assert_allclose(g.mu, x.mean(axis=0), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(g.sigma, np.cov(x, rowvar=False, ddof=ddof), rtol=1e-11, atol=1e-12)
    assert g.n == 300 and g.metadata["ddof"] == ddof


def test_file_layout_is_what_a_plain_np_load_reads(tmp_path):
    x = features(50, 6, 1)
    stats = FeatureStats(6, metadata={"protocol": {"name": "videogpt"}})
    stats.update(x)
    path = save_mu_sigma(tmp_path / "stats.npz", stats.to_gaussian(1))
    with np.load(path, allow_pickle=False) as z:
        assert {"mu", "sigma", "n", "metadata"} <= set(z.files)
        assert z["mu"].dtype == np.float64 and z["sigma"].shape == (6, 6) and int(z["n"]) == 50
        np.testing.assert_array_equal(z["sigma"], np.asarray(stats.to_gaussian(1).sigma))
    back = load_mu_sigma(path)
    assert back.n == 50 and back.metadata["protocol"] == {"name": "videogpt"} and is_mu_sigma_file(path)
    stats.save(tmp_path / "ours.npz")
    assert not is_mu_sigma_file(tmp_path / "ours.npz")  # cmdbench's own format is told apart


def test_peer_file_without_count_and_broken_files(tmp_path):
    x = features(40, 5, 2)
    np.savez(tmp_path / "peer.npz", mu=x.mean(0), sigma=np.cov(x, rowvar=False))
    g = load_mu_sigma(tmp_path / "peer.npz")
    assert g.n is None and g.metadata == {} and g.bank is None
    np.savez(tmp_path / "half.npz", mu=x.mean(0))
    with pytest.raises(ValueError, match=r"half.npz is not a readable \(mu, sigma\) statistics file: has no \['sigma'\]"):
        load_mu_sigma(tmp_path / "half.npz")
    with pytest.raises(ValueError, match=r"mu \(5,\) and sigma \(5, 4\)"):
        GaussianStats(x.mean(0), np.zeros((5, 4)))
    with pytest.raises(InsufficientSamplesError, match="from 5 feature vectors of dimension 5"):
        GaussianStats(x.mean(0), np.eye(5), n=5).mean_cov()


def test_distance_from_gaussian_stats_equals_the_scipy_formula():
    a, b = features(200, 8, 3), features(150, 8, 4, shift=0.5)
    real, fake = FeatureStats(8), FeatureStats(8)
    real.update(a)
    fake.update(b)
    value = stats_frechet(real.to_gaussian(1), fake, ddof=1).value
    mu1, s1, mu2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    oracle = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert value == pytest.approx(oracle, rel=1e-9)
    assert value == pytest.approx(frechet(mu1, s1, mu2, s2).value, rel=1e-12)


# --- the command line ---------------------------------------------------------------------------------------
@pytest.fixture
def folders(tmp_path, monkeypatch):
    monkeypatch.setenv("CMDBENCH_CACHE", str(tmp_path / "cache"))
    write_videos(tmp_path / "real", 5, seed=0, captions=False)
    write_videos(tmp_path / "fake", 6, seed=1, shift=40, captions=False)
    return tmp_path


def test_ref_stats_exports_mu_sigma_with_the_presets_estimator(folders):
    from cmdbench.cli import main

    out = folders / "export" / "real_mu_sigma.npz"
    assert main(["ref-stats", "--videos", str(folders / "real"), "--extractor", "i3d-random-tiny", "--num-real", "0",
                 "--out", str(folders / "real.npz"), "--export", "mu-sigma", str(out), "--no-progress"]) == 0
    bank = FeatureStats.load(folders / "real.npz").bank.array()  # the per-clip features (5, 400)
    with np.load(out) as z:
        np.testing.assert_allclose(z["mu"], bank.mean(0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(z["sigma"], np.cov(bank, rowvar=False, ddof=1), rtol=1e-9, atol=1e-12)  # videogpt: n-1
        assert int(z["n"]) == 5
    assert main(["ref-stats", "--videos", str(folders / "real"), "--export", "csv", "x.csv"]) == 2


def test_evaluate_against_a_peer_file_equals_the_independent_distance(folders, capsys):
    from cmdbench.cli import main
    from cmdbench.metrics.fvd import get_protocol, preprocessing_of
    from cmdbench.metrics.i3d import make_extractor
    from cmdbench.video import read_video

    protocol = get_protocol("videogpt")
    extractor = make_extractor("i3d-random-tiny", preprocessing_of(protocol))
    real = np.random.default_rng(7).standard_normal((500, 400)) * 0.1  # a peer's real features
    np.savez(folders / "peer.npz", mu=real.mean(0), sigma=np.cov(real, rowvar=False))
    common = ["evaluate", "--videos", str(folders / "fake"), "--metric", "fvd2048_16f", "--ref-stats",
              str(folders / "peer.npz"), "--records", str(folders / "runs"), "--non-strict", "--allow-singular"]
    assert main(common) == 1
    assert "without metadata (another tool's file): name the protocol" in capsys.readouterr().err
    assert main([*common, "--protocol", "videogpt", "--extractor", "i3d-random-tiny"]) == 0
    row = records_of(folders / "runs").iloc[0]
    clips = torch.stack([read_video(p)[:16] for p in sorted((folders / "fake").glob("*.mp4"))])
    fake = extractor.extract(clips)  # (6, 400)
    mu1, s1, mu2, s2 = real.mean(0), np.cov(real, rowvar=False), fake.mean(0), np.cov(fake, rowvar=False)
    oracle = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2).real)
    assert row["value"] == pytest.approx(oracle, rel=1e-6)
    notes = notes_of(row)
    assert notes["n_real"] is None and notes["conformance"].startswith("not conformant (unknown real / 6 fake")
    assert "real unknown clips" in capsys.readouterr().out
