"""PSNR, SSIM and LPIPS of video pairs (``cmdbench.metrics.reconstruction``).

Oracles: PSNR from the closed form on constant differences and a float64 numpy formula per frame;
SSIM from an independent float64 implementation on scipy.ndimage (and scikit-image's
``structural_similarity`` when installed: ``pip install scikit-image``, test-only); LPIPS from the
``lpips`` package called frame by frame on [0, 1] inputs with its own ``normalize=True`` mapping. The LPIPS
backbone here is the random stand-in (``backbone="random"``, labelled RANDOM): the tests check the
plumbing, not ImageNet values.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from cmdbench.metrics.reconstruction import (
    LPIPS,
    PSNR,
    PSNR_CAP_DB,
    SSIM,
    PairMismatchError,
    lpips_per_frame,
    psnr_per_frame,
    reconstruction_scores,
    ssim_per_frame,
)
from cmdbench.perceptual import load_lpips


def random_pair(seed: int, shape=(2, 3, 3, 24, 20), noise=20.0):
    """A uint8 video batch and a noisy copy of it."""
    g = torch.Generator().manual_seed(seed)
    ref = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    smooth = torch.nn.functional.avg_pool2d(ref.flatten(0, 1).float(), 3, 1, 1).reshape(shape)  # some structure
    rec = (smooth + noise * torch.randn(shape, generator=g)).round().clamp(0, 255).to(torch.uint8)
    return rec, ref


# --- PSNR -------------------------------------------------------------------------------------------------


def test_psnr_of_a_constant_difference_is_the_closed_form():
    ref = torch.full((1, 1, 3, 8, 8), 100, dtype=torch.uint8)
    for d in (1, 5, 60):
        got = psnr_per_frame(ref + d, ref).item()
        assert got == pytest.approx(20 * math.log10(255 / d), abs=1e-12)  # 1 level: 48.1308 dB


def test_psnr_matches_a_float64_formula_per_frame():
    rec, ref = random_pair(0)
    a, b = rec.double().numpy() / 255, ref.double().numpy() / 255
    expected = np.array([[10 * np.log10(1 / np.mean((a[i, t] - b[i, t]) ** 2)) for t in range(a.shape[1])]
                         for i in range(a.shape[0])])
    np.testing.assert_allclose(psnr_per_frame(rec, ref).numpy(), expected, rtol=0, atol=1e-10)


def test_identical_frames_score_the_cap():
    rec, ref = random_pair(1)
    rec[0, 1] = ref[0, 1]
    values = psnr_per_frame(rec, ref)
    assert values[0, 1].item() == PSNR_CAP_DB
    assert (values[values != PSNR_CAP_DB] < 60).all()


def test_video_psnr_is_the_mean_of_frame_psnr_not_the_psnr_of_the_mean_mse():
    ref = torch.full((1, 2, 3, 8, 8), 100, dtype=torch.uint8)
    rec = ref.clone()
    rec[0, 0] += 1
    rec[0, 1] += 10
    metric = PSNR()
    metric.update(rec, references=ref)
    value = metric.compute().value
    assert value == pytest.approx((20 * math.log10(255) + 20 * math.log10(25.5)) / 2, abs=1e-12)  # 38.13 dB
    assert abs(value - 10 * math.log10(255**2 / 50.5)) > 5  # the other convention: 31.1 dB


# --- SSIM -------------------------------------------------------------------------------------------------


def ssim_oracle(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al. 2004 on one float64 (H, W) channel in [0, 1]: scipy Gaussian filter, valid region."""
    x = np.arange(11) - 5.0
    w = np.exp(-(x**2) / (2 * 1.5**2))
    w /= w.sum()

    def blur(img):
        out = ndimage.correlate1d(ndimage.correlate1d(img, w, axis=0, mode="reflect"), w, axis=1, mode="reflect")
        return out[5:-5, 5:-5]

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    return float(np.mean((2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))))


def test_ssim_matches_an_independent_float64_implementation():
    rec, ref = random_pair(2)
    a, b = rec.double().numpy() / 255, ref.double().numpy() / 255
    expected = np.array([[np.mean([ssim_oracle(a[i, t, c], b[i, t, c]) for c in range(3)])
                          for t in range(a.shape[1])] for i in range(a.shape[0])])
    got = ssim_per_frame(rec, ref).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    assert got.min() > 0.05 and got.max() < 0.95  # a non-trivial regime


def test_ssim_does_not_depend_on_how_frames_are_chunked(monkeypatch):
    from cmdbench.metrics import reconstruction

    rec, ref = random_pair(12)
    whole = ssim_per_frame(rec, ref)
    monkeypatch.setattr(reconstruction, "SSIM_PIXELS_PER_CALL", 3 * 24 * 20 * 2)  # 2 of the 6 frames per step
    assert torch.equal(ssim_per_frame(rec, ref), whole)


def test_ssim_matches_scikit_image():
    metrics = pytest.importorskip("skimage.metrics")
    rec, ref = random_pair(3, shape=(1, 2, 3, 32, 27))
    got = ssim_per_frame(rec, ref).numpy()
    for t in range(2):
        expected = metrics.structural_similarity(
            rec[0, t].double().numpy() / 255, ref[0, t].double().numpy() / 255, gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False, data_range=1.0, channel_axis=0)
        assert got[0, t] == pytest.approx(expected, abs=1e-12)


def test_ssim_of_identical_frames_is_one_and_is_symmetric():
    rec, ref = random_pair(4)
    assert torch.allclose(ssim_per_frame(ref, ref), torch.ones(2, 3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(ssim_per_frame(rec, ref), ssim_per_frame(ref, rec), atol=1e-14)


def test_ssim_refuses_frames_smaller_than_the_window():
    x = torch.zeros(1, 1, 3, 10, 32, dtype=torch.uint8)
    with pytest.raises(PairMismatchError, match="10x32 pixels are smaller than the 11x11"):
        ssim_per_frame(x, x)


# --- LPIPS (random backbone: plumbing only) ------------------------------------------------------------------


@pytest.fixture(scope="module")
def lpips_random():
    return load_lpips("alex", backbone="random")


def test_lpips_per_frame_equals_the_package_called_frame_by_frame(lpips_random):
    rec, ref = random_pair(5, shape=(2, 3, 3, 32, 32))
    got = lpips_per_frame(lpips_random, rec, ref, frames_per_call=4)  # batches cross video boundaries
    for i in range(2):
        for t in range(3):
            x, y = rec[i, t][None].float() / 255, ref[i, t][None].float() / 255  # [0, 1]
            expected = lpips_random(x, y, normalize=True).item()  # the package maps to [-1, 1] itself
            assert got[i, t].item() == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert (got > 0).all()
    assert torch.equal(lpips_per_frame(lpips_random, ref, ref), torch.zeros(2, 3, dtype=torch.float64))


def test_lpips_on_frames_too_small_for_alexnet_names_the_size(lpips_random):
    rec, ref = random_pair(5, shape=(1, 2, 3, 16, 16))
    with pytest.raises(ValueError, match="LPIPS cannot score 16x16 frames"):
        lpips_per_frame(lpips_random, rec, ref)


def test_lpips_metric_is_labelled_random(lpips_random):
    metric = LPIPS(backbone="random", model=lpips_random)
    rec, ref = random_pair(6, shape=(1, 2, 3, 32, 32))
    metric.update(rec, references=ref)
    mv = metric.compute()
    assert mv.name == "lpips" and "RANDOM" in mv.protocol and mv.higher_is_better is False
    assert mv.extra["backbone_sha256"] == "random-seed0" and len(mv.extra["linear_sha256"]) == 64


def test_reconstruction_scores_are_per_video_means(lpips_random):
    rec, ref = random_pair(7, shape=(3, 2, 3, 32, 32))
    scores = reconstruction_scores(rec, ref, lpips_model=lpips_random)
    assert set(scores) == {"psnr", "ssim", "lpips"}
    np.testing.assert_allclose(scores["psnr"], psnr_per_frame(rec, ref).mean(dim=1).numpy(), rtol=0, atol=0)
    np.testing.assert_allclose(scores["lpips"], lpips_per_frame(lpips_random, rec, ref).mean(dim=1).numpy())
    assert scores["ssim"].shape == (3,)


# --- Streaming, errors, registry ----------------------------------------------------------------------------


def test_streaming_equals_one_batch_and_survives_a_state_round_trip():
    rec, ref = random_pair(8, shape=(4, 3, 3, 16, 16))
    whole, parts = SSIM(), SSIM()
    whole.update(rec, references=ref)
    parts.update(rec[:1], references=ref[:1])
    resumed = SSIM()
    resumed.load_state_dict(parts.state_dict())
    resumed.update(rec[1:], references=ref[1:])
    a, b = whole.compute(), resumed.compute()
    assert a.value == b.value and a.std == b.std and a.n == b.n == 4
    per_video = ssim_per_frame(rec, ref).mean(dim=1).numpy()
    assert a.value == pytest.approx(per_video.mean(), abs=1e-15)
    assert a.std == pytest.approx(per_video.std(ddof=1), abs=1e-15)
    assert a.extra["frames"] == 12


def test_per_frame_index_mean_with_videos_of_different_lengths():
    metric = PSNR()
    short, long_ = random_pair(9, shape=(1, 2, 3, 8, 8)), random_pair(10, shape=(1, 4, 3, 8, 8))
    metric.update(*short[:1], references=short[1])
    metric.update(long_[0], references=long_[1])
    s, lg = psnr_per_frame(*short)[0].numpy(), psnr_per_frame(*long_)[0].numpy()
    mv = metric.compute()
    np.testing.assert_allclose(mv.extra["per_frame_index_mean"], [(s[0] + lg[0]) / 2, (s[1] + lg[1]) / 2, lg[2], lg[3]])
    assert mv.value == pytest.approx((s.mean() + lg.mean()) / 2)  # mean of per-video means
    assert mv.extra["frames_per_video"] == [2, 4]


def test_clear_errors():
    rec, ref = random_pair(11, shape=(1, 2, 3, 16, 16))
    metric = PSNR()
    with pytest.raises(ValueError, match="psnr.compute\\(\\) before any update"):
        metric.compute()
    with pytest.raises(ValueError, match="pass references="):
        metric.update(rec, ["a prompt"])
    with pytest.raises(PairMismatchError, match=r"videos \(1, 2, 3, 16, 16\) and references \(1, 1, 3, 16, 16\)"):
        metric.update(rec, references=ref[:, :1])
    with pytest.raises(Exception, match="uint8"):
        metric.update(rec.float(), references=ref)


def test_registered_as_paired_metrics(plugins):
    from cmdbench.interfaces import PairedVideoMetric, is_paired

    for name in ("psnr", "ssim"):
        metric = plugins.METRICS.get(name)(device="cpu")
        assert is_paired(metric) and isinstance(metric, PairedVideoMetric)
    factory = plugins.METRICS.get("lpips")
    assert is_paired(factory(backbone="random"))
