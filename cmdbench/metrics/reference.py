"""Content-addressed cache of real-set feature statistics, and the guard against mixing protocols.

A statistic is only comparable with another one built the same way. Its cache key is the sha256 of
every protocol field that shapes real features (extractor, frames, stride, size, resize policy and
kernel, antialias, value range, number of real clips, clip order and seed), the extractor's weight
checksum and, when given, the dataset manifest's sha256. The same fields travel inside the ``.npz``
(``FeatureStats.metadata``), so a file passed by hand is checked too: :func:`check_compatible` refuses
statistics built under a different protocol with an error that lists the differing fields.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cmdbench.config import EvalProtocol, stable_hash
from cmdbench.metrics.frechet import FeatureStats

# Fields that decide how one clip becomes a feature vector.
FEATURE_FIELDS = (
    "extractor", "num_frames", "frame_stride", "size", "resize", "resize_kernel", "antialias", "value_range",
)
# ... plus the fields that decide which real clips enter the statistics.
REAL_SET_FIELDS = (*FEATURE_FIELDS, "num_real", "clip_seed", "real_order")
CACHE_SUBDIR = "ref_stats"


class ProtocolMismatchError(ValueError):
    """Statistics were built under a different protocol or extractor than the one asked for."""


def feature_hash(protocol: EvalProtocol, extractor_checksum: str) -> str:
    """Hash of :data:`FEATURE_FIELDS` and the extractor checksum (equal hash = comparable features)."""
    fields = {k: getattr(protocol, k) for k in FEATURE_FIELDS}
    return stable_hash({"fields": fields, "extractor_checksum": extractor_checksum}, length=32)


def stats_key(protocol: EvalProtocol, extractor_checksum: str, manifest_sha256: str | None = None) -> str:
    """Cache key of real-set statistics: :data:`REAL_SET_FIELDS`, extractor checksum, dataset manifest."""
    fields = {k: getattr(protocol, k) for k in REAL_SET_FIELDS}
    return stable_hash(
        {"fields": fields, "extractor_checksum": extractor_checksum, "manifest_sha256": manifest_sha256},
        length=32,
    )


def stats_metadata(
    protocol: EvalProtocol, extractor_checksum: str, *, kind: str, manifest_sha256: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The metadata saved with statistics (``kind``: ``"real"`` or ``"fake"``)."""
    return {
        "kind": kind,
        "protocol": asdict(protocol),
        "extractor_checksum": extractor_checksum,
        "feature_hash": feature_hash(protocol, extractor_checksum),
        "stats_key": stats_key(protocol, extractor_checksum, manifest_sha256),
        "manifest_sha256": manifest_sha256,
        "created_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        **extra,
    }


def check_compatible(stats: FeatureStats, protocol: EvalProtocol, extractor_checksum: str, *,
                     where: str = "reference statistics", check_count: bool = True) -> None:
    """Raise :class:`ProtocolMismatchError` unless ``stats`` were built with these feature settings.

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
    """Real-set statistics stored as ``<root>/<protocol name>-<key>.npz`` (atomic writes)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    def path_for(self, protocol: EvalProtocol, extractor_checksum: str, manifest_sha256: str | None = None) -> Path:
        return self.root / f"{protocol.name}-{stats_key(protocol, extractor_checksum, manifest_sha256)}.npz"

    def get(self, protocol: EvalProtocol, extractor_checksum: str,
            manifest_sha256: str | None = None) -> FeatureStats | None:
        path = self.path_for(protocol, extractor_checksum, manifest_sha256)
        if not path.is_file():
            return None
        stats = FeatureStats.load(path)
        check_compatible(stats, protocol, extractor_checksum, where=f"cached statistics {path}")
        return stats

    def put(self, stats: FeatureStats, protocol: EvalProtocol, extractor_checksum: str,
            manifest_sha256: str | None = None) -> Path:
        check_compatible(stats, protocol, extractor_checksum, where="statistics to cache")
        return stats.save(self.path_for(protocol, extractor_checksum, manifest_sha256))
