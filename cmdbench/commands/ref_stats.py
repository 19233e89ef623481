"""``cmdbench ref-stats``: real-set FVD statistics of a folder of videos, cached by protocol.

One seeded clip per video (``num_frames`` at ``frame_stride``, window start seeded by the protocol's
``clip_seed``), the first ``num_real`` videos in listed (or seeded-hash) order, features by the
protocol's extractor, float64 statistics written atomically to the content-addressed cache (key: every
protocol field that shapes features, the extractor checksum and the folder's manifest) and to ``--out``.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import torch

from cmdbench.config import EvalProtocol
from cmdbench.metrics.frechet import FeatureStats
from cmdbench.metrics.fvd import PRESETS, PROTOCOL_METRICS, build_extractor, get_protocol
from cmdbench.metrics.i3d import EXTRACTOR_NAMES, FeatureExtractor
from cmdbench.metrics.reference import ReferenceCache, check_compatible, stats_metadata


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "ref-stats",
        help="compute and cache real-set FVD statistics of a folder of videos",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--videos", default=None, help="folder of real videos (mp4/avi/webm/gif/frame dirs)")
    parser.add_argument("--dataset", default="folder", choices=("folder", "ucf101", "webvid"),
                        help="folder (--videos) or a registered dataset read from --root (sharded, resumable)")
    parser.add_argument("--root", default=None, help="dataset root for --dataset ucf101/webvid")
    parser.add_argument("--size", default=None, help="HxW real clips are resized to (ucf101: 64, webvid: 512x1024)")
    parser.add_argument("--split", default=None, help="ucf101 split (train, the paper's evaluation split; or test)")
    parser.add_argument("--webvid-csv", default=None, help="webvid validation CSV (default: found under --root)")
    parser.add_argument("--work-dir", default=None, help="chunk checkpoints, so an interrupted run resumes")
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader workers decoding clips")
    add_protocol_arguments(parser)
    parser.add_argument("--num-real", type=int, default=None,
                        help="real clips (default: the metric's, e.g. 2048; 0 = one per video, all videos)")
    parser.add_argument("--order", choices=("listed", "hashed"), default=None,
                        help="which videos: the first N listed (StyleGAN-V) or a seeded-hash subset")
    parser.add_argument("--seed", type=int, default=None, help="clip seed (window starts, hashed order)")
    parser.add_argument("--out", default=None, help="also write the statistics to this .npz")
    parser.add_argument("--cache-dir", default=None, help="statistics cache (default $CMDBENCH_CACHE/ref_stats)")
    parser.add_argument("--force", action="store_true", help="recompute even when cached")
    parser.add_argument("--keep-features", action="store_true",
                        help="store per-clip features too (for bootstrap spreads; 400 floats per clip)")
    parser.add_argument("--policy", choices=("strict", "skip"), default="strict",
                        help="unreadable or too-short videos: stop (strict) or skip and count them")
    parser.set_defaults(func=run)
    return parser


def add_protocol_arguments(parser: argparse.ArgumentParser, *, metric_option: bool = True) -> None:
    """Options shared with ``cmdbench evaluate``: protocol preset, metric name, extractor, device."""
    parser.add_argument("--protocol", default=None, choices=sorted(PRESETS),
                        help="FVD preset (default: stylegan-v, or the preset a fvd-<preset> metric names)")
    if metric_option:
        parser.add_argument("--metric", dest="protocol_metric", default="fvd2048_16f",
                            choices=sorted(PROTOCOL_METRICS),
                            help="protocol-named metric fixing counts and frames (default fvd2048_16f)")
    parser.add_argument("--extractor", default=None,
                        help=f"override the preset's extractor ({', '.join(EXTRACTOR_NAMES)}); "
                             "i3d-random-tiny runs without weights (tests only)")
    parser.add_argument("--extractor-path", default=None, help="weight file (default: cmdbench.weights cache)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8, help="clips per extractor call")


def open_folder(root: str | Path, protocol: EvalProtocol, *, num_clips: int | None, policy: str = "strict",
                captions: str | Path | None = None, num_frames: int | None = None):
    """The ``folder`` dataset cutting one seeded clip per video under ``protocol`` (native frame size)."""
    from cmdbench.data.clips import ClipSpec
    from cmdbench.data.datasets import folder

    spec = ClipSpec(num_frames=num_frames or protocol.num_frames, stride=protocol.frame_stride, size=None,
                    seed=protocol.clip_seed, num_clips=num_clips, order=protocol.real_order)
    return folder(root, clip=spec, policy=policy, captions=captions)


def clip_batches(dataset, batch_size: int) -> Iterator[tuple[torch.Tensor, list]]:
    """Batches of equal-sized uint8 clips ``(B, T, 3, H, W)`` with their conditions, in plan order."""
    from cmdbench.data.clips import iter_clips, make_loader

    pending: list[tuple[torch.Tensor, object]] = []
    for batch in iter_clips(dataset, make_loader(dataset, batch_size=1, num_workers=0)):
        if batch.videos is None:
            continue
        clip = batch.videos[0]
        if pending and (pending[0][0].shape != clip.shape or len(pending) == batch_size):
            yield torch.stack([c for c, _ in pending]), [k for _, k in pending]
            pending = []
        pending.append((clip, batch.conditions[0]))
    if pending:
        yield torch.stack([c for c, _ in pending]), [k for _, k in pending]


def compute_reference(
    root: str | Path,
    protocol: EvalProtocol,
    extractor: FeatureExtractor,
    *,
    cache: ReferenceCache,
    batch_size: int = 8,
    keep_features: bool = False,
    force: bool = False,
    policy: str = "strict",
) -> tuple[FeatureStats, bool]:
    """Real statistics of a folder under ``protocol`` (from the cache when present); returns (stats, cached)."""
    dataset = open_folder(root, protocol, num_clips=protocol.num_real or None, policy=policy)
    usable = dataset.report.usable
    if protocol.num_real and usable < protocol.num_real:
        raise ValueError(
            f"{root} has {usable} usable videos; protocol {protocol.name!r} takes num_real={protocol.num_real} "
            "clips, one per video. Pass --num-real (0 = all videos) for a smaller set; values at other counts "
            "are not comparable with published ones"
        )
    manifest = dataset.manifest.sha256
    if not force:
        cached = cache.get(protocol, extractor.checksum, manifest)
        if cached is not None and (cached.bank is not None or not keep_features):
            return cached, True
    meta = stats_metadata(protocol, extractor.checksum, kind="real", manifest_sha256=manifest,
                          extractor=extractor.name, dataset=dataset.describe())
    stats = FeatureStats(extractor.dim, keep_features=keep_features, metadata=meta)
    for clips, _ in clip_batches(dataset, batch_size):
        stats.update(extractor.extract(clips))  # clips: (B, num_frames, 3, H, W) uint8
    stats.metadata["data_report"] = dataset.report.summary()
    expected = protocol.num_real or len(dataset)
    if stats.n != expected:
        raise ValueError(
            f"{root}: {stats.n} clips were read, {expected} were planned ({dataset.report.summary()}); "
            "statistics at another count than the protocol's are not comparable"
        )
    check_compatible(stats, protocol, extractor.checksum, where=f"statistics of {root}")
    cache.put(stats, protocol, extractor.checksum, manifest)
    return stats, False


def resolve_protocol(args: argparse.Namespace) -> EvalProtocol:
    protocol = get_protocol(args.protocol or "stylegan-v", args.protocol_metric)
    changes = {}
    for attr, field in (("num_real", "num_real"), ("order", "real_order"), ("seed", "clip_seed")):
        value = getattr(args, attr, None)
        if value is not None:
            changes[field] = value
    if changes.get("num_real", 0) < 0:
        raise ValueError(f"--num-real={changes['num_real']}; allowed 0 (all videos) or a positive count")
    return replace(protocol, **changes)


def run(args: argparse.Namespace) -> int:
    protocol, extractor = build_extractor(resolve_protocol(args), args.extractor, path=args.extractor_path,
                                          device=args.device, batch_size=args.batch_size)
    cache = ReferenceCache(args.cache_dir)
    if args.dataset != "folder":  # registered datasets: cmdbench.bench.reference_sets (data helper)
        from cmdbench.bench.reference_sets import ref_stats_for_dataset

        return ref_stats_for_dataset(args, protocol, extractor, cache)
    if not args.videos:
        raise ValueError("pass --videos DIR (a folder of videos) or --dataset ucf101|webvid --root DIR")
    stats, cached = compute_reference(args.videos, protocol, extractor, cache=cache, batch_size=args.batch_size,
                                      keep_features=args.keep_features, force=args.force, policy=args.policy)
    where = cache.path_for(protocol, extractor.checksum, stats.metadata.get("manifest_sha256"))
    print(f"{'cached' if cached else 'computed'}: {stats.n} real clips, protocol {protocol.name!r} "
          f"({args.protocol_metric}), extractor {extractor.name} -> {where}")
    if args.out:
        print(f"written: {stats.save(args.out)}")
    return 0
