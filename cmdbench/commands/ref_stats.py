"""``cmdbench ref-stats``: real-set FVD statistics of a folder of videos or a dataset, cached by protocol.

One seeded clip per video (``num_frames`` at ``frame_stride``, window start seeded by the protocol's
``clip_seed``), the first ``num_real`` videos in listed or seeded-hash order (UCF-101 defaults to the
hashed order: its split lists are sorted by class), features by the protocol's extractor (default preset:
``videogpt``, the code CMD's release evaluates with; ``--protocol stylegan-v`` for StyleGAN-V's), float64
statistics written atomically to the content-addressed cache (key: every protocol field that shapes
features, the extractor checksum, the numerics -- device class, dtype, TF32 flags -- and the data
manifest) and to ``--out``.

Folders and datasets take the same path: sharded over ``torchrun`` / ``accelerate launch`` processes
(only rank 0 prints and writes ``--out``), resumable from ``--work-dir`` with any ``--chunk-size``.
Under ``--policy skip`` every skipped video is printed with its reason and stored in the ``.npz``
metadata (``skipped``). A progress bar (clips/s, ETA) runs on stderr when it is a terminal.

``--export mu-sigma OUT.npz`` also writes the statistics in the (mu, sigma) layout of pytorch-fid-style
tools (``np.load(OUT)["mu"]``, ``["sigma"]`` under the preset's covariance estimator, plus ``n`` and the
metadata), which ``cmdbench evaluate --ref-stats`` reads back too.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from cmdbench.commands.progress import (
    CountingExtractor,
    add_progress_argument,
    progress_bar,
    progress_enabled,
)

if TYPE_CHECKING:  # torch-heavy modules, imported inside the functions that use them
    from cmdbench.config import EvalProtocol
    from cmdbench.metrics.i3d import FeatureExtractor
    from cmdbench.metrics.reference import ReferenceCache

# The names the options accept, written out so that building the parser imports no torch. They equal
# cmdbench.metrics.fvd.{DEFAULT_PRESET, PRESETS, PROTOCOL_METRICS} and cmdbench.metrics.i3d.EXTRACTOR_NAMES
# (tests/commands/test_cli_startup.py checks it).
DEFAULT_PRESET = "videogpt"
PRESET_NAMES = ("stylegan-v", "tats", "tf-reference", "videogpt")
FVD_METRIC_NAMES = ("fvd10k_16f", "fvd2048_128f", "fvd2048_128f_subsample8f", "fvd2048_16f", "fvd5k_16f")
EXTRACTOR_NAMES = ("i3d_pretrained_400", "i3d_torchscript", "i3d-random", "i3d-random-tiny")
EXPORT_FORMATS = ("mu-sigma",)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "ref-stats",
        help="compute and cache real-set FVD statistics of a folder of videos or a dataset",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--videos", default=None, help="folder of real videos (mp4/avi/webm/gif/frame dirs)")
    parser.add_argument("--dataset", default="folder", choices=("folder", "ucf101", "webvid"),
                        help="folder (--videos) or a registered dataset read from --root")
    parser.add_argument("--root", default=None, help="dataset root for --dataset ucf101/webvid")
    parser.add_argument("--size", default=None,
                        help="HxW real clips are resized to (ucf101: 64, webvid: 512x1024, folder: native)")
    parser.add_argument("--split", default=None, help="ucf101 split (train, the paper's evaluation split; or test)")
    parser.add_argument("--webvid-csv", default=None, help="webvid validation CSV (default: found under --root)")
    parser.add_argument("--work-dir", default=None, help="checkpoints, so an interrupted run resumes")
    parser.add_argument("--chunk-size", type=int, default=256,
                        help="clips per checkpoint (a resumed run may use another size: work is keyed by clip)")
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader workers decoding clips")
    add_protocol_arguments(parser)
    parser.add_argument("--num-real", type=int, default=None,
                        help="real clips (default: the metric's, e.g. 2048; 0 = one per video, all videos)")
    parser.add_argument("--order", choices=("listed", "hashed"), default=None,
                        help="which videos: the first N listed (StyleGAN-V) or a seeded-hash subset "
                             "(default: hashed for ucf101, whose lists are sorted by class; listed otherwise)")
    parser.add_argument("--allow-few-classes", action="store_true",
                        help="accept a listed order covering under half of a labelled dataset's classes")
    parser.add_argument("--seed", type=int, default=None, help="clip seed (window starts, hashed order)")
    parser.add_argument("--out", default=None, help="also write the statistics to this .npz")
    parser.add_argument("--cache-dir", default=None, help="statistics cache (default $CMDBENCH_CACHE/ref_stats)")
    parser.add_argument("--force", action="store_true", help="recompute even when cached")
    parser.add_argument("--policy", choices=("strict", "skip"), default="strict",
                        help="unreadable or too-short videos: stop (strict) or skip them, each named with its reason")
    parser.add_argument("--export", nargs=2, metavar=("FORMAT", "OUT.npz"), default=None,
                        help="also write the statistics for other tools; FORMAT mu-sigma: np.savez(mu=, sigma=) "
                             "under the preset's covariance estimator, with n and the metadata")
    add_progress_argument(parser)
    parser.set_defaults(func=run)
    return parser


def add_protocol_arguments(parser: argparse.ArgumentParser, *, metric_option: bool = True) -> None:
    """Options shared with ``cmdbench evaluate``: protocol preset, metric name, extractor, device."""
    parser.add_argument("--protocol", default=None, choices=PRESET_NAMES,
                        help=f"FVD preset (default: {DEFAULT_PRESET}, the code CMD's release evaluates with; "
                             "stylegan-v for StyleGAN-V's metric code)")
    if metric_option:
        parser.add_argument("--metric", dest="protocol_metric", default="fvd2048_16f",
                            choices=FVD_METRIC_NAMES,
                            help="protocol-named metric fixing counts and frames (default fvd2048_16f)")
    parser.add_argument("--extractor", default=None,
                        help=f"override the preset's extractor ({', '.join(EXTRACTOR_NAMES)}); "
                             "i3d-random-tiny is the offline stand-in: random weights, no download, values labelled "
                             "random and meaningless (under videogpt, tats or tf-reference)")
    parser.add_argument("--extractor-path", default=None, help="weight file (default: cmdbench.weights cache)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda (under torchrun: each rank's local GPU)")
    parser.add_argument("--batch-size", type=int, default=8, help="clips per extractor call")


def compute_reference(
    root: str | Path,
    protocol: EvalProtocol,
    extractor: FeatureExtractor,
    *,
    cache: ReferenceCache,
    batch_size: int = 8,
    force: bool = False,
    policy: str = "strict",
    all_if_fewer: bool = False,
    progress: bool = False,
):
    """Real statistics of a folder under ``protocol`` (from the cache when present).

    The ``folder`` dataset through :func:`cmdbench.bench.reference_sets.real_statistics` (the path every real
    set takes; per-clip features are kept). ``all_if_fewer``: a folder with fewer usable videos than
    ``protocol.num_real`` gives one clip of every video instead of an error (the caller marks the value not
    conformant). Returns ``(RealStats, protocol the clips were planned under, note or None)``.
    """
    from cmdbench.bench.reference_sets import data_key, open_real_dataset, real_statistics
    from cmdbench.metrics.fvd import FVD

    dataset = open_real_dataset("folder", root, protocol, policy=policy)
    note = None
    usable = dataset.report.usable
    if protocol.num_real and usable < protocol.num_real:
        if not all_if_fewer:
            raise ValueError(
                f"--real {root} has {usable} usable videos ({dataset.report.summary()}); the protocol takes "
                f"{protocol.num_real} real clips, one per video. Pass --non-strict to use one clip of each of the "
                f"{usable} (marked not conformant), or --num-real N for a smaller set (0 = all videos)")
        note = (f"--real {root} has {usable} usable videos, fewer than the {protocol.num_real} real clips the "
                "protocol takes: using one clip of each (not conformant)")
        protocol = replace(protocol, num_real=0)
        dataset = open_real_dataset("folder", root, protocol, policy=policy)
    bar = progress_bar(total=len(dataset), desc="real clips", enabled=progress)
    fvd = FVD(protocol, extractor=CountingExtractor(extractor, bar), strict=False)
    try:
        result = real_statistics(dataset, fvd, cache=None if force else cache, batch_size=batch_size,
                                 num_workers=0)
    finally:
        bar.close()
    if force:
        cache.put(result.stats, protocol, extractor.checksum, data_key(dataset), numerics=fvd.numerics)
    return result, protocol, note


def resolve_protocol(args: argparse.Namespace) -> EvalProtocol:
    """The preset and metric the options name, with ``--num-real``, ``--order`` (dataset default) and ``--seed``."""
    from cmdbench.bench.reference_sets import DEFAULT_REAL_ORDER
    from cmdbench.metrics.fvd import get_protocol

    protocol = get_protocol(args.protocol or DEFAULT_PRESET, args.protocol_metric)
    changes = {}
    order = getattr(args, "order", None) or DEFAULT_REAL_ORDER.get(getattr(args, "dataset", "folder"))
    for field, value in (("num_real", getattr(args, "num_real", None)), ("real_order", order),
                         ("clip_seed", getattr(args, "seed", None))):
        if value is not None:
            changes[field] = value
    if changes.get("num_real", 0) < 0:
        raise ValueError(f"--num-real={changes['num_real']}; allowed 0 (all videos) or a positive count")
    return replace(protocol, **changes)


def run(args: argparse.Namespace) -> int:
    from cmdbench.bench.reference_sets import ref_stats_for_dataset
    from cmdbench.bench.sharded import init_distributed_from_env
    from cmdbench.interfaces import check_device
    from cmdbench.metrics.fvd import build_extractor
    from cmdbench.metrics.reference import ReferenceCache
    from cmdbench.video import quiet_decord

    check_device(args.device, what="--device")
    export = check_export(args.export)
    quiet_decord()  # bad files raise clear errors; FFmpeg's per-frame log lines would flood the terminal
    shard = init_distributed_from_env()  # torchrun / accelerate launch: ranks share the clips
    device = args.device
    if device == "cuda" and shard.world_size > 1:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    protocol, extractor = build_extractor(resolve_protocol(args), args.extractor, path=args.extractor_path,
                                          device=device, batch_size=args.batch_size)
    if args.dataset == "folder" and not args.videos:
        raise ValueError("pass --videos DIR (a folder of videos) or --dataset ucf101|webvid --root DIR")
    # total: the protocol's real-clip count (unknown for num_real = 0: rate only)
    bar = progress_bar(total=protocol.num_real or None, desc="real clips",
                       enabled=progress_enabled(args) and shard.rank == 0)
    temp_out = export is not None and not args.out
    if temp_out:
        args.out = str(Path(export[1]).with_name(f".{Path(export[1]).name}.{os.getpid()}.stats.npz"))
    try:
        rc = ref_stats_for_dataset(args, protocol, CountingExtractor(extractor, bar), ReferenceCache(args.cache_dir))
    finally:
        bar.close()
    if export is not None and shard.rank == 0:
        try:
            print(f"exported ({export[0]}): {export_mu_sigma(args.out, export[1], protocol.ddof)}")
        finally:
            if temp_out:
                Path(args.out).unlink(missing_ok=True)
    return rc


def check_export(export: list[str] | None) -> tuple[str, str] | None:
    if export is None:
        return None
    fmt, out = export
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"--export {fmt!r}: unknown format; allowed {', '.join(EXPORT_FORMATS)} (then the .npz path)")
    return fmt, out


def export_mu_sigma(stats_path: str | Path, out: str | Path, ddof: int) -> Path:
    """Write the cmdbench statistics in ``stats_path`` as a (mu, sigma) ``.npz`` (covariance estimator ``ddof``
    of the protocol they were built under), for pytorch-fid-style tools."""
    from cmdbench.metrics.frechet import FeatureStats, save_mu_sigma

    stats = FeatureStats.load(stats_path)
    return save_mu_sigma(out, stats.to_gaussian(ddof))
