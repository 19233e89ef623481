"""Real-set FVD statistics of a dataset under a protocol: computed once, sharded, resumable, cached.

One code path for every real set (``cmdbench ref-stats --videos DIR`` is the ``folder`` dataset,
``--dataset ucf101|webvid`` the registered ones, ``cmdbench evaluate --real DIR`` and the reproductions
call :func:`real_statistics` too). The real clips follow the protocol (frames, stride, clip seed, real
order, number of real clips, one clip per video; ``num_real = 0`` takes one clip of every usable video)
and the dataset's own frame size (e.g. UCF-101 at 64x64, the generated resolution, so real and fake clips
take the same path into the extractor; a folder keeps its native size). The cache key
(``cmdbench.metrics.reference``) combines every protocol field, the extractor checksum, the numerics the
extractor runs under and a data key: the dataset manifest's sha256 plus the clip settings. A second call
with the same inputs loads the cached ``.npz`` and runs no network pass.

Bad input under the ``skip`` policy: every skipped video is named with its reason and stage (index,
probe, decode) on screen and in the ``.npz`` metadata (``skipped``), including clips skipped in an
earlier, interrupted run. Statistics whose count does not add up (an item counted twice, or lost) are
refused before they can be cached.

Which real videos (UCF-101). Its split files are sorted by class, so StyleGAN-V's "first N listed" would
take 2,048 clips of about 20 of the 101 classes. For ``ucf101`` the default order is therefore ``hashed``
(a seeded hash of the video id: every class in proportion, in expectation); ``listed`` stays available,
and a plan that covers less than :data:`MIN_CLASS_COVERAGE` of the dataset's classes is refused unless
the caller allows it (``--allow-few-classes``), and warned about when it covers fewer than all.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmdbench.bench.sharded import Shard, sharded_stats
from cmdbench.config import EvalProtocol, stable_hash
from cmdbench.data.clips import ClipDataset, ClipSpec, iter_clips, make_loader
from cmdbench.metrics.frechet import FeatureStats
from cmdbench.metrics.reference import ReferenceCache, stats_key
from cmdbench.registry import DATASETS, load_plugins

# Frame size real clips are brought to before the extractor, per dataset (the paper's generated size).
DEFAULT_REAL_SIZE: dict[str, tuple[int, int] | None] = {"ucf101": (64, 64), "webvid": (512, 1024), "folder": None}
# Real-clip order per dataset when the caller names none (see the module doc); others take the protocol's.
DEFAULT_REAL_ORDER: dict[str, str] = {"ucf101": "hashed"}
# A class-labelled real set whose plan covers less than this fraction of its classes is refused.
MIN_CLASS_COVERAGE = 0.5


class ClassCoverageError(ValueError):
    """The planned real clips cover too few of the dataset's classes to stand for it."""


def clip_spec_for(protocol: EvalProtocol, size: tuple[int, int] | None) -> ClipSpec:
    """The real-clip plan a protocol asks for."""
    return ClipSpec(num_frames=protocol.num_frames, stride=protocol.frame_stride, size=size,
                    seed=protocol.clip_seed, num_clips=protocol.num_real or None, order=protocol.real_order)


def open_real_dataset(name: str, root: str | Path, protocol: EvalProtocol, *, size: tuple[int, int] | None = None,
                      policy: str = "strict", **options: Any) -> ClipDataset:
    """A registered video dataset opened with the protocol's clip plan."""
    import cmdbench.data.datasets  # noqa: F401  (the built-in datasets, without importing every generator)

    if name not in DATASETS:
        load_plugins()  # third-party datasets; raises with close matches when still unknown
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


def class_coverage(dataset: ClipDataset) -> tuple[int, int] | None:
    """(classes among the planned clips, classes among the usable videos) of a class-labelled dataset;
    ``None`` when its videos carry no integer labels (captions, folders)."""
    labels = [src.condition for src, _ in dataset.usable]
    if not labels or not all(isinstance(c, int) for c in labels):
        return None
    return len({p.source.condition for p in dataset.plan}), len(set(labels))


def check_class_coverage(dataset: ClipDataset, *, allow_few_classes: bool = False) -> str | None:
    """Refuse (:class:`ClassCoverageError`) a plan covering < :data:`MIN_CLASS_COVERAGE` of the classes
    unless allowed; return a warning when it covers fewer than all of them, else ``None``."""
    cov = class_coverage(dataset)
    if cov is None or cov[0] == cov[1]:
        return None
    covered, total = cov
    text = (f"{dataset.name}: the {len(dataset)} planned real clips ({dataset.clip.order} order) cover {covered} of "
            f"{total} classes")
    if covered < MIN_CLASS_COVERAGE * total and not allow_few_classes:
        raise ClassCoverageError(
            f"{text}: the split is sorted by class, so the first clips listed stand for a few classes only. Use "
            "--order hashed (seeded, every class in proportion; the default for ucf101), or pass "
            "--allow-few-classes to keep this order (recorded with the statistics)"
        )
    return f"warning: {text}; FVD against these statistics measures those classes only"


@dataclass
class RealStats:
    stats: FeatureStats
    cached: bool
    path: Path | None
    clips_planned: int
    clips_used: int
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def skipped(self) -> list[dict[str, str]]:
        """Every video left out, ``{"source", "reason", "stage"}`` (also in ``stats.metadata["skipped"]``)."""
        return list(self.stats.metadata.get("skipped", []))


def clip_batches(dataset: ClipDataset, batch_size: int, *, indices: Sequence[int] | None = None,
                 num_workers: int = 0) -> Iterator[tuple[torch.Tensor, list[int], dict[int, str]]]:
    """Batches of equal-sized uint8 clips ``(B, T, 3, H, W)`` of ``indices`` (all by default), in plan order,
    with their plan indices and ``{index: "source: reason"}`` of the clips that failed to decode.

    Clips of different native sizes (a folder of videos kept at their own size) are never stacked: a
    batch ends where the size changes.
    """
    same_size = dataset.clip.size is not None
    loader = make_loader(dataset, batch_size=batch_size if same_size else 1, num_workers=num_workers,
                         indices=indices)
    pending: list[tuple[torch.Tensor, int]] = []
    failed: dict[int, str] = {}
    for batch in iter_clips(dataset, loader):
        failed.update({s.index: f"{s.source}: {s.reason}" for s in batch.skipped})
        if batch.videos is None:
            continue
        for clip, index in zip(batch.videos, batch.indices, strict=True):
            if pending and (pending[0][0].shape != clip.shape or len(pending) == batch_size):
                yield torch.stack([c for c, _ in pending]), [i for _, i in pending], failed
                pending, failed = [], {}
            pending.append((clip, index))
    if pending or failed:
        yield (torch.stack([c for c, _ in pending]) if pending else None), [i for _, i in pending], failed


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
    allow_few_classes: bool = False,
) -> RealStats:
    """Real statistics of ``dataset`` for an :class:`cmdbench.metrics.fvd.FVD` metric ``fvd``.

    Loads them from ``cache`` when present (no network pass); otherwise extracts features of every planned
    clip, sharded over processes with checkpoints in ``work_dir`` (resumable with any ``chunk_size``), and
    stores them in ``cache`` (rank 0). The clips are already cut to the protocol's frames, so they go to the
    extractor directly. Per-clip features are kept (bootstrap spreads).
    """
    protocol, extractor = fvd.protocol, fvd.extractor
    if protocol.num_real and dataset.report.usable < protocol.num_real:
        raise ValueError(
            f"{dataset.name} under {dataset.root} has {dataset.report.usable} usable videos; protocol "
            f"{protocol.name!r} takes num_real={protocol.num_real} clips, one per video ({dataset.report.summary()}). "
            "Pass --num-real (0 = all videos) for a smaller set; values at other counts are not comparable"
        )
    warning = check_class_coverage(dataset, allow_few_classes=allow_few_classes)
    key, numerics = data_key(dataset), fvd.numerics
    shard = shard or Shard.current()
    if cache is not None:
        hit = cache.get(protocol, extractor.checksum, key, numerics=numerics)
        if hit is not None:
            return RealStats(hit, True, cache.path_for(protocol, extractor.checksum, key, numerics=numerics),
                             len(dataset), hit.n, dataset.report.to_dict())

    def produce(items):
        feats, done, failed = [], [], {}
        for clips, indices, bad in clip_batches(dataset, batch_size, indices=items, num_workers=num_workers):
            failed.update(bad)
            if clips is not None:
                feats.append(extractor.extract(clips))  # (b, dim) float64
                done.extend(indices)
        return {"fvd": np.concatenate(feats) if feats else np.zeros((0, extractor.dim))}, done, failed

    tag = stats_key(protocol, extractor.checksum, key, numerics=numerics)
    wd = Path(work_dir) / f"real-{tag[:16]}" if work_dir is not None else None
    merged, done = sharded_stats(len(dataset), produce, {"fvd": extractor.dim}, tag=tag, work_dir=wd,
                                 chunk_size=chunk_size, shard=shard, keep_features=True)
    stats = fvd.new_stats("real", manifest_sha256=key)
    if stats.bank is None:  # keep per-clip features anyway: the bootstrap spread needs them
        stats = FeatureStats(extractor.dim, keep_features=True, metadata=stats.metadata)
    stats.merge(merged["fvd"])
    skipped = skipped_records(dataset, merged["fvd"].metadata.get("skipped", {}))
    stats.metadata.update(dataset=dataset.describe(), clips_planned=len(dataset), clips_used=len(done),
                          data_report=dataset.report.summary(), skipped=skipped, class_warning=warning,
                          allow_few_classes=allow_few_classes)
    check_counts(stats, dataset, done, protocol)
    path = None
    if cache is not None and shard.rank == 0:
        path = cache.put(stats, protocol, extractor.checksum, key, numerics=numerics)
    return RealStats(stats, False, path, len(dataset), len(done), dataset.report.to_dict())


def skipped_records(dataset: ClipDataset, decode_skips: dict[str, str]) -> list[dict[str, str]]:
    """Every video left out of the statistics: those the listing and probing dropped (``dataset.report``)
    and the planned clips that failed to decode (``{plan index: "source: reason"}``, from every rank and
    every resumed run), as ``{"source", "reason", "stage"}``."""
    out = [{"source": s.source, "reason": s.reason, "stage": s.stage} for s in dataset.report.skipped
           if s.stage != "decode"]
    for index, text in sorted(decode_skips.items(), key=lambda kv: int(kv[0])):
        source = str(dataset.plan[int(index)].source.path)
        reason = text[len(source) + 2:] if text.startswith(source + ": ") else text
        out.append({"source": source, "reason": reason, "stage": "decode"})
    return out


def check_counts(stats: FeatureStats, dataset: ClipDataset, done: Sequence[int], protocol: EvalProtocol) -> None:
    """Refuse statistics whose count does not add up, before anything is cached.

    Always (also with ``num_real = 0``, where no protocol count would catch it): ``n`` equals the number of
    distinct clips that entered, and entered + decode-skipped = planned. With ``num_real > 0`` also
    ``n == num_real``.
    """
    decode_skipped = sum(1 for s in stats.metadata.get("skipped", []) if s["stage"] == "decode")
    if stats.n != len(done) or len(set(done)) != len(done) or len(done) + decode_skipped != len(dataset):
        raise RuntimeError(
            f"{dataset.name}: statistics of n={stats.n} from {len(done)} clip indices ({len(set(done))} distinct) "
            f"with {decode_skipped} skipped, for {len(dataset)} planned clips: a clip was counted twice or lost. "
            "Not cached; delete the --work-dir checkpoints and run again"
        )
    if protocol.num_real and stats.n != protocol.num_real:
        raise ValueError(
            f"{dataset.name}: {stats.n} real clips entered the statistics, protocol {protocol.name!r} needs "
            f"{protocol.num_real}; {len(dataset) - stats.n} planned clips failed to decode "
            f"({dataset.report.summary()}). Fix or remove those files (listed above and in the run record)"
        )


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


def ref_stats_for_dataset(args: Any, protocol: EvalProtocol, extractor: Any, cache: ReferenceCache, *,
                          judge: str | None = None) -> int:
    """``cmdbench ref-stats``: sharded, resumable, cached real statistics; rank 0 prints and writes ``--out``.

    ``args`` carries ``dataset`` (``folder`` with ``videos``, or ``ucf101``/``webvid`` with ``root``), ``size,
    policy, batch_size, num_workers, work_dir, chunk_size, force, out, allow_few_classes`` and the dataset
    options ``split, fold, webvid_csv`` (those it has). Cached statistics built under another protocol or
    other numerics are never mixed in: the cache key and the checkpoint tags name all of them.
    ``judge``: the line describing the judge the statistics are for (default: the FVD preset's).
    """
    from cmdbench.metrics.fvd import FVD

    name = args.dataset
    root = getattr(args, "videos", None) if name == "folder" else getattr(args, "root", None)
    if not root:
        raise ValueError("pass --videos DIR (a folder of videos)" if name == "folder" else
                         f"--dataset {name} needs --root (the dataset directory)")
    options: dict[str, Any] = {}
    if name == "ucf101":
        options.update(split=getattr(args, "split", None) or "train", fold=getattr(args, "fold", None) or 1)
    if name == "webvid" and getattr(args, "webvid_csv", None):
        options["csv_path"] = args.webvid_csv
    if name == "webvid" and protocol.num_real:
        options["limit"] = protocol.num_real
    fvd = FVD(protocol, extractor=extractor, strict=False)
    dataset = open_real_dataset(name, root, protocol, size=parse_size(getattr(args, "size", None)),
                                policy=getattr(args, "policy", "strict"), **options)
    shard = Shard.current()
    force = getattr(args, "force", False)
    result = real_statistics(dataset, fvd, cache=None if force else cache, work_dir=getattr(args, "work_dir", None),
                             batch_size=args.batch_size, num_workers=getattr(args, "num_workers", 2),
                             chunk_size=getattr(args, "chunk_size", 256), shard=shard,
                             allow_few_classes=getattr(args, "allow_few_classes", False))
    if shard.rank != 0:
        return 0
    if not result.cached and force:
        result.path = cache.put(result.stats, protocol, extractor.checksum, data_key(dataset), numerics=fvd.numerics)
    meta = result.stats.metadata
    print(f"{'cached' if result.cached else 'computed'}: {result.stats.n} real clips of {name} "
          f"({meta.get('data_report', dataset.report.summary())}) -> {result.path}")
    print(f"  {judge or f'FVD {fvd.describe()}'}")
    if meta.get("class_warning"):
        print(f"  {meta['class_warning']}")
    for s in result.skipped:
        print(f"  skipped {s['source']}: {s['reason']} [{s['stage']}]")
    if getattr(args, "out", None):
        print(f"written: {result.stats.save(args.out)}")
    return 0
