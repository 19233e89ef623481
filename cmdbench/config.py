"""Typed, frozen configuration. Every run saves its resolved config beside its records."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from cmdbench.interfaces import DTYPES
from cmdbench.seeding import parse_seeds


@dataclass(frozen=True)
class SamplingConfig:
    """One sampling setting. ``None`` fields take the generator's defaults."""

    num_frames: int | None = None
    height: int | None = None
    width: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    batch_size: int = 1

    def __post_init__(self) -> None:
        for name in ("num_frames", "height", "width", "steps"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"SamplingConfig.{name}={v!r}; allowed: a positive integer or None")
        if self.batch_size < 1:
            raise ValueError(f"SamplingConfig.batch_size={self.batch_size}; allowed: >= 1")


@dataclass(frozen=True)
class TimingConfig:
    """Latency measurement: ``warmup`` untimed calls, then repeat until both minimums are met."""

    warmup: int = 1
    min_repeats: int = 3
    min_seconds: float = 0.0
    max_repeats: int = 100

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.min_repeats < 1 or self.max_repeats < self.min_repeats:
            raise ValueError(f"invalid TimingConfig {self}; need warmup>=0, 1<=min_repeats<=max_repeats")


@dataclass(frozen=True)
class EvalProtocol:
    """Every knob of a Fréchet-distance video protocol (see ``cmdbench.metrics.fvd`` presets).

    value_range: range the extractor's input is scaled to, e.g. (-1.0, 1.0).
    resize: ``"whole"`` (bilinear resize of the whole frame, TF reference) or
        ``"short_side_crop"`` (shorter side to ``size``, centre crop; VideoGPT/PVDM).
    ddof: covariance estimator: 1 = unbiased (TF-GAN), 0 = biased /N (StyleGAN-V).
    sqrtm: ``"svd"`` (TF-GAN symmetric form), ``"eig"`` or ``"scipy"``.
    resize ``"detector"``: the TorchScript detector resizes and rescales uint8 input itself (StyleGAN-V).
    resize_kernel: ``"torch"`` (``F.interpolate`` bilinear, half-pixel) or ``"tf1"`` (TF1 legacy bilinear).
    antialias: antialiased downsampling (torch kernel only). real_order: ``"listed"`` (first N videos,
    StyleGAN-V) or ``"hashed"`` (seeded subset); real clip windows are seeded by ``clip_seed``.
    """

    name: str
    extractor: str = "i3d"
    num_real: int = 2048
    num_fake: int = 2048
    num_frames: int = 16
    frame_stride: int = 1
    size: int = 224
    resize: str = "whole"
    value_range: tuple[float, float] = (-1.0, 1.0)
    ddof: int = 1
    sqrtm: str = "svd"
    clip_seed: int = 0
    resize_kernel: str = "torch"
    antialias: bool = False
    real_order: str = "listed"

    def __post_init__(self) -> None:
        if self.resize not in ("whole", "short_side_crop", "detector"):
            raise ValueError(
                f"EvalProtocol.resize={self.resize!r}; allowed 'whole', 'short_side_crop' or 'detector'"
            )
        if self.ddof not in (0, 1):
            raise ValueError(f"EvalProtocol.ddof={self.ddof}; allowed 0 (biased) or 1 (unbiased)")
        if self.sqrtm not in ("svd", "eig", "scipy"):
            raise ValueError(f"EvalProtocol.sqrtm={self.sqrtm!r}; allowed 'svd', 'eig', 'scipy'")


@dataclass(frozen=True)
class BenchConfig:
    """A benchmark run: generate videos with seeds, measure them, write result rows.

    generator: registry name; checkpoint: ``None`` (random weights) or path/hub id;
    seeds: seed range string, one video per seed; prompts: text prompts cycled over seeds in order
    (``None`` uses the generator's built-in evaluation prompts); labels likewise for classes;
    metrics: metric registry names computed on the generated videos; metric_options: keyword options of
    those metrics' factories, given as a mapping ``{"fvd2048_16f": {"ref_stats": "real.npz", "strict": false}}``
    (JSON scalars as values) and stored canonically as sorted pairs (hashable, part of the run key);
    trackers: cost trackers (``"time"``, ``"memory"``); dataset: name recorded in rows (e.g. the reference set).
    through_codec / codec_crf / codec_pix_fmt: score the videos after an H.264 round trip
    (:func:`cmdbench.video.codec_round_trip`), i.e. exactly the pixels ``sample`` + ``evaluate --videos``
    score; the storage is recorded in every metric row (in-memory uint8 otherwise).
    """

    generator: str
    seeds: str = "0-3"
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    checkpoint: str | None = None
    tiny: bool = False
    device: str = "cpu"
    dtype: str = "float32"
    prompts: tuple[str, ...] | None = None
    labels: tuple[int, ...] | None = None
    metrics: tuple[str, ...] = ()
    metric_options: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    trackers: tuple[str, ...] = ("time", "memory")
    dataset: str = ""
    save_videos: bool = False
    through_codec: bool = False
    codec_crf: int = 18
    codec_pix_fmt: str = "yuv420p"
    notes: str = ""

    def __post_init__(self) -> None:
        parse_seeds(self.seeds)  # raises on a malformed range
        if self.dtype not in DTYPES:
            raise ValueError(f"BenchConfig.dtype={self.dtype!r}; allowed {DTYPES}")
        unknown = set(self.trackers) - {"time", "memory"}
        if unknown:
            raise ValueError(f"unknown trackers {sorted(unknown)}; allowed 'time', 'memory'")
        object.__setattr__(self, "metric_options", canonical_metric_options(self.metric_options, self.metrics))

    def options_for(self, metric: str) -> dict[str, Any]:
        """The factory keyword options given for ``metric`` (empty when none)."""
        return dict(dict(self.metric_options).get(metric, ()))

    @staticmethod
    def from_dict(d: dict[str, Any]) -> BenchConfig:
        d = dict(d)
        allowed = {f.name for f in fields(BenchConfig)}
        extra = set(d) - allowed
        if extra:
            raise ValueError(f"unknown BenchConfig keys {sorted(extra)}; allowed {sorted(allowed)}")
        if isinstance(d.get("sampling"), dict):
            d["sampling"] = SamplingConfig(**d["sampling"])
        for key in ("prompts", "labels", "metrics", "trackers"):
            if isinstance(d.get(key), list):
                d[key] = tuple(d[key])
        return BenchConfig(**d)

    @staticmethod
    def load(path: str | Path) -> BenchConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"bench config {path} does not exist") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"bench config {path} is not valid JSON: {err}") from None
        return BenchConfig.from_dict(data)


OptionPairs = tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]


def _pairs(value: Any, where: str) -> list[tuple[Any, Any]]:
    """A mapping or a sequence of (key, value) pairs (the JSON form of stored pairs) -> list of pairs."""
    if isinstance(value, Mapping):
        return list(value.items())
    if isinstance(value, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in value):
        return [tuple(p) for p in value]
    raise ValueError(f"{where}={value!r}; allowed a mapping (or a list of [key, value] pairs)")


def canonical_metric_options(options: Any, metrics: tuple[str, ...]) -> OptionPairs:
    """``{metric: {key: scalar}}`` (or its stored pair form) -> sorted, hashable nested pairs.

    Options of a metric not in ``metrics`` would be silently unused, so they raise; values must be JSON
    scalars (str, int, float, bool, None) so the config stays hashable and JSON round-trippable.
    """
    if options is None:
        return ()
    out = []
    for metric, opts in _pairs(options, "BenchConfig.metric_options"):
        if metric not in metrics:
            raise ValueError(
                f"BenchConfig.metric_options names metric {metric!r}, which is not in metrics {list(metrics)}"
            )
        pairs = _pairs(opts, f"BenchConfig.metric_options[{metric!r}]")
        for key, val in pairs:
            if not isinstance(key, str) or not key:
                raise ValueError(f"BenchConfig.metric_options[{metric!r}]: option name {key!r} is not a string")
            if val is not None and not isinstance(val, (str, int, float, bool)):
                raise ValueError(
                    f"BenchConfig.metric_options[{metric!r}][{key!r}]={val!r}; allowed a str, number, bool or null"
                )
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            raise ValueError(f"BenchConfig.metric_options[{metric!r}] repeats an option: {keys}")
        out.append((metric, tuple(sorted(pairs))))
    names = [m for m, _ in out]
    if len(set(names)) != len(names):
        raise ValueError(f"BenchConfig.metric_options repeats a metric: {names}")
    return tuple(sorted(out))


def to_jsonable(obj: Any) -> Any:
    """Dataclasses (nested), tuples and paths -> plain JSON values."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return {k: to_jsonable(v) for k, v in asdict(obj).items()}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def stable_hash(obj: Any, length: int = 16) -> str:
    """sha256 of the canonical JSON of ``obj`` (keys sorted), first ``length`` hex digits."""
    blob = json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]
