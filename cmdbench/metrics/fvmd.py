"""FVMD: Fréchet Video Motion Distance (Liu et al. 2024, arXiv 2407.16124), as PyPI ``fvmd`` 1.0.0 computes it.

FVMD compares how things move, not what they look like. For every 16-frame clip:

1. **Point tracks.** A 20 x 20 grid of query points (8 pixels in from the borders) is tracked through the
   clip by PIPs++ (:mod:`cmdbench.metrics.pips`; 16 iterations, ``beautify``), on frames resized so the
   shorter side is 256 (bilinear, antialiased: torchvision ``Resize(256)`` on the uint8 frames, fvmd's
   ``VideoDatasetNP``). Tracks: ``(S, N, 2)`` pixels.
2. **Velocity and acceleration fields.** velocity ``v_t = p_t − p_{t−1}`` (``v_0 = 0``). fvmd 1.0.0 passes
   the *tracks* to its acceleration function, so its "acceleration" is ``p_t − p_{t−1}`` for ``t >= 2``
   (frames 0 and 1 zero): the velocity with its first two frames blanked, not the paper's second
   difference (Eq. 2). ``acceleration="fvmd-1.0.0"`` (default) reproduces the released numbers;
   ``"second-difference"`` computes ``v_t − v_{t−1}`` as the paper defines it (another protocol name).
3. **Histograms.** The ``20 x 20`` grid and the 16 frames are cut into cubes of 5 x 5 points x 4 frames
   (4 x 4 x 4 cubes). Each vector votes into one of 8 orientation bins, ``floor((atan2(dx, dy) + π) / (π/4))``
   (fvmd's argument order), with weight ``ceil(log2(1 + min(|v|, 255))) / 8`` (0 for a still point, 1/8 for
   any motion up to 1 px, ... 8/8 from 127 px on). Velocity and acceleration histograms are concatenated:
   ``2 x 4 x 4 x 4 x 8 = 1024`` numbers per clip (float64).
4. **Fréchet distance** between Gaussians fitted to real and generated features: unbiased covariances
   (``np.cov``), and -- fvmd's ``calculate_frechet_distance`` -- ``sqrtm((Σ₁ + εI)(Σ₂ + εI))`` with
   ``ε = 1e-5`` while the traces use the plain covariances. cmdbench's one Fréchet implementation
   (:func:`cmdbench.metrics.frechet.frechet`, method ``scipy``) computes it exactly from the offset
   covariances, whose distance is fvmd's value plus ``2dε`` (each trace gains ``dε``), so
   ``FVMD = FD(μ₁, Σ₁+εI, μ₂, Σ₂+εI) − 2dε``. Consequence (fvmd's, kept): the value can be negative, down to
   ``−2dε = −0.02048`` for two identical sets; it is reported as computed.

Clips. The features and the distance are fvmd's; which clips enter follows cmdbench's protocol for every
Fréchet judge (one 16-frame clip per video: frames 0..15 of a generated video, one seeded window of a
real one; 2048 / 2048 by default, ``strict`` refuses other counts). fvmd's own loaders take every 16-frame
window at stride 1, which is the same thing for 16-frame videos.

Tracker weights: ``pips2_fvmd`` (``pips2_weights.pth``, the FVMD release; ``cmdbench weights fetch
pips2_fvmd``) or random stand-ins ``pips-random`` (the released size) and ``pips-random-tiny`` (CPU tests;
values mean nothing, and every row says so).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmdbench.config import EvalProtocol, stable_hash
from cmdbench.interfaces import MetricValue
from cmdbench.metrics import pips
from cmdbench.metrics.frechet import FeatureStats, FrechetResult, InsufficientSamplesError, frechet
from cmdbench.metrics.fvd import FVD, protocol_hash
from cmdbench.metrics.preprocess import Preprocessing
from cmdbench.video import IN_MEMORY, validate_video

REAL_NAME = "pips2_fvmd"  # the weight file (cmdbench.weights) and the extractor name of the released tracker
STAND_INS = {"pips-random": pips.RELEASED, "pips-random-tiny": pips.TINY}
EXTRACTOR_NAMES = (REAL_NAME, *STAND_INS)
ACCELERATIONS = ("fvmd-1.0.0", "second-difference")
SQRTM_OFFSET = 1e-5  # fvmd's calculate_frechet_distance(eps=1e-5)
FOLLOWS = "fvmd 1.0.0 (FVMD, Liu et al. 2024): PIPs++ tracks of a 20x20 grid -> velocity/acceleration histograms"

PROTOCOL = EvalProtocol(
    name="fvmd", extractor=REAL_NAME, num_real=2048, num_fake=2048, num_frames=16, frame_stride=1, size=256,
    resize="detector", value_range=(0.0, 255.0), ddof=1, sqrtm="scipy", antialias=True,
)


@dataclass(frozen=True)
class MotionFeatures:
    """How tracks become FVMD features (fvmd 1.0.0's values are the defaults).

    num_points: query grid of ``sqrt(N) x sqrt(N)`` points, ``margin`` pixels in from the borders.
    iters / beautify: PIPs++ refinement iterations; halve the last quarter's corrections.
    cell_size x cell_size points x cube_frames frames per histogram cube; angle_bins orientations;
    magnitude_bins: magnitudes are clipped to ``magnitude_bins - 1`` and binned on a log2 scale.
    acceleration: ``"fvmd-1.0.0"`` (the release: p_t - p_(t-1) from frame 2) or ``"second-difference"``.
    """

    num_points: int = 400
    margin: int = 8
    iters: int = 16
    beautify: bool = True
    cell_size: int = 5
    cube_frames: int = 4
    angle_bins: int = 8
    magnitude_bins: int = 256
    acceleration: str = "fvmd-1.0.0"

    def __post_init__(self) -> None:
        side = round(math.sqrt(self.num_points))
        if side * side != self.num_points or side < 2:
            raise ValueError(f"num_points={self.num_points}: FVMD tracks a square grid; allowed 4, 9, ..., 400")
        if self.acceleration not in ACCELERATIONS:
            raise ValueError(f"acceleration={self.acceleration!r}; allowed {ACCELERATIONS}")
        if side < self.cell_size:
            raise ValueError(f"num_points={self.num_points} gives a {side}x{side} grid, smaller than one "
                             f"{self.cell_size}x{self.cell_size} histogram cell")

    @property
    def side(self) -> int:
        return round(math.sqrt(self.num_points))

    def dim(self, num_frames: int) -> int:
        """Feature length for clips of ``num_frames``: 2 fields x cubes x angle bins (1024 for fvmd)."""
        cubes = (num_frames // self.cube_frames) * (self.side // self.cell_size) ** 2
        return 2 * cubes * self.angle_bins


DEFAULT_FEATURES = MotionFeatures()


# --- tracks -> velocity, acceleration ------------------------------------------------------------------


def query_grid(height: int, width: int, num_points: int = 400, margin: int = 8) -> torch.Tensor:
    """The ``sqrt(N) x sqrt(N)`` query points, float32 ``(N, 2)`` as ``(x, y)``, row-major, ``margin`` pixels
    in from every border (fvmd's ``run_tracking``, same arithmetic)."""
    side = round(math.sqrt(num_points))
    line = torch.linspace(0.0, side - 1, side)
    gy = line.reshape(side, 1).repeat(1, side).reshape(-1)
    gx = line.reshape(1, side).repeat(side, 1).reshape(-1)
    gy = margin + gy / float(side - 1) * (height - 2 * margin)
    gx = margin + gx / float(side - 1) * (width - 2 * margin)
    return torch.stack([gx, gy], dim=-1)


def velocity(tracks: torch.Tensor) -> torch.Tensor:
    """``(B, S, N, 2)`` -> ``(B, S, N, 2)``: ``p_t − p_{t−1}``, frame 0 zero."""
    zero = torch.zeros_like(tracks[:, :1])
    return torch.cat([zero, tracks[:, 1:] - tracks[:, :-1]], dim=1)


def acceleration(tracks: torch.Tensor, mode: str = "fvmd-1.0.0") -> torch.Tensor:
    """``(B, S, N, 2)`` -> ``(B, S, N, 2)``, frames 0 and 1 zero. ``"fvmd-1.0.0"``: fvmd's ``calc_acceleration``
    applied to the tracks, ``p_t − p_{t−1}`` (t >= 2); ``"second-difference"``: ``v_t − v_{t−1}`` (the paper)."""
    if mode not in ACCELERATIONS:
        raise ValueError(f"acceleration mode {mode!r}; allowed {ACCELERATIONS}")
    x = tracks if mode == "fvmd-1.0.0" else velocity(tracks)
    zero = torch.zeros_like(x[:, :2])
    return torch.cat([zero, x[:, 2:] - x[:, 1:-1]], dim=1)


# --- fields -> histograms ---------------------------------------------------------------------------------


def motion_histograms(vectors: np.ndarray, settings: MotionFeatures = DEFAULT_FEATURES) -> np.ndarray:
    """Magnitude-weighted orientation histograms of a vector field, float64 ``(B, MS, MH, MW, angle_bins)``.

    vectors: float32 ``(B, S, N, 2)`` on the ``sqrt(N) x sqrt(N)`` grid. Cubes of ``cell_size²`` points x
    ``cube_frames`` frames (the remainder is dropped, as fvmd's ``cut_subcube``). fvmd loops over every
    vector in Python; this bins them all at once. The per-vector arithmetic is fvmd's, in float32 with the
    same operations (so bin edges fall where they fall there), and every weight is a multiple of 1/8, so the
    sums are exact in any order.
    """
    v = np.asarray(vectors)
    if v.ndim != 4 or v.shape[-1] != 2:
        raise ValueError(f"vector field must be (B, S, N, 2), got {v.shape}")
    b, s, n, _ = v.shape
    side = round(math.sqrt(n))
    if side * side != n:
        raise ValueError(f"vector field has {n} points; FVMD's grid is square (sqrt(N) x sqrt(N))")
    cs, cf, bins = settings.cell_size, settings.cube_frames, settings.angle_bins
    ms, mh = s // cf, side // cs
    v = v.reshape(b, s, side, side, 2)[:, : ms * cf, : mh * cs, : mh * cs]  # (B, MS·cf, MH·cs, MW·cs, 2)
    angle = np.arctan2(v[..., 0], v[..., 1])  # fvmd: arctan2(dx, dy)
    angle_bin = np.clip((angle + np.pi) // (2 * np.pi / bins), 0, bins - 1).astype(np.int64)
    mag = np.clip(np.linalg.norm(v, axis=-1), 0, settings.magnitude_bins - 1) + 1
    mag = np.ceil(np.clip(np.log2(mag), 0, int(np.log2(settings.magnitude_bins))))
    weight = mag / np.log2(settings.magnitude_bins)  # float64, multiples of 1/log2(bins)
    # cube index of every vector: (b, t // cf, i // cs, j // cs)
    bi, ti, yi, xi = np.meshgrid(np.arange(b), np.arange(ms * cf) // cf, np.arange(mh * cs) // cs,
                                 np.arange(mh * cs) // cs, indexing="ij")
    cube = ((bi * ms + ti) * mh + yi) * mh + xi
    hist = np.bincount((cube * bins + angle_bin).ravel(), weights=weight.ravel(), minlength=b * ms * mh * mh * bins)
    return hist.reshape(b, ms, mh, mh, bins)


def motion_features(tracks: torch.Tensor, settings: MotionFeatures = DEFAULT_FEATURES) -> np.ndarray:
    """Tracks ``(B, S, N, 2)`` -> FVMD features float64 ``(B, dim)``: velocity then acceleration histograms."""
    if not torch.isfinite(tracks).all():
        bad = (~torch.isfinite(tracks)).flatten(1).any(dim=1).nonzero().flatten().tolist()
        raise ValueError(f"point tracks of clips {bad} contain NaN/inf: the tracker or its input is broken "
                         "(frames too small for its pyramid?)")
    vel = velocity(tracks).cpu().numpy()
    acc = acceleration(tracks, settings.acceleration).cpu().numpy()
    b = tracks.shape[0]
    return np.concatenate([motion_histograms(vel, settings).reshape(b, -1),
                           motion_histograms(acc, settings).reshape(b, -1)], axis=1)


# --- the distance ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FVMDValue:
    """FVMD with its parts: ``value`` (velocity + acceleration features, fvmd's ``fvmd()``), the distances of
    the velocity and the acceleration halves alone (fvmd's ``velocity_fvmd``/``acceleration_fvmd``), and the
    Fréchet numerics of the offset covariances."""

    value: float
    velocity: float
    acceleration: float
    frechet: FrechetResult
    offset: float


def _offset_fd(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray, offset: float,
               cov_error: tuple[float, float]) -> tuple[float, FrechetResult]:
    """fvmd's distance ``FD(μ₁, Σ₁+εI, μ₂, Σ₂+εI) − 2dε`` (module doc, step 4) and the offset FD's numerics."""
    eye = offset * np.eye(len(mu1))
    fd = frechet(mu1, s1 + eye, mu2, s2 + eye, "scipy", cov_error=cov_error)
    return fd.raw - 2 * len(mu1) * offset, fd


def fvmd_distance(real: FeatureStats, fake: FeatureStats, *, offset: float = SQRTM_OFFSET,
                  allow_singular: bool = False) -> FVMDValue:
    """FVMD between the statistics of real and generated features (unbiased covariances, ε-offset root).

    ``allow_singular``: with ``n <= dim`` clips on a side the covariance is singular (fvmd computes anyway,
    the offset keeps the root finite); cmdbench refuses unless asked, as for every Fréchet judge.
    """
    mu1, s1 = real.mean_cov(1, allow_singular=allow_singular)
    mu2, s2 = fake.mean_cov(1, allow_singular=allow_singular)
    err = (real.cov_rounding_error(1), fake.cov_rounding_error(1))
    value, fd = _offset_fd(mu1, s1, mu2, s2, offset, err)
    half = real.dim // 2
    parts = [_offset_fd(mu1[sl], s1[sl, sl], mu2[sl], s2[sl, sl], offset, err)[0]
             for sl in (slice(0, half), slice(half, None))]
    return FVMDValue(float(value), float(parts[0]), float(parts[1]), fd, offset)


# --- the extractor ----------------------------------------------------------------------------------------


def load_tracker(name: str = REAL_NAME, path: str | Path | None = None) -> tuple[pips.Pips, str, str | None]:
    """``(tracker, weights sha256, weights path)``. ``pips2_fvmd``: the released file from ``path`` or
    ``cmdbench weights`` (its sha256 checked; the full unpickler runs only on a known or trusted file);
    ``pips-random`` / ``pips-random-tiny``: seeded random weights (sha256 of the state dict)."""
    from cmdbench.metrics.i3d import state_dict_sha256

    if name in STAND_INS:
        model = pips.random_pips(STAND_INS[name], seed=0)
        return model, state_dict_sha256(model), None
    if name != REAL_NAME:
        raise ValueError(f"unknown FVMD tracker {name!r}; allowed {list(EXTRACTOR_NAMES)}")
    from cmdbench import weights

    if path is None:
        p = weights.require(REAL_NAME)  # verified: known or trusted sha256, else a clear error
        sha = weights.sha256_file(p)
    else:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"PIPs++ weight file {p} does not exist")
        sha = weights.sha256_file(p)
    trusted = sha in weights.accepted_hashes(REAL_NAME)
    state = pips.load_checkpoint(p, trusted_pickle=trusted)
    try:
        model = pips.build_pips(state)
    except ValueError as err:
        raise ValueError(f"PIPs++ weight file {p}: {err}") from None
    return model, sha, str(p)


class MotionFeatureExtractor:
    """uint8 clips ``(B, T, 3, H, W)`` -> FVMD features float64 ``(B, dim)`` (the FVD extractor protocol).

    Frames are resized so the shorter side is ``size`` (torchvision bilinear, antialiased, on uint8, as
    fvmd's loader), tracked, turned into histograms. ``checksum`` identifies the tracker weights *and* the
    feature settings (grid, iterations, bins, acceleration), so statistics of different settings never mix;
    the weight file's own sha256 is ``weights_sha256``.
    """

    def __init__(self, tracker: pips.Pips, *, name: str, weights_sha256: str, weights_path: str | None = None,
                 settings: MotionFeatures = DEFAULT_FEATURES, num_frames: int = 16, size: int = 256,
                 device: str = "cpu", batch_size: int = 1) -> None:
        self.device, self.dtype = torch.device(device), torch.float32
        self.tracker = tracker.to(self.device).eval()
        self.name, self.settings, self.size, self.num_frames = name, settings, size, num_frames
        self.batch_size = batch_size
        self.weights_sha256, self.weights_path = weights_sha256, weights_path
        self.random_weights = name in STAND_INS
        self.preprocessing = Preprocessing(resize="detector", size=size, value_range=(0.0, 255.0), antialias=True)
        self.dim, self.min_frames = settings.dim(num_frames), num_frames
        self.checksum = stable_hash({"weights_sha256": weights_sha256, "features": asdict(settings)}, length=64)

    def resize(self, clips: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, T, 3, H, W)`` -> uint8 ``(B, T, 3, h, w)``, shorter side ``size`` (aspect kept)."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.functional import resize

        b, t = clips.shape[:2]
        out = resize(clips.reshape(b * t, *clips.shape[2:]), self.size, InterpolationMode.BILINEAR, antialias=True)
        return out.reshape(b, t, *out.shape[1:])

    @torch.no_grad()
    def tracks(self, clips: torch.Tensor) -> torch.Tensor:
        """Point tracks float32 ``(B, T, N, 2)`` (pixels of the resized frames) of uint8 clips."""
        validate_video(clips, min_frames=2)
        frames = self.resize(clips).to(self.device).float()  # (B, T, 3, h, w) in 0..255
        b, t, _, h, w = frames.shape
        s = self.settings
        queries = query_grid(h, w, s.num_points, s.margin).to(self.device)
        queries = queries.reshape(1, 1, -1, 2).repeat(b, t, 1, 1)  # zero-velocity initialisation
        out = [self.tracker(queries[i : i + self.batch_size], frames[i : i + self.batch_size], iters=s.iters,
                            beautify=s.beautify) for i in range(0, b, self.batch_size)]
        return torch.cat(out).cpu()

    def extract(self, clips: torch.Tensor) -> np.ndarray:
        """FVMD features float64 ``(B, dim)`` of uint8 clips of exactly ``num_frames`` frames."""
        validate_video(clips)
        if clips.shape[1] != self.num_frames:
            raise ValueError(f"FVMD clips have {self.num_frames} frames; got {clips.shape[1]}")
        return motion_features(self.tracks(clips), self.settings)


def make_motion_extractor(name: str = REAL_NAME, *, path: str | Path | None = None,
                          settings: MotionFeatures = DEFAULT_FEATURES, num_frames: int = 16, size: int = 256,
                          device: str = "cpu", batch_size: int = 1) -> MotionFeatureExtractor:
    """The FVMD extractor of a tracker name (:data:`EXTRACTOR_NAMES`)."""
    tracker, sha, wpath = load_tracker(name, path)
    tracker.check_size(size, size)
    return MotionFeatureExtractor(tracker, name=name, weights_sha256=sha, weights_path=wpath, settings=settings,
                                  num_frames=num_frames, size=size, device=device, batch_size=batch_size)


# --- the metric -------------------------------------------------------------------------------------------


class FVMD(FVD):
    """Streaming FVMD (``reset / update(videos) / compute()``) against real motion-feature statistics.

    It shares FVD's protocol and reference bookkeeping (one clip per video, reference statistics checked
    against protocol, extractor checksum and numerics, ``update_real``, ``all_reduce``, conformance of
    the counts, storage; ``cmdbench ref-stats``/``evaluate`` treat it as a Fréchet judge); the features
    and the distance are fvmd's (module doc).

    extractor: ``pips2_fvmd`` (default), ``pips-random`` / ``pips-random-tiny`` (random stand-ins) or a
        :class:`MotionFeatureExtractor`. num_points / iters / size / acceleration: feature settings (fvmd's
        by default; others make another protocol, named in every row). num_real / num_fake: the counts.
    """

    higher_is_better = False

    def __init__(self, protocol: str | EvalProtocol | None = None, *,
                 reference: FeatureStats | str | Path | None = None, extractor: Any = None,
                 extractor_path: str | Path | None = None, device: str = "cpu", batch_size: int = 1,
                 num_points: int = 400, iters: int = 16, size: int = 256, acceleration: str = "fvmd-1.0.0",
                 num_real: int | None = None, num_fake: int | None = None, strict: bool = True,
                 allow_singular: bool = False, storage: str = IN_MEMORY) -> None:
        if protocol not in (None, PROTOCOL.name) and not isinstance(protocol, EvalProtocol):
            raise ValueError(f"fvmd has one protocol, {PROTOCOL.name!r}; got protocol={protocol!r}")
        settings = replace(DEFAULT_FEATURES, num_points=num_points, iters=iters, acceleration=acceleration)
        p = protocol if isinstance(protocol, EvalProtocol) else PROTOCOL
        p = replace(p, name=protocol_name(settings, size) if p.name == PROTOCOL.name else p.name, size=size,
                    num_real=p.num_real if num_real is None else num_real,
                    num_fake=p.num_fake if num_fake is None else num_fake)
        if extractor is None or isinstance(extractor, str):
            extractor = make_motion_extractor(extractor or p.extractor, path=extractor_path, settings=settings,
                                              num_frames=p.num_frames, size=size, device=device,
                                              batch_size=batch_size)
        super().__init__(p, extractor=extractor, reference=reference, device=device, batch_size=batch_size,
                         strict=strict, allow_singular=allow_singular, storage=storage)
        self.name = "fvmd"

    @property
    def keep_features(self) -> bool:
        return True  # 1024 float64 per clip: kept for sample-size curves and bootstrap spreads

    def describe(self) -> str:
        """One line: protocol, tracker and checksum, clip, grid, histograms, distance (printed and recorded)."""
        p, ex = self.protocol, self.extractor
        s = ex.settings
        return (f"{p.name}: {ex.name} sha256:{ex.weights_sha256[:12]}, {p.num_frames} frames, short side {p.size}, "
                f"{s.side}x{s.side} points, {s.iters} iters, {s.cell_size}x{s.cell_size}x{s.cube_frames} cubes x "
                f"{s.angle_bins} angles, acceleration {s.acceleration}, unbiased covariance, "
                f"scipy sqrtm with +{SQRTM_OFFSET:g}I")

    def weights_verified(self) -> bool | None:
        """Whether the tracker file's sha256 is known or trusted (``None`` for random stand-ins)."""
        from cmdbench import weights

        if self.extractor.random_weights:
            return None
        return self.extractor.weights_sha256 in weights.accepted_hashes(REAL_NAME)

    def compute(self) -> MetricValue:
        real, fake, p = self._real(), self.fake, self.protocol
        conformant = fake.n == p.num_fake and (not p.num_real or real.n == p.num_real)
        if self.strict and not conformant:
            raise InsufficientSamplesError(
                f"fvmd under {p.name!r} takes num_fake={p.num_fake} generated and num_real={p.num_real or 'all'} "
                f"real clips; got {fake.n} and {real.n}. Fréchet distances depend on the counts, so values at "
                "other counts are not comparable; pass strict=False (or num_real/num_fake) to compute it anyway"
            )
        fv = fvmd_distance(real, fake, allow_singular=self.allow_singular)
        ex = self.extractor
        extra: dict[str, Any] = {
            "preset": p.name, "follows": FOLLOWS, "describe": self.describe(),
            "fvmd_velocity": fv.velocity, "fvmd_acceleration": fv.acceleration, "sqrtm_offset": fv.offset,
            "features": asdict(ex.settings), "n_real": real.n, "n_fake": fake.n, "conformant": conformant,
            "protocol_hash": protocol_hash(p), "extractor": ex.name, "extractor_checksum": ex.checksum,
            "weights_sha256": ex.weights_sha256, "weights_path": ex.weights_path,
            "weights_verified": self.weights_verified(), "random_weights": ex.random_weights,
            "num_frames": p.num_frames, "size": p.size, "resize": "short side, bilinear antialias (torchvision)",
            "reference_key": real.metadata.get("stats_key"), "numerics": self.numerics, "storage": self.storage,
            "frechet": fv.frechet.to_dict(),
        }
        return MetricValue(name=self.name, value=fv.value, unit="", higher_is_better=False, std=None, n=fake.n,
                           protocol=p.name, extra=extra)


def protocol_name(settings: MotionFeatures, size: int) -> str:
    """``"fvmd"`` for fvmd's settings, else ``"fvmd[points=25,iters=4,...]"`` naming what differs."""
    diff = {k: v for k, v in asdict(settings).items() if v != getattr(DEFAULT_FEATURES, k)}
    if size != PROTOCOL.size:
        diff["size"] = size
    if not diff:
        return PROTOCOL.name
    return "fvmd[" + ",".join(f"{k}={v}" for k, v in diff.items()) + "]"


FVMD_OPTIONS = ("protocol", "reference", "ref_stats", "extractor", "extractor_path", "device", "batch_size",
                "num_points", "iters", "size", "acceleration", "num_real", "num_fake", "strict", "allow_singular",
                "storage")


def fvmd(protocol: str | None = None, **options: Any) -> FVMD:
    """Registry factory of ``fvmd``; ``ref_stats`` is the CLI spelling of ``reference``."""
    if "ref_stats" in options:
        if "reference" in options:
            raise ValueError("options ref_stats and reference name the same thing; give one")
        options["reference"] = options.pop("ref_stats")
    unknown = sorted(set(options) - set(FVMD_OPTIONS))
    if unknown:
        raise ValueError(f"unknown FVMD option(s) {unknown}; allowed {list(FVMD_OPTIONS)}")
    return FVMD(protocol, **options)


fvmd.options = FVMD_OPTIONS  # type: ignore[attr-defined]  (what `bench --metric-option` accepts)
