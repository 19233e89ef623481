"""Fréchet Video Distance: named protocol presets and the streaming FVD metric.

FVD = Fréchet distance between Gaussians fitted to I3D features (400 Kinetics logits averaged over time)
of real and generated clips (Unterthiner et al. 2019). Published numbers disagree because
implementations differ in every knob, so each preset states all of them (``EvalProtocol``):

============ ========================== ================================ ========== ====== ==========================
preset       weight file                frames -> 224x224 in [-1, 1]     covariance sqrt   follows
============ ========================== ================================ ========== ====== ==========================
videogpt     i3d_pretrained_400 (PyTorch short side to 224 (bilinear),    unbiased   svd    VideoGPT / PVDM code =
(default)    port of the TF-Hub I3D,    centre crop                      (n-1)             CMD's released evaluation
             BatchNorm eps 1e-5)                                                            (the reproduction default)
stylegan-v   i3d_torchscript (TF-Hub    uint8 into the detector, which   biased     scipy  StyleGAN-V's metric code
             graph, BatchNorm eps 1e-3) stretches the whole frame        (/N)              (the protocol the paper
                                        (``rescale=True, resize=True``)                     *cites*; not its release)
tf-reference i3d_torchscript            whole frame, TF1 bilinear        n-1        svd    TF-hub FVD (Unterthiner)
tats         i3d_pretrained_400         whole frame, torch bilinear      n-1        svd    TATS
============ ========================== ================================ ========== ====== ==========================

Which preset reproduces CMD (the choice, and its source). The paper (§4.1, App. D) says it follows "the
recently fixed evaluation protocol proposed by StyleGAN-V": one random clip per video, 2,048 real and
2,048 generated clips. That is the *clip protocol* (which clips, how many), and every preset here follows it
through the protocol-named metrics below. The *feature and distance code* CMD ran is in its release:
NVlabs/CMD ``eval/fvd/fvd.py`` and ``eval/fvd/pytorch_i3d.py`` are PVDM's ``evals/fvd`` files (sihyun-yu/PVDM,
MIT; read for this choice, nothing copied): ``i3d_pretrained_400.pt`` in a PyTorch InceptionI3d with
BatchNorm eps 1e-5, shorter side resized to 224 and centre-cropped, values in [-1, 1], unbiased (n-1)
covariance, TF-GAN's SVD matrix square root. That is the ``videogpt`` preset, so it is
:data:`DEFAULT_PRESET` (``cmdbench ref-stats``, ``evaluate``, ``reproduce``). It differs from ``stylegan-v``
in the weight file (TF graph, BatchNorm eps 1e-3), the estimator (/N), the square root (scipy ``sqrtm``)
and the aspect handling, which matters for CMD's 512x1024 videos (stretched to 224x224 vs a centre
512x512 crop). Pick the other with ``--protocol stylegan-v`` (``ref-stats``/``evaluate``) or
``--fvd-preset stylegan-v`` (``reproduce``). Known remaining differences from the release: statistics here
are float64 (the release computes the covariance and square root in float32), every eigenvalue is rooted
(TF-GAN leaves those below 1e-10 unrooted), and the release truncates generated frames to uint8
(``((1 + x) * 127.5).type(torch.uint8)``) where cmdbench generators round.

Protocol-named metrics fix the sample counts (``fvd2048_16f``: 2048 real / 2048 fake, 16 consecutive
frames; ``fvd2048_128f``; ``fvd2048_128f_subsample8f``: 16 frames every 8th; ``fvd10k_16f``: 10,000 fake
against every clip of the reference set; ``fvd5k_16f``: WebVid's 5,000 validation clips); each can be
computed under any preset. Generated videos give their first clip (frames ``0, s, 2s, ...``); real clips
are drawn by ``cmdbench ref-stats`` (seeded windows). Every value records its preset, weight file and
checksum, covariance estimator, square root, the numerics the features were computed under, how the
generated videos were stored (in memory or through a codec), and the Fréchet rounding note
(:func:`describe`, ``MetricValue.extra``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from cmdbench.config import EvalProtocol, stable_hash
from cmdbench.interfaces import MetricValue
from cmdbench.metrics.frechet import (
    FeatureStats,
    GaussianStats,
    InsufficientSamplesError,
    bootstrap_fd,
    stats_frechet,
)
from cmdbench.metrics.i3d import FeatureExtractor, make_extractor
from cmdbench.metrics.preprocess import Preprocessing, select_frames
from cmdbench.metrics.reference import check_compatible, extractor_numerics, stats_metadata
from cmdbench.video import IN_MEMORY, validate_video

# The preset the reproduction and the CLI default to: CMD's released evaluation code (see the module doc).
DEFAULT_PRESET = "videogpt"

PRESETS: dict[str, EvalProtocol] = {
    "videogpt": EvalProtocol(
        name="videogpt", extractor="i3d_pretrained_400", resize="short_side_crop", resize_kernel="torch",
        value_range=(-1.0, 1.0), size=224, num_frames=16, frame_stride=1, ddof=1, sqrtm="svd",
    ),
    "stylegan-v": EvalProtocol(
        name="stylegan-v", extractor="i3d_torchscript", resize="detector", value_range=(-1.0, 1.0),
        size=224, num_frames=16, frame_stride=1, ddof=0, sqrtm="scipy", real_order="listed",
    ),
    "tf-reference": EvalProtocol(
        name="tf-reference", extractor="i3d_torchscript", resize="whole", resize_kernel="tf1",
        value_range=(-1.0, 1.0), size=224, num_frames=16, frame_stride=1, ddof=1, sqrtm="svd",
    ),
    "tats": EvalProtocol(
        name="tats", extractor="i3d_pretrained_400", resize="whole", resize_kernel="torch",
        value_range=(-1.0, 1.0), size=224, num_frames=16, frame_stride=1, ddof=1, sqrtm="svd",
    ),
}

# What each preset follows, and its weight file, in words (printed and recorded with every value).
PRESET_SOURCES: dict[str, str] = {
    "videogpt": "VideoGPT/PVDM FVD code, as in CMD's release (reproduction default)",
    "stylegan-v": "StyleGAN-V metric code (the protocol CMD's paper cites)",
    "tf-reference": "TF-hub FVD reference (Unterthiner et al.)",
    "tats": "TATS FVD code",
}
WEIGHT_FILES: dict[str, str] = {
    "i3d_pretrained_400": "i3d_pretrained_400.pt (PyTorch port of the TF-Hub I3D, BatchNorm eps 1e-5)",
    "i3d_torchscript": "i3d_torchscript.pt (StyleGAN-V's TorchScript of the TF-Hub graph, BatchNorm eps 1e-3)",
}

# name -> (num_real (0 = every clip of the reference set), num_fake, num_frames, frame_stride)
PROTOCOL_METRICS: dict[str, tuple[int, int, int, int]] = {
    "fvd2048_16f": (2048, 2048, 16, 1),
    "fvd2048_128f": (2048, 2048, 128, 1),
    "fvd2048_128f_subsample8f": (2048, 2048, 16, 8),
    "fvd10k_16f": (0, 10_000, 16, 1),
    "fvd5k_16f": (5000, 5000, 16, 1),
}


def estimator_name(ddof: int) -> str:
    """``"unbiased (n-1)"`` or ``"biased (/N)"``: the covariance estimator of a protocol."""
    return {0: "biased (/N)", 1: "unbiased (n-1)"}[ddof]


def describe(protocol: EvalProtocol, extractor_name: str | None = None, checksum: str | None = None) -> str:
    """One line naming preset, weight file (and checksum), estimator, square root and resize of a protocol,
    e.g. ``"videogpt: i3d_pretrained_400 sha256:55095f049e70, unbiased (n-1) covariance, svd sqrt,
    short_side_crop 224"`` -- printed beside every FVD value and stored in its record."""
    name = extractor_name or protocol.extractor
    weights = f"{name} sha256:{checksum[:12]}" if checksum else name
    return (f"{protocol.name}: {weights}, {estimator_name(protocol.ddof)} covariance, {protocol.sqrtm} sqrt, "
            f"{protocol.resize} {protocol.size}")


def get_protocol(preset: str | EvalProtocol, metric: str | None = None) -> EvalProtocol:
    """A preset by name (or as given), with the counts and frames of a protocol-named ``metric``."""
    if isinstance(preset, EvalProtocol):
        protocol = preset
    else:
        if preset not in PRESETS:
            raise ValueError(f"unknown FVD preset {preset!r}; allowed {sorted(PRESETS)}")
        protocol = PRESETS[preset]
    if metric is not None:
        if metric not in PROTOCOL_METRICS:
            raise ValueError(f"unknown FVD metric {metric!r}; allowed {sorted(PROTOCOL_METRICS)}")
        num_real, num_fake, frames, stride = PROTOCOL_METRICS[metric]
        protocol = replace(protocol, num_real=num_real, num_fake=num_fake, num_frames=frames, frame_stride=stride)
    return protocol


def preprocessing_of(protocol: EvalProtocol) -> Preprocessing:
    return Preprocessing(resize=protocol.resize, size=protocol.size, value_range=tuple(protocol.value_range),
                         kernel=protocol.resize_kernel, antialias=protocol.antialias)


def protocol_hash(protocol: EvalProtocol) -> str:
    """Hash of every protocol field (the ``config_hash`` ingredient of result rows)."""
    return stable_hash(asdict(protocol), length=16)


def build_extractor(
    protocol: EvalProtocol,
    extractor: FeatureExtractor | str | None = None,
    *,
    path: str | Path | None = None,
    device: str = "cpu",
    batch_size: int = 8,
) -> tuple[EvalProtocol, FeatureExtractor]:
    """The protocol's extractor (or the one given by name/object); returns the protocol naming it."""
    if extractor is None or isinstance(extractor, str):
        name = extractor or protocol.extractor
        ex = make_extractor(name, preprocessing_of(protocol), path=path, device=device, batch_size=batch_size)
    else:
        ex = extractor
        if ex.preprocessing != preprocessing_of(protocol):
            raise ValueError(
                f"extractor {ex.name!r} preprocesses with {ex.preprocessing}, protocol {protocol.name!r} "
                f"asks for {preprocessing_of(protocol)}"
            )
    return replace(protocol, extractor=ex.name), ex


def clip_of(videos: torch.Tensor, protocol: EvalProtocol) -> torch.Tensor:
    """The protocol's clip of each video: ``num_frames`` frames at ``frame_stride`` from frame 0."""
    return select_frames(videos, protocol.num_frames, protocol.frame_stride)


class FVD:
    """Streaming FVD (``reset / update(videos) / compute() -> MetricValue``) against reference statistics.

    protocol: a preset name or :class:`EvalProtocol`; ``metric`` (e.g. ``"fvd2048_16f"``) fixes counts
        and frames. reference: real statistics (:class:`FeatureStats` or an ``.npz`` path from
        ``cmdbench ref-stats``), checked against the protocol; or accumulate real clips with
        :meth:`update_real`. extractor: a name (``"i3d-random-tiny"`` for CPU tests) or an object.
    strict: ``compute`` refuses a fake count different from ``num_fake`` (and real from ``num_real``);
        with ``strict=False`` the value is computed and marked ``conformant=False``.
    bootstrap_rounds: > 0 keeps per-clip features and reports the bootstrap std (no extra passes).
    storage: how the generated videos reached :meth:`update` (:data:`cmdbench.video.IN_MEMORY`, or
        :func:`cmdbench.video.mp4_storage` / :func:`~cmdbench.video.storage_of` for decoded files), recorded
        in ``extra["storage"]``: the same seeds give another FVD through a lossy codec.
    """

    unit = ""
    higher_is_better = False

    def __init__(
        self,
        protocol: str | EvalProtocol = DEFAULT_PRESET,
        *,
        metric: str | None = None,
        reference: FeatureStats | str | Path | None = None,
        extractor: FeatureExtractor | str | None = None,
        extractor_path: str | Path | None = None,
        device: str = "cpu",
        batch_size: int = 8,
        strict: bool = True,
        bootstrap_rounds: int = 0,
        bootstrap_seed: int = 0,
        allow_singular: bool = False,
        storage: str = IN_MEMORY,
    ) -> None:
        base = get_protocol(protocol, metric)
        self.protocol, self.extractor = build_extractor(base, extractor, path=extractor_path, device=device,
                                                        batch_size=batch_size)
        self.name = metric or f"fvd_{self.protocol.name}"
        self.strict, self.allow_singular = strict, allow_singular  # (before set_reference: it reads strict)
        self.bootstrap_rounds, self.bootstrap_seed = bootstrap_rounds, bootstrap_seed
        self.storage = storage  # how the generated videos reached update(): IN_MEMORY or cmdbench.video.mp4_storage
        self.reference: FeatureStats | None = None
        if reference is not None:
            self.set_reference(reference)
        self.reset()

    @property
    def protocol_name(self) -> str:
        return self.protocol.name

    @property
    def keep_features(self) -> bool:
        return self.bootstrap_rounds > 0

    @property
    def numerics(self) -> dict[str, Any]:
        """Device class, dtype and TF32 flags the extractor computes under (:func:`extractor_numerics`)."""
        return extractor_numerics(self.extractor)

    def describe(self) -> str:
        """:func:`describe` of this metric's protocol and extractor (with the weight file's checksum)."""
        return describe(self.protocol, self.extractor.name, self.extractor.checksum)

    def new_stats(self, kind: str, manifest_sha256: str | None = None) -> FeatureStats:
        meta = stats_metadata(self.protocol, self.extractor.checksum, kind=kind, manifest_sha256=manifest_sha256,
                              numerics=self.numerics, extractor=self.extractor.name)
        return FeatureStats(self.extractor.dim, keep_features=self.keep_features, metadata=meta)

    def reset(self) -> None:
        """Forget the generated videos seen so far (the reference statistics stay)."""
        self.fake = self.new_stats("fake")
        self.real_accum: FeatureStats | None = None

    def set_reference(self, reference: FeatureStats | GaussianStats | str | Path) -> None:
        """Use precomputed real statistics (a :class:`FeatureStats`, a (mu, sigma) :class:`GaussianStats`, or an
        ``.npz`` path from ``cmdbench ref-stats``); they must come from the same protocol and extractor."""
        from_file = isinstance(reference, (str, Path))
        stats = FeatureStats.load(reference) if from_file else reference
        where = f"reference statistics {reference}" if from_file else "reference statistics"
        check_compatible(stats, self.protocol, self.extractor.checksum, numerics=self.numerics, where=where,
                         check_count=self.strict)
        self.reference = stats

    def features(self, clips: torch.Tensor) -> torch.Tensor:
        """float64 features ``(B, dim)`` of uint8 clips ``(B, num_frames, 3, H, W)`` (already cut)."""
        validate_video(clips)
        if clips.shape[1] != self.protocol.num_frames:
            raise ValueError(
                f"clips have {clips.shape[1]} frames; protocol {self.protocol.name!r} takes exactly "
                f"{self.protocol.num_frames} (use update() to cut the clip from whole videos)"
            )
        return torch.from_numpy(self.extractor.extract(clips))

    def update(self, videos: torch.Tensor, prompts: Sequence[str] | None = None) -> None:
        """Add generated videos uint8 ``(B, T, 3, H, W)``: their first protocol clip (frames 0, s, 2s, ...).

        ``prompts`` are ignored (FVD does not look at conditions).
        """
        self.fake.update(self.features(clip_of(videos, self.protocol)))

    def update_clips(self, clips: torch.Tensor, *, real: bool = False) -> None:
        """Add clips already cut to the protocol's frames (e.g. from a ``ClipDataset``), fake or real."""
        feats = self.features(clips)
        if not real:
            self.fake.update(feats)
            return
        if self.real_accum is None:
            self.real_accum = self.new_stats("real")
        self.real_accum.update(feats)

    def update_real(self, videos: torch.Tensor) -> None:
        """Add real videos uint8 ``(B, T, 3, H, W)`` (their first protocol clip) to statistics kept here."""
        self.update_clips(clip_of(videos, self.protocol), real=True)

    def all_reduce(self, group: Any = None) -> None:
        """Sum the generated (and locally accumulated real) statistics over ``torch.distributed`` ranks.

        Call once on every rank before :meth:`compute`; each rank then holds the statistics of all clips.
        """
        self.fake.all_reduce(group)
        if self.real_accum is not None:
            self.real_accum.all_reduce(group)

    def _real(self) -> FeatureStats:
        if self.reference is not None and self.real_accum is not None:
            raise ValueError("both reference statistics and update_real() clips were given; use one")
        real = self.reference if self.reference is not None else self.real_accum
        if real is None:
            raise ValueError(f"{self.name}: no real statistics; pass reference=... or call update_real()")
        return real

    def compute(self) -> MetricValue:
        real, fake, p = self._real(), self.fake, self.protocol
        conformant = fake.n == p.num_fake and (not p.num_real or real.n == p.num_real)
        if self.strict and not conformant:
            raise InsufficientSamplesError(
                f"{self.name} under protocol {p.name!r} takes num_fake={p.num_fake} generated clips and "
                f"num_real={p.num_real or 'all'} real clips; got {fake.n} and {real.n}. FVD is biased by the "
                "sample count, so values at other counts are not comparable; pass strict=False to compute "
                "it anyway (recorded as conformant=False)"
            )
        fd = stats_frechet(real, fake, ddof=p.ddof, method=p.sqrtm, allow_singular=self.allow_singular)
        value = fd.value
        std = None
        extra: dict[str, Any] = {
            "preset": p.name, "follows": PRESET_SOURCES.get(p.name, "custom protocol"), "describe": self.describe(),
            "n_real": real.n, "n_fake": fake.n, "conformant": conformant, "protocol_hash": protocol_hash(p),
            "extractor": self.extractor.name, "extractor_checksum": self.extractor.checksum,
            "weight_file": WEIGHT_FILES.get(self.extractor.name, self.extractor.name),
            "weights_path": getattr(self.extractor, "weights_path", None),
            "weights_verified": _weights_verified(self.extractor.name, self.extractor.checksum),
            "estimator": estimator_name(p.ddof), "ddof": p.ddof, "sqrtm": p.sqrtm, "num_frames": p.num_frames,
            "frame_stride": p.frame_stride, "resize": p.resize, "resize_kernel": p.resize_kernel,
            "value_range": list(p.value_range), "reference_key": real.metadata.get("stats_key"),
            "numerics": self.numerics, "storage": self.storage, "frechet": fd.to_dict(),
        }
        if self.bootstrap_rounds:
            if real.bank is None or fake.bank is None or not len(real.bank) or not len(fake.bank):
                raise ValueError("bootstrap needs per-clip features of both sets (build the reference with "
                                 "--keep-features / keep_features=True)")
            _, std = bootstrap_fd(real.bank.array(), fake.bank.array(), self.bootstrap_rounds,
                                  self.bootstrap_seed, ddof=p.ddof, method=p.sqrtm,
                                  allow_singular=self.allow_singular)
            extra.update(bootstrap_rounds=self.bootstrap_rounds, bootstrap_seed=self.bootstrap_seed)
        return MetricValue(name=self.name, value=value, unit=self.unit, higher_is_better=False, std=std,
                           n=fake.n, protocol=p.name, extra=extra)


def _weights_verified(name: str, checksum: str) -> bool | None:
    """Whether ``checksum`` is a known sha256 of the weight file ``name`` (``None``: not a known file)."""
    from cmdbench import weights

    if name not in weights.KNOWN:  # random or custom extractors
        return None
    return checksum in weights.accepted_hashes(name)
