"""Motion magnitude: Farnebäck reads a textured translation of k px/frame as k (and 2k for a half-size video,
the analysis resolution), frozen frames as 0; RAFT through torchvision with weights in its own layout, its
input scaling checked against torchvision's own preset; the streaming judge's mean/std/values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from cmdbench.metrics.motion import (
    ANALYSIS_SIZE,
    FarnebackFlow,
    MotionMagnitude,
    RaftFlow,
    analysis_shape,
    available_flows,
    load_raft,
    video_motion,
)


def texture(height: int = 400, width: int = 700, seed: int = 0) -> np.ndarray:
    """A smooth random grey texture, uint8 (H, W)."""
    t = gaussian_filter(np.random.default_rng(seed).standard_normal((height, width)), 3)
    return ((t - t.min()) / (t.max() - t.min()) * 255).astype(np.uint8)


def translation(k: int, frames: int = 8, size: int = 256, seed: int = 0) -> torch.Tensor:
    """uint8 (1, frames, 3, size, size): a window sliding k px/frame to the right over a texture."""
    tex = texture(seed=seed)
    crops = [tex[40 : 40 + size, 40 + k * t : 40 + k * t + size] for t in range(frames)]
    video = torch.from_numpy(np.stack(crops))[:, None].repeat(1, 3, 1, 1)
    return video[None]


@pytest.mark.parametrize("k", [1, 3, 6])
def test_farneback_reads_a_translation_of_k_pixels_as_k(k):
    magnitude = video_motion(translation(k), FarnebackFlow())[0]
    assert magnitude == pytest.approx(k, rel=0.02)


def test_magnitude_is_measured_at_the_analysis_resolution():
    """A 128-px clip moving 2 px/frame moves 4 px/frame at the 256-px analysis size."""
    big = translation(4, size=256)
    small = torch.nn.functional.avg_pool2d(big[0].float(), 2).round().to(torch.uint8)[None]  # 128 px, 2 px/frame
    assert small.shape[-1] == 128
    assert video_motion(small, FarnebackFlow())[0] == pytest.approx(4.0, rel=0.05)
    assert video_motion(small, FarnebackFlow(size=128))[0] == pytest.approx(2.0, rel=0.05)


def test_frozen_frames_have_no_flow():
    still = translation(0)
    assert video_motion(still, FarnebackFlow())[0] < 0.01


def test_analysis_shape():
    assert analysis_shape(480, 640) == (256, 341)
    assert analysis_shape(480, 640, multiple=8) == (256, 336)
    assert analysis_shape(128, 128) == (ANALYSIS_SIZE, ANALYSIS_SIZE)


def test_streaming_judge_mean_std_and_values():
    metric = MotionMagnitude("farneback", size=128)
    metric.update(torch.cat([translation(1, size=128), translation(3, size=128)]))
    metric.update(translation(5, size=128, seed=1))
    mv = metric.compute()
    vals = np.array(mv.extra["values"])
    assert vals == pytest.approx([1, 3, 5], rel=0.03)
    assert mv.value == pytest.approx(vals.mean(), rel=1e-6) and mv.std == pytest.approx(vals.std(ddof=1), rel=1e-5)
    assert (mv.n, mv.unit, mv.protocol, mv.name) == (3, "px/frame", "farneback@128", "motion-farneback")
    metric.reset()
    with pytest.raises(ValueError, match="no videos"):
        metric.compute()


def test_raft_skipped_cleanly_without_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("CMDBENCH_CACHE", str(tmp_path))
    monkeypatch.delenv("CMDBENCH_WEIGHTS_RAFT_SMALL", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # torch hub's cache too
    ok, skipped = available_flows()
    assert ok == ["farneback"]
    assert "cmdbench weights fetch raft_small" in skipped["raft_small"]
    from cmdbench.weights import MissingWeightsError

    with pytest.raises(MissingWeightsError, match="raft_large"):
        load_raft("raft_large")


def test_raft_in_torchvisions_layout_and_preset(tmp_path, monkeypatch):
    """A random RAFT-small saved as torchvision's file loads strictly; magnitudes equal the flow of
    torchvision's model fed through torchvision's own OpticalFlow preset."""
    from torchvision.models.optical_flow import Raft_Small_Weights, raft_small

    torch.manual_seed(0)
    reference = raft_small(weights=None).eval()
    path = tmp_path / "raft_small_C_T_V2-01064c6d.pth"
    torch.save(reference.state_dict(), path)
    monkeypatch.setenv("CMDBENCH_WEIGHTS_RAFT_SMALL", str(path))
    assert available_flows(["raft_small"])[0] == ["raft_small"]
    flow = load_raft("raft_small", path, size=128)
    video = torch.from_numpy(np.stack([texture(128, 128, s) for s in range(3)]))[:, None].repeat(1, 3, 1, 1)
    ours = flow.pair_magnitudes(video)
    preset = Raft_Small_Weights.C_T_V2.transforms()
    a, b = preset(video[:-1], video[1:])
    with torch.no_grad():
        expect = reference(a, b, num_flow_updates=12)[-1].double().norm(dim=1).mean(dim=(1, 2)).numpy()
    np.testing.assert_allclose(ours, expect, rtol=1e-5)
    torch.save({"wrong": torch.zeros(1)}, path)
    with pytest.raises(RuntimeError, match="Missing key"):
        load_raft("raft_small", path)
    with pytest.raises(ValueError, match="at least 128"):
        RaftFlow(reference, name="raft_small", size=64)


def test_registered_judges():
    import cmdbench.metrics.catalog  # noqa: F401
    from cmdbench.registry import METRICS

    for name in ("motion-farneback", "motion-raft-small", "motion-raft-large"):
        assert name in METRICS
    assert METRICS.get("motion-farneback")().name == "motion-farneback"
