"""Content-addressed cache of real-set feature statistics, and the guard against mixing protocols.

A statistic is only comparable with another one built the same way. Its cache key is the sha256 of
every protocol field that shapes real features (extractor, frames, stride, size, resize policy and
kernel, antialias, value range, number of real clips, clip order and seed), the extractor's weight
checksum, the **numerics** the extractor ran under (device class, dtype and, on CUDA, the TF32 flags
and float32 matmul precision: PyTorch enables TF32 convolutions by default on Ampere and later, and TF32
keeps 10 mantissa bits, so convolution outputs move at the 1e-3 relative level) and, when given, the dataset manifest's sha256. The same fields
travel inside the ``.npz`` (``FeatureStats.metadata``), so a file passed by hand is checked too:
:func:`check_compatible` refuses statistics built under a different protocol or different numerics
with an error that lists the differing fields.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from cmdbench.config import EvalProtocol, stable_hash
from cmdbench.metrics.frechet import FeatureStats

# Fields that decide how one clip becomes a feature vector.
FEATURE_FIELDS = (
    "extractor", "num_frames", "frame_stride", "size", "resize", "resize_kernel", "antialias", "value_range",
)
# ... plus the fields that decide which real clips enter the statistics.
REAL_SET_FIELDS = (*FEATURE_FIELDS, "num_real", "clip_seed", "real_order")
CACHE_SUBDIR = "ref_stats"
# The numeric setting features depend on beyond the protocol (see :func:`numerics_of`).
NUMERICS_FIELDS = ("device_class", "dtype", "tf32_matmul", "tf32_cudnn", "float32_matmul_precision")


class ProtocolMismatchError(ValueError):
    """Statistics were built under a different protocol or extractor than the one asked for."""


def numerics_of(device: str | torch.device = "cpu", dtype: str | torch.dtype = torch.float32) -> dict[str, Any]:
    """The numeric setting features are computed under, as a JSON-able dict of :data:`NUMERICS_FIELDS`.

    device_class: ``"cpu"``, ``"cuda"``, ``"mps"`` (the device type; two GPUs of one class give features equal
    to float32 rounding, a CPU and a GPU with TF32 do not). dtype: the extractor's compute dtype.
    tf32_matmul / tf32_cudnn: ``torch.backends.cuda.matmul.allow_tf32`` / ``torch.backends.cudnn.allow_tf32``
    (the flags ``cmdbench.env.capture_environment`` records), only on CUDA (``None`` elsewhere: they change
    nothing there). float32_matmul_precision: ``torch.get_float32_matmul_precision()`` ("highest" keeps fp32).
    """
    device_class = torch.device(device).type
    cuda = device_class == "cuda"
    return {
        "device_class": device_class,
        "dtype": str(dtype).removeprefix("torch."),
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32) if cuda else None,
        "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32) if cuda else None,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }


def extractor_numerics(extractor: Any) -> dict[str, Any]:
    """:func:`numerics_of` an extractor's ``device`` and ``dtype`` (CPU / float32 when it has none)."""
    return numerics_of(getattr(extractor, "device", "cpu"), getattr(extractor, "dtype", torch.float32))


def feature_hash(protocol: EvalProtocol, extractor_checksum: str) -> str:
    """Hash of :data:`FEATURE_FIELDS` and the extractor checksum (equal hash = comparable features)."""
    fields = {k: getattr(protocol, k) for k in FEATURE_FIELDS}
    return stable_hash({"fields": fields, "extractor_checksum": extractor_checksum}, length=32)


def stats_key(protocol: EvalProtocol, extractor_checksum: str, manifest_sha256: str | None = None, *,
              numerics: Mapping[str, Any]) -> str:
    """Cache key of real-set statistics: :data:`REAL_SET_FIELDS`, extractor checksum, numerics, dataset."""
    fields = {k: getattr(protocol, k) for k in REAL_SET_FIELDS}
    return stable_hash(
        {"fields": fields, "extractor_checksum": extractor_checksum, "manifest_sha256": manifest_sha256,
         "numerics": {k: numerics.get(k) for k in NUMERICS_FIELDS}},
        length=32,
    )


def stats_metadata(
    protocol: EvalProtocol, extractor_checksum: str, *, kind: str, numerics: Mapping[str, Any],
    manifest_sha256: str | None = None, **extra: Any,
) -> dict[str, Any]:
    """The metadata saved with statistics (``kind``: ``"real"`` or ``"fake"``)."""
    return {
        "kind": kind,
        "protocol": asdict(protocol),
        "extractor_checksum": extractor_checksum,
        "feature_hash": feature_hash(protocol, extractor_checksum),
        "numerics": {k: numerics.get(k) for k in NUMERICS_FIELDS},
        "stats_key": stats_key(protocol, extractor_checksum, manifest_sha256, numerics=numerics),
        "manifest_sha256": manifest_sha256,
        "created_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        **extra,
    }


def check_compatible(stats: FeatureStats, protocol: EvalProtocol, extractor_checksum: str, *,
                     numerics: Mapping[str, Any], where: str = "reference statistics",
                     check_count: bool = True) -> None:
    """Raise :class:`ProtocolMismatchError` unless ``stats`` were built with these feature settings and
    these ``numerics`` (:func:`numerics_of`: device class, dtype, TF32 flags).

    With ``check_count`` also the real-clip count: ``stats.n`` must equal ``protocol.num_real``
    (``num_real=0`` means "every clip of the reference set" and accepts any count).
    """
    meta = stats.metadata
    if "feature_hash" not in meta:
        raise ProtocolMismatchError(f"{where} carry no protocol metadata; rebuild them with `cmdbench ref-stats`")
    expected = feature_hash(protocol, extractor_checksum)
    if meta["feature_hash"] != expected:
        theirs = meta.get("protocol", {})
        diffs = [
            f"{k}: {_norm(theirs.get(k))!r} (stats) vs {_norm(getattr(protocol, k))!r} (asked)"
            for k in FEATURE_FIELDS
            if _norm(theirs.get(k)) != _norm(getattr(protocol, k))
        ]
        if meta.get("extractor_checksum") != extractor_checksum:
            diffs.append(
                f"extractor checksum: {str(meta.get('extractor_checksum'))[:16]}... (stats) vs "
                f"{extractor_checksum[:16]}... (asked)"
            )
        raise ProtocolMismatchError(
            f"{where} were built under protocol {theirs.get('name')!r}, which differs from "
            f"{protocol.name!r}: {'; '.join(diffs) or 'feature hash differs'}. Refusing to compare; rebuild "
            "them with `cmdbench ref-stats --protocol ...` under the protocol you evaluate with"
        )
    theirs_num = meta.get("numerics")
    ours_num = {k: numerics.get(k) for k in NUMERICS_FIELDS}
    if theirs_num is None:
        raise ProtocolMismatchError(
            f"{where} do not record the numerics they were computed under (device class, dtype, TF32 flags); "
            "rebuild them with `cmdbench ref-stats` so they cannot mix with features computed otherwise"
        )
    if theirs_num != ours_num:
        diffs = [f"{k}: {theirs_num.get(k)!r} (stats) vs {ours_num[k]!r} (here)"
                 for k in NUMERICS_FIELDS if theirs_num.get(k) != ours_num[k]]
        raise ProtocolMismatchError(
            f"{where} were computed under other numerics: {'; '.join(diffs)}. Features from different device "
            "classes, dtypes or TF32 settings differ beyond rounding, so they are not mixed; compute both "
            "sets the same way (rebuild with `cmdbench ref-stats --device ...`, or set the TF32 flags "
            "torch.backends.cuda.matmul.allow_tf32 / torch.backends.cudnn.allow_tf32 to match)"
        )
    if check_count and protocol.num_real and stats.n != protocol.num_real:
        raise ProtocolMismatchError(
            f"{where} hold {stats.n} real clips; protocol {protocol.name!r} uses num_real={protocol.num_real}"
        )


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, (tuple, list)) else v


def default_cache_dir() -> Path:
    """``$CMDBENCH_CACHE/ref_stats`` (the weights cache root when available), else ``~/.cache/cmdbench``."""
    try:
        from cmdbench import weights

        return Path(weights.cache_dir()) / CACHE_SUBDIR
    except ImportError:
        root = os.environ.get("CMDBENCH_CACHE") or Path.home() / ".cache" / "cmdbench"
        return Path(root) / CACHE_SUBDIR


class ReferenceCache:
    """Real-set statistics stored as ``<root>/<protocol name>-<key>.npz`` (atomic writes).

    The key (:func:`stats_key`) includes the numerics, so statistics of a CUDA/TF32 run and of a CPU run
    live side by side and never answer for each other.
    """

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    def path_for(self, protocol: EvalProtocol, extractor_checksum: str, manifest_sha256: str | None = None, *,
                 numerics: Mapping[str, Any]) -> Path:
        key = stats_key(protocol, extractor_checksum, manifest_sha256, numerics=numerics)
        return self.root / f"{protocol.name}-{key}.npz"

    def get(self, protocol: EvalProtocol, extractor_checksum: str, manifest_sha256: str | None = None, *,
            numerics: Mapping[str, Any]) -> FeatureStats | None:
        path = self.path_for(protocol, extractor_checksum, manifest_sha256, numerics=numerics)
        if not path.is_file():
            return None
        stats = FeatureStats.load(path)
        check_compatible(stats, protocol, extractor_checksum, numerics=numerics, where=f"cached statistics {path}")
        return stats

    def put(self, stats: FeatureStats, protocol: EvalProtocol, extractor_checksum: str,
            manifest_sha256: str | None = None, *, numerics: Mapping[str, Any]) -> Path:
        check_compatible(stats, protocol, extractor_checksum, numerics=numerics, where="statistics to cache")
        return stats.save(self.path_for(protocol, extractor_checksum, manifest_sha256, numerics=numerics))
