"""FVMD at parity with PyPI ``fvmd`` 1.0.0 (test-only peer): one random state dict in both trackers, the same
tracks, histograms and distance from the peer's own functions; then the streaming metric on the tiny
random tracker (protocol naming, checksums, reference guard, counts, errors).

fvmd's functions call ``.cuda()`` and build grids on ``"cuda"``; the ``peer`` fixture sends both to the CPU
and changes nothing else. Install: ``pip install --no-deps fvmd==1.0.0 && pip install loguru fire prettytable
tensorboardX`` (its pins clash with ours; these are what its modules import).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmdbench.data.synthetic import moving_shape
from cmdbench.metrics import pips
from cmdbench.metrics.frechet import FeatureStats
from cmdbench.metrics.fvmd import (
    DEFAULT_FEATURES,
    FVMD,
    SQRTM_OFFSET,
    MotionFeatures,
    acceleration,
    fvmd_distance,
    load_tracker,
    make_motion_extractor,
    motion_features,
    motion_histograms,
    query_grid,
    velocity,
)
from cmdbench.metrics.reference import ProtocolMismatchError


@pytest.fixture
def peer(monkeypatch):
    """fvmd 1.0.0's modules with their CUDA calls sent to the CPU."""
    pytest.importorskip("fvmd")
    import fvmd.extract_motion_features as emf
    import fvmd.frechet_distance as fd
    import fvmd.keypoint_tracking as kt
    import fvmd.utils.basic as basic
    from fvmd.datasets.video_datasets import VideoDatasetNP
    from fvmd.nets.pips2 import Pips as PeerPips

    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    grid = basic.meshgrid2d
    monkeypatch.setattr(basic, "meshgrid2d", lambda *a, **k: grid(*a, **{**k, "device": "cpu"}))

    class Peer:
        tracking, hist, frechet, Pips, Dataset = kt, emf, fd, PeerPips, VideoDatasetNP

    return Peer


@pytest.fixture(scope="module")
def released():
    """The released-size tracker with seeded random weights (17.6 M parameters)."""
    return pips.random_pips(pips.RELEASED, seed=1)


class Opaque:
    """A pickled global that torch's safe loader refuses, as it refuses the released file's extras."""


def clips(n: int, size: int = 128, frames: int = 16, seed: int = 0) -> torch.Tensor:
    """Moving-shape clips uint8 (n, frames, 3, size, size), each with its own shape, colour and speed."""
    return torch.stack([moving_shape(seed + i, label=i, num_frames=frames, height=size, width=size)[0]
                        for i in range(n)])


# --- layout -----------------------------------------------------------------------------------------------


def test_one_state_dict_loads_strictly_into_both_trackers(peer, released):
    theirs = peer.Pips(stride=8)
    theirs.load_state_dict(released.state_dict(), strict=True)
    ours = pips.build_pips(theirs.state_dict())  # and back: every key and shape of the released layout
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert sum(p.numel() for p in ours.parameters()) == 17_565_410


def test_released_checkpoint_file_layout(tmp_path, released):
    """``{'model_state_dict', 'optimizer_state_dict'}`` as FVMD's file; a DataParallel 'module.' prefix is taken
    off; a file that needs the full unpickler is refused until its sha256 is trusted."""
    state = {f"module.{k}": v for k, v in released.state_dict().items()}
    path = tmp_path / "pips2_weights.pth"
    torch.save({"model_state_dict": state, "optimizer_state_dict": {"state": {}, "param_groups": []}}, path)
    model, sha, where = load_tracker("pips2_fvmd", path)
    assert where == str(path) and len(sha) == 64
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), released.state_dict().values(),
                                                 strict=True))

    torch.save({"model_state_dict": released.state_dict(), "extra": Opaque()}, path)
    with pytest.raises(ValueError, match="verify pips2_fvmd"):
        load_tracker("pips2_fvmd", path)
    torch.save({"something": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match=r"82 missing keys \(fnet.conv1.weight.*1 unexpected keys \(something\)"):
        load_tracker("pips2_fvmd", path)
    torch.save([1, 2], path)
    with pytest.raises(ValueError, match="not a PIPs"):
        load_tracker("pips2_fvmd", path)


def test_released_file_through_cmdbench_weights_after_trust(tmp_path, monkeypatch, released):
    """The cache's pips2_weights.pth that needs the full unpickler: refused while its sha256 is unknown,
    loaded once `cmdbench weights verify pips2_fvmd --trust` recorded it (not before)."""
    from cmdbench import weights

    monkeypatch.setenv("CMDBENCH_CACHE", str(tmp_path))
    monkeypatch.delenv("CMDBENCH_WEIGHTS_PIPS2_FVMD", raising=False)
    torch.save({"model_state_dict": released.state_dict(), "extra": Opaque()}, tmp_path / "pips2_weights.pth")
    with pytest.raises(weights.CorruptWeightsError, match="expected 421766633"):  # not the released file
        load_tracker("pips2_fvmd")
    weights.trust("pips2_fvmd")
    model, sha, where = load_tracker("pips2_fvmd")
    assert where == str(tmp_path / "pips2_weights.pth") and sha in weights.accepted_hashes("pips2_fvmd")
    assert torch.equal(model.delta_block.dense.weight, released.delta_block.dense.weight)


# --- parity: tracks, fields, histograms, distance -------------------------------------------------------------


@pytest.mark.parametrize("num_points,frames,iters", [(4, 8, 4), (4, 6, 5)])
def test_tracks_equal_fvmd_run_tracking(peer, released, num_points, frames, iters):
    """fvmd's run_tracking (its grid, zero-velocity start, 'beautify') against ours, same weights."""
    theirs = peer.Pips(stride=8)
    theirs.load_state_dict(released.state_dict(), strict=True)
    theirs.eval()
    video = clips(1, frames=frames, seed=3)
    with torch.no_grad():
        ref = peer.tracking.run_tracking(theirs, video, N=num_points, iters=iters)
        queries = query_grid(128, 128, num_points).reshape(1, 1, -1, 2).repeat(1, frames, 1, 1)
        ours = released(queries, video.float(), iters=iters, beautify=True)
    assert ref.shape == ours.shape == (1, frames, num_points, 2)
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    assert (ours[:, 1:] != ours[:, :1]).any()  # the points do move: a tracker that returns its queries fails


def test_velocity_and_acceleration_equal_fvmd(peer):
    tracks = torch.randn(2, 16, 9, 2) * 5
    assert torch.equal(velocity(tracks), peer.tracking.calc_velocity(tracks))
    # fvmd 1.0.0 passes the tracks to calc_acceleration: p_t - p_(t-1) from frame 2 (module doc)
    assert torch.equal(acceleration(tracks, "fvmd-1.0.0"), peer.tracking.calc_acceleration(tracks))
    second = acceleration(tracks, "second-difference")  # the paper's v_t - v_(t-1)
    assert torch.equal(second, peer.tracking.calc_acceleration(peer.tracking.calc_velocity(tracks)))
    expect = tracks[:, 5] - 2 * tracks[:, 4] + tracks[:, 3]
    assert torch.allclose(second[:, 5], expect, atol=1e-5)
    assert not torch.allclose(second, acceleration(tracks, "fvmd-1.0.0"))


def test_histograms_equal_fvmd_calc_hist(peer):
    """Vectors at every bin edge: zero, the axes, diagonals, magnitudes 2^k - 1 and beyond the clip at 255."""
    rng = np.random.default_rng(0)
    scale = rng.choice([1e-3, 0.5, 1.0, 3.0, 40.0, 400.0], size=(3, 16, 400, 1))
    v = (rng.standard_normal((3, 16, 400, 2)) * scale).astype(np.float32)
    edges = [[0, 1], [1, 0], [-1, 0], [0, -1], [1, 1], [-1, -1], [3, 0], [0, 7], [0, 0], [255, 0], [0, 1e4]]
    v[0, 1, : len(edges)] = np.array(edges, np.float32)
    v[:, 0] = 0
    ours = motion_histograms(v)
    theirs = peer.hist.calc_hist(v)
    assert ours.shape == theirs.shape == (3, 4, 4, 4, 8)
    np.testing.assert_array_equal(ours, theirs)
    # a 7x7 grid of 7 frames: remainders dropped as fvmd's cut_subcube drops them
    v7 = (rng.standard_normal((2, 7, 49, 2)) * 4).astype(np.float32)
    np.testing.assert_array_equal(motion_histograms(v7), peer.hist.calc_hist(v7))


def _stats(x: np.ndarray) -> FeatureStats:
    s = FeatureStats(x.shape[1])
    s.update(x)
    return s


@pytest.mark.parametrize("n_real,n_fake,dim", [(40, 50, 64), (30, 30, 256), (600, 500, 32)])
def test_distance_equals_fvmd_calculate_fd_given_vectors(peer, n_real, n_fake, dim):
    """fvmd's value (np.cov, sqrtm of the eps-offset product, plain traces) from cmdbench's one Fréchet code."""
    rng = np.random.default_rng(dim)
    real = rng.gamma(2.0, size=(n_real, dim)) * 3
    fake = rng.gamma(2.3, size=(n_fake, dim)) * 3
    value = fvmd_distance(_stats(real), _stats(fake), allow_singular=True)
    ref = peer.frechet.calculate_fd_given_vectors(real, fake)
    assert value.value == pytest.approx(ref, rel=1e-6)
    half = dim // 2
    for got, cols in ((value.velocity, slice(0, half)), (value.acceleration, slice(half, None))):
        assert got == pytest.approx(peer.frechet.calculate_fd_given_vectors(real[:, cols], fake[:, cols]), rel=1e-6)


def test_identical_sets_give_fvmds_negative_offset(peer):
    """fvmd's eps-offset root makes FD(x, x) = -2·d·eps; cmdbench reports it as computed (module doc)."""
    x = np.random.default_rng(1).gamma(2.0, size=(30, 64))
    ref = peer.frechet.calculate_fd_given_vectors(x, x)
    value = fvmd_distance(_stats(x), _stats(x), allow_singular=True).value
    assert value == pytest.approx(-2 * 64 * SQRTM_OFFSET, rel=1e-9)
    assert value == pytest.approx(ref, rel=1e-6)


def test_singular_covariance_refused_unless_allowed():
    x = np.random.default_rng(2).gamma(2.0, size=(10, 64))
    with pytest.raises(ValueError, match="singular"):
        fvmd_distance(_stats(x), _stats(x + 1))


@pytest.mark.slow
def test_end_to_end_equals_fvmd_pipeline(peer, released):
    """Videos -> fvmd's own loader, tracking_fullseq, calc_hist and calculate_fd_given_vectors (its fvmd()
    body) against the FVMD metric: features to 1e-5 relative, value to 1e-6 (5x5 grid, 2 iterations)."""
    real, fake = clips(3, seed=10), clips(3, seed=20)
    theirs = peer.Pips(stride=8)
    theirs.load_state_dict(released.state_dict(), strict=True)
    theirs.eval()

    def peer_features(videos: torch.Tensor) -> np.ndarray:
        data = peer.Dataset(videos.permute(0, 1, 3, 4, 2).numpy(), img_size=128)  # (B, T, H, W, C) as its .npz
        vel, acc = [], []
        with torch.no_grad():
            for i in range(len(data)):
                _, v, a = peer.tracking.tracking_fullseq(theirs, data[i][None], None, N=25, iters=2, S_max=16)
                vel += v
                acc += a
        vel, acc = torch.cat(vel).numpy(), torch.cat(acc).numpy()
        b = vel.shape[0]
        return np.concatenate([peer.hist.calc_hist(vel).reshape(b, -1), peer.hist.calc_hist(acc).reshape(b, -1)], 1)

    metric = FVMD(extractor=make_motion_extractor("pips-random", num_frames=16, size=128,
                                                  settings=MotionFeatures(num_points=25, iters=2)),
                  size=128, num_points=25, iters=2, strict=False, allow_singular=True)
    metric.extractor.tracker.load_state_dict(released.state_dict())
    metric.update_real(real)
    metric.update(fake)
    ref_real, ref_fake = peer_features(real), peer_features(fake)
    ours_real, ours_fake = metric.real_accum.bank.array(), metric.fake.bank.array()
    np.testing.assert_allclose(ours_real, ref_real, rtol=1e-5, atol=0)
    np.testing.assert_allclose(ours_fake, ref_fake, rtol=1e-5, atol=0)
    assert ref_fake.std(axis=0).max() > 0  # the clips differ in motion
    value = metric.compute().value
    assert value == pytest.approx(peer.frechet.calculate_fd_given_vectors(ref_real, ref_fake), rel=1e-6)


# --- the streaming metric on the tiny random tracker ---------------------------------------------------------


def tiny_fvmd(**options) -> FVMD:
    kw = dict(extractor="pips-random-tiny", num_points=25, iters=2, size=128, strict=False, allow_singular=True)
    return FVMD(**{**kw, **options})


def test_metric_protocol_rows_and_identical_sets():
    metric = tiny_fvmd()
    assert metric.protocol.name == "fvmd[num_points=25,iters=2,size=128]"
    assert metric.extractor.dim == 2 * 4 * 1 * 8
    videos = clips(3, seed=5)
    metric.update_real(videos)
    metric.update(videos)
    mv = metric.compute()
    assert mv.value == pytest.approx(-2 * metric.extractor.dim * SQRTM_OFFSET, rel=1e-9)  # identical sets
    assert mv.n == 3 and mv.extra["random_weights"] is True and mv.extra["weights_verified"] is None
    assert mv.extra["features"]["num_points"] == 25 and "fvmd_velocity" in mv.extra
    other = tiny_fvmd()
    other.update_real(videos)
    other.update(clips(3, seed=40))
    assert other.compute().value > 1.0  # different motion: far from the -2d·eps of equal sets


def test_default_protocol_is_fvmds():
    fvmds = MotionFeatures(num_points=400, margin=8, iters=16, beautify=True, cell_size=5, cube_frames=4,
                           angle_bins=8, magnitude_bins=256, acceleration="fvmd-1.0.0")
    assert fvmds == DEFAULT_FEATURES
    assert DEFAULT_FEATURES.dim(16) == 1024
    from cmdbench.metrics.fvmd import PROTOCOL, protocol_name

    assert protocol_name(DEFAULT_FEATURES, 256) == "fvmd" == PROTOCOL.name
    assert protocol_name(MotionFeatures(acceleration="second-difference"), 256) == \
        "fvmd[acceleration=second-difference]"


def test_reference_of_other_settings_refused():
    ref = tiny_fvmd()
    ref.update_clips(clips(2, seed=1), real=True)
    other = tiny_fvmd(acceleration="second-difference")
    with pytest.raises(ProtocolMismatchError, match="extractor checksum"):
        other.set_reference(ref.real_accum)
    assert ref.extractor.checksum != other.extractor.checksum
    assert ref.extractor.weights_sha256 == other.extractor.weights_sha256


def test_strict_counts_and_bad_input():
    metric = tiny_fvmd(strict=True, num_real=3, num_fake=3)
    metric.update_real(clips(3))
    metric.update(clips(2, seed=7))
    with pytest.raises(ValueError, match="num_fake=3"):
        metric.compute()
    with pytest.raises(ValueError, match="128x128"):
        tiny_fvmd(size=64)
    with pytest.raises(ValueError, match="square grid"):
        MotionFeatures(num_points=30)
    with pytest.raises(ValueError, match="unknown FVMD tracker"):
        load_tracker("pips-imaginary")
    with pytest.raises(ValueError, match="NaN"):
        motion_features(torch.full((1, 16, 25, 2), float("nan")), MotionFeatures(num_points=25))


def test_registered_and_weights_known():
    import cmdbench.metrics.catalog  # noqa: F401  (the built-in metrics)
    from cmdbench import weights
    from cmdbench.registry import METRICS

    assert "fvmd" in METRICS
    entry = weights.entry("pips2_fvmd")
    assert entry.filename == "pips2_weights.pth" and entry.urls[0].endswith("pips2_weights/pips2_weights.pth")
