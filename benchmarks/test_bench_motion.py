"""Motion judges on the CPU: Farnebäck motion scoring throughput, and the FVMD extractor side by side with
fvmd 1.0.0's own code.

Run: ``python -m pytest benchmarks/test_bench_motion.py --benchmark-enable -o addopts=""`` (the project's default
options skip benchmarks; the FVMD pair needs the test-only peer ``fvmd``, else it skips).

* **Farnebäck motion scoring**: :func:`cmdbench.metrics.motion.video_motion` on 16-frame 256x256 uint8 clips
  (moving shapes), OpenCV and torch on 2 threads; clips/s = clips per call / median round.
* **FVMD extractor, ours vs fvmd's**: one random state dict in both trackers (released size, 17.6 M
  parameters), the same uint8 clip, fp32, 2 threads, batch 1; 1 warm-up + ``ROUNDS`` timed rounds each, ours
  first. Timed: the whole feature path -- ours ``MotionFeatureExtractor.extract`` (resize, PIPs++ tracks,
  velocity/acceleration histograms); fvmd's ``VideoDatasetNP`` item (its Resize), ``tracking_fullseq``
  (``run_tracking``: grid, zero-velocity start, the net), ``calc_hist`` of both fields (its ``.cuda()`` calls
  sent to the CPU). The features are checked equal first. The peer's test fails when our median is slower
  (target: ours >= fvmd's clips/s). Setting: 128x128 frames (the tracker's smallest), a 5x5 point grid, fvmd's
  16 iterations -- the released 20x20 grid at 256x256 takes over a minute per clip per implementation on two
  cores; ``CMDBENCH_BENCH_FULL=1`` adds that setting (slow).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from cmdbench.data.synthetic import moving_shape
from cmdbench.metrics import pips
from cmdbench.metrics.fvmd import MotionFeatureExtractor, MotionFeatures
from cmdbench.metrics.motion import FarnebackFlow, video_motion

THREADS, ROUNDS = 2, 5
FULL = os.environ.get("CMDBENCH_BENCH_FULL") == "1"
RESULTS: dict[str, dict[str, float]] = {}
SETTINGS = [pytest.param((128, 25), id="128px-5x5"),
            pytest.param((256, 400), id="256px-20x20", marks=[pytest.mark.slow, pytest.mark.skipif(
                not FULL, reason="set CMDBENCH_BENCH_FULL=1 (fvmd's own setting: minutes per clip)")])]


@pytest.fixture(autouse=True)
def two_threads():
    import cv2

    before, before_cv = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(THREADS)
    cv2.setNumThreads(THREADS)
    yield
    torch.set_num_threads(before)
    cv2.setNumThreads(before_cv)


def clips(n: int, size: int) -> torch.Tensor:
    return torch.stack([moving_shape(i, label=i, num_frames=16, height=size, width=size)[0] for i in range(n)])


def test_bench_farneback_motion_256(benchmark):
    videos = clips(4, 256)
    flow = FarnebackFlow()
    out = benchmark.pedantic(video_motion, args=(videos, flow), rounds=ROUNDS, iterations=1, warmup_rounds=1)
    assert out.shape == (4,) and (out > 0).all()
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(clips_per_call=4, clips_per_s=4 / median, frames=16, size=256,
                                pairs_per_s=4 * 15 / median, threads=THREADS, device="cpu", flow="farneback")


@pytest.fixture(scope="module", params=SETTINGS)
def fvmd_pair(request, monkeysession):
    pytest.importorskip("fvmd")
    import fvmd.extract_motion_features as emf
    import fvmd.keypoint_tracking as kt
    import fvmd.utils.basic as basic
    from fvmd.datasets.video_datasets import VideoDatasetNP
    from fvmd.nets.pips2 import Pips as PeerPips

    monkeysession.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    grid = basic.meshgrid2d
    monkeysession.setattr(basic, "meshgrid2d", lambda *a, **k: grid(*a, **{**k, "device": "cpu"}))
    size, points = request.param
    ours_net = pips.random_pips(pips.RELEASED, seed=1)
    theirs = PeerPips(stride=8)
    theirs.load_state_dict(ours_net.state_dict(), strict=True)
    theirs.eval()
    settings = MotionFeatures(num_points=points)
    ours = MotionFeatureExtractor(ours_net, name="pips-random", weights_sha256="random", settings=settings, size=size)
    video = clips(1, size)

    def peer_features(v: torch.Tensor) -> np.ndarray:
        data = VideoDatasetNP(v.permute(0, 1, 3, 4, 2).numpy(), img_size=size)
        with torch.no_grad():
            _, vel, acc = kt.tracking_fullseq(theirs, data[0][None], None, N=points, iters=16, S_max=16)
        return np.concatenate([emf.calc_hist(vel[0].numpy()).reshape(1, -1),
                               emf.calc_hist(acc[0].numpy()).reshape(1, -1)], axis=1)

    np.testing.assert_allclose(ours.extract(video), peer_features(video), rtol=1e-5, atol=0)
    return f"{size}px-{points}points", video, ours, peer_features


@pytest.fixture(scope="module")
def monkeysession():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def record(benchmark, key: str, impl: str) -> None:
    median = benchmark.stats.stats.median
    RESULTS.setdefault(key, {})[impl] = median
    pair = RESULTS[key]
    info = {"impl": impl, "clips_per_s": 1.0 / median, "threads": THREADS, "rounds": benchmark.stats.stats.rounds,
            "device": "cpu", "dtype": "float32", "setting": key}
    if "ours" in pair and "peer" in pair:
        info["ours_over_peer_clips_per_s"] = pair["peer"] / pair["ours"]
    benchmark.extra_info.update(info)
    if impl == "peer" and "ours" in pair:
        assert pair["ours"] <= pair["peer"], f"{key}: ours {pair['ours']:.2f} s/clip, fvmd {pair['peer']:.2f} s/clip"


def test_bench_fvmd_features_ours(benchmark, fvmd_pair):
    key, video, ours, _ = fvmd_pair
    benchmark.pedantic(ours.extract, args=(video,), rounds=ROUNDS, iterations=1, warmup_rounds=1)
    record(benchmark, key, "ours")


def test_bench_fvmd_features_fvmd(benchmark, fvmd_pair):
    key, video, _, peer = fvmd_pair
    benchmark.pedantic(peer, args=(video,), rounds=ROUNDS, iterations=1, warmup_rounds=1)
    record(benchmark, key, "peer")
