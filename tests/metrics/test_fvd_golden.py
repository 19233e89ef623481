"""Golden FVD values that need the real I3D weights (marked ``weights``; skipped without them).

* universome/fvd-comparison ``compare_metrics.py``: 128 videos x 16 frames x 224x224x3 drawn by
  ``np.random.RandomState(seed).rand`` (float32 in [0, 1], seeds 1 = fake, 2 = real), fed as is to the
  TorchScript detector with ``rescale=False, resize=False``; TF-GAN distance (n-1, SVD).
  TF-hub: 10.13808537; TorchScript: 10.13808477.
* google-research ``frechet_video_distance`` ``example.py``: 16 videos x 15 frames x 64x64, all zeros vs
  all 255, TF preprocessing (whole-frame bilinear to 224, [-1, 1]): "FVD should be around 131".
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmdbench.metrics.frechet import FeatureStats, stats_distance

pytestmark = [pytest.mark.weights, pytest.mark.slow]


def weight_file(name: str):
    weights = pytest.importorskip("cmdbench.weights")
    try:
        return weights.require(name)
    except weights.WeightsError as err:
        pytest.skip(f"{name} not available: {str(err).splitlines()[0]}")


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def test_torchscript_matches_tf_on_seeded_uniform_videos():
    from cmdbench.metrics.i3d import load_torchscript_detector

    det = load_torchscript_detector(weight_file("i3d_torchscript"), device())
    stats = {}
    for which, seed in (("fake", 1), ("real", 2)):
        videos = np.random.RandomState(seed).rand(128, 16, 224, 224, 3).astype(np.float32)
        s = FeatureStats(400)
        for chunk in np.array_split(videos, 16):
            x = torch.from_numpy(chunk).permute(0, 4, 1, 2, 3).to(device())  # (B, 3, T, 224, 224) in [0, 1]
            with torch.no_grad():
                s.update(det(x, rescale=False, resize=False, return_features=True).double().cpu())
        stats[which] = s
    fvd = stats_distance(stats["real"], stats["fake"], ddof=1, method="svd", allow_singular=True)
    assert fvd == pytest.approx(10.13808537, abs=2e-3)


def test_tf_sanity_value_zeros_vs_255():
    from dataclasses import replace

    from cmdbench.metrics.fvd import FVD, get_protocol

    protocol = replace(get_protocol("tf-reference"), num_frames=15)  # example.py's clips are 15 frames
    m = FVD(protocol, extractor_path=weight_file("i3d_torchscript"), device=device(), strict=False,
            allow_singular=True)
    zeros = torch.zeros(16, 15, 3, 64, 64, dtype=torch.uint8)
    m.update_real(zeros)
    m.update(torch.full_like(zeros, 255))
    assert m.compute().value == pytest.approx(131.0, rel=0.02)
