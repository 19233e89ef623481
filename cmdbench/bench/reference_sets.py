"""Real-set FVD statistics of a registered dataset under a protocol: computed once, sharded, cached.

The real clips follow the protocol (frames, stride, clip seed, real order, number of real clips;
``num_real = 0`` takes one clip of every usable video) and the dataset's own frame size (e.g. UCF-101
at 64x64, the generated resolution, so real and fake clips take the same path into the extractor).
The cache key (``cmdbench.metrics.reference``) combines every protocol field, the extractor checksum
and a data key: the dataset manifest's sha256 plus the clip settings. A second call with the same
inputs loads the cached ``.npz`` and runs no network pass.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cmdbench.bench.sharded import Shard, sharded_stats
from cmdbench.config import EvalProtocol, stable_hash
from cmdbench.data.clips import ClipDataset, ClipSpec, iter_clips, make_loader
from cmdbench.metrics.frechet import FeatureStats
from cmdbench.metrics.reference import ReferenceCache, stats_key
from cmdbench.registry import DATASETS, load_plugins

# Frame size real clips are brought to before the extractor, per dataset (the paper's generated size).
DEFAULT_REAL_SIZE: dict[str, tuple[int, int] | None] = {"ucf101": (64, 64), "webvid": (512, 1024), "folder": None}


def clip_spec_for(protocol: EvalProtocol, size: tuple[int, int] | None) -> ClipSpec:
    """The real-clip plan a protocol asks for."""
    return ClipSpec(num_frames=protocol.num_frames, stride=protocol.frame_stride, size=size,
                    seed=protocol.clip_seed, num_clips=protocol.num_real or None, order=protocol.real_order)


def open_real_dataset(name: str, root: str | Path, protocol: EvalProtocol, *, size: tuple[int, int] | None = None,
                      policy: str = "strict", **options: Any) -> ClipDataset:
    """A registered video dataset opened with the protocol's clip plan."""
    load_plugins()
    if name == "msrvtt":
        raise ValueError("msrvtt provides captions only (CLIPSIM); it has no videos for FVD statistics")
    factory = DATASETS.get(name)
    if size is None:
        size = DEFAULT_REAL_SIZE.get(name)
    return factory(root, clip=clip_spec_for(protocol, size), policy=policy, **options)


def data_key(dataset: ClipDataset) -> str:
    """sha256-based key of the files and clip settings behind the real statistics."""
    return stable_hash({"dataset": dataset.name, "manifest": dataset.manifest.sha256, "clip": asdict(dataset.clip)},
                       length=64)


@dataclass
class RealStats:
    stats: FeatureStats
    cached: bool
    path: Path | None
    clips_planned: int
    clips_used: int
    report: dict[str, Any] = field(default_factory=dict)


def real_statistics(
    dataset: ClipDataset,
    fvd: Any,
    *,
    cache: ReferenceCache | None = None,
    work_dir: str | Path | None = None,
    batch_size: int = 16,
    num_workers: int = 2,
    chunk_size: int = 256,
    shard: Shard | None = None,
) -> RealStats:
    """Real statistics of ``dataset`` for an :class:`cmdbench.metrics.fvd.FVD` metric ``fvd``.

    Loads them from ``cache`` when present (no network pass); otherwise extracts features of every planned
    clip, sharded over processes with chunk checkpoints in ``work_dir``, and stores them in ``cache``.
    The clips are already cut to the protocol's frames, so they go to the extractor directly.
    """
    protocol, extractor = fvd.protocol, fvd.extractor
    key = data_key(dataset)
    shard = shard or Shard.current()
    if cache is not None:
        hit = cache.get(protocol, extractor.checksum, key)
        if hit is not None:
            return RealStats(hit, True, cache.path_for(protocol, extractor.checksum, key), len(dataset), hit.n,
                             dataset.report.to_dict())

    def produce(items):
        feats, done = [], []
        for batch in iter_clips(dataset, make_loader(dataset, batch_size=batch_size, num_workers=num_workers,
                                                     indices=items)):
            if batch.videos is not None:
                feats.append(extractor.extract(batch.videos))  # (b, dim) float64
                done.extend(batch.indices)
        return {"fvd": np.concatenate(feats) if feats else np.zeros((0, extractor.dim))}, done

    tag = stats_key(protocol, extractor.checksum, key)
    wd = Path(work_dir) / f"real-{tag[:16]}" if work_dir is not None else None
    merged, done = sharded_stats(len(dataset), produce, {"fvd": extractor.dim}, tag=tag, work_dir=wd,
                                 chunk_size=chunk_size, shard=shard, keep_features=True)
    stats = fvd.new_stats("real", manifest_sha256=key)
    if stats.bank is None:  # keep per-clip features anyway: the bootstrap spread needs them
        stats = FeatureStats(extractor.dim, keep_features=True, metadata=stats.metadata)
    stats.merge(merged["fvd"])
    stats.metadata.update(dataset=dataset.name, clips_planned=len(dataset), clips_used=len(done),
                          data_report=dataset.report.summary())
    path = None
    if cache is not None and shard.rank == 0:
        if protocol.num_real and stats.n != protocol.num_real:
            raise ValueError(
                f"{dataset.name}: {stats.n} real clips entered the statistics, protocol {protocol.name!r} needs "
                f"{protocol.num_real}; {len(dataset) - stats.n} planned clips failed to decode "
                f"({dataset.report.summary()}). Fix or remove those files (listed in the run record)"
            )
        path = cache.put(stats, protocol, extractor.checksum, key)
    return RealStats(stats, False, path, len(dataset), len(done), dataset.report.to_dict())


def parse_size(text: str | None) -> tuple[int, int] | None:
    """``"64"`` -> (64, 64); ``"512x1024"`` -> (512, 1024); None stays None."""
    if text is None:
        return None
    try:
        parts = [int(v) for v in str(text).lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise ValueError(f"size {text!r}; allowed N or HxW with positive integers, e.g. 64 or 512x1024")
    return parts[0], parts[1]


def ref_stats_for_dataset(args: Any, protocol: EvalProtocol, extractor: Any, cache: ReferenceCache) -> int:
    """``cmdbench ref-stats --dataset ucf101|webvid --root ...``: sharded, resumable, cached; prints the path.

    ``args`` carries ``dataset, root, size, policy, batch_size, num_workers, work_dir, force, out`` and the
    dataset options ``split, fold, webvid_csv`` (those it has). Cached statistics built under another
    protocol are never mixed in: the cache key and the chunk tags name every protocol field.
    """
    from cmdbench.metrics.fvd import FVD

    if not getattr(args, "root", None):
        raise ValueError(f"--dataset {args.dataset} needs --root (the dataset directory)")
    options: dict[str, Any] = {}
    if args.dataset == "ucf101":
        options.update(split=getattr(args, "split", None) or "train", fold=getattr(args, "fold", None) or 1)
    if args.dataset == "webvid" and getattr(args, "webvid_csv", None):
        options["csv_path"] = args.webvid_csv
    if args.dataset == "webvid" and protocol.num_real:
        options["limit"] = protocol.num_real
    fvd = FVD(protocol, extractor=extractor, strict=False)
    dataset = open_real_dataset(args.dataset, args.root, protocol, size=parse_size(getattr(args, "size", None)),
                                policy=getattr(args, "policy", "strict"), **options)
    result = real_statistics(dataset, fvd, cache=None if getattr(args, "force", False) else cache,
                             work_dir=getattr(args, "work_dir", None), batch_size=args.batch_size,
                             num_workers=getattr(args, "num_workers", 2), chunk_size=getattr(args, "chunk_size", 256))
    if not result.cached and getattr(args, "force", False) and Shard.current().rank == 0:
        result.path = cache.put(result.stats, protocol, extractor.checksum, data_key(dataset))
    if Shard.current().rank == 0:
        print(f"{'cached' if result.cached else 'computed'}: {result.stats.n} real clips of {args.dataset} "
              f"({dataset.report.summary()}), protocol {protocol.name!r}, extractor {extractor.name} -> {result.path}")
        if dataset.report.skipped:
            for s in dataset.report.skipped:
                print(f"  skipped {s.source}: {s.reason} [{s.stage}]")
        if getattr(args, "out", None):
            print(f"written: {result.stats.save(args.out)}")
    return 0
