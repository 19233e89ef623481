"""``cmdbench evaluate``: FVD / CLIPSIM of a folder of videos or of a registered generator.

Sources: ``--videos DIR`` (every video file under DIR, whole, in listed order; captions from
``--prompts`` = a ``filename,caption`` CSV or DIR/captions.csv) or ``--generator NAME`` (sampled with
one seed per video, ``--seeds 0-2047``; text prompts from ``--prompts`` = a ``filename,caption`` CSV's
captions or a text file with one prompt per line, cycled over the seeds, else the generator's own
evaluation prompts; class labels ``seed % num_classes``). FVD needs real statistics: ``--ref-stats FILE``
(from ``cmdbench ref-stats``; refused when built under another protocol) or ``--real DIR`` (computed and
cached here). One result row per metric goes to ``--records`` (results schema); FVD rows carry the
preset, weight file and checksum, covariance estimator, real/fake counts and protocol hash, and every row
records how the scored videos were stored: ``--videos`` files are decoded (e.g. ``mp4 libx264 crf=18
yuv420p``, what ``cmdbench sample`` writes), generated videos are scored in memory unless
``--through-codec`` puts them through the same mp4 round trip first (so both paths score the same pixels).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

import torch

from cmdbench.bench.results import RecordWriter, config_hash, make_row, new_run_id, now_utc
from cmdbench.commands.ref_stats import add_protocol_arguments, compute_reference
from cmdbench.config import to_jsonable
from cmdbench.env import capture_environment
from cmdbench.interfaces import GeneratorSpec, MetricValue
from cmdbench.metrics.fvd import FVD
from cmdbench.metrics.reference import ReferenceCache
from cmdbench.registry import GENERATORS, METRICS, load_plugins
from cmdbench.seeding import format_seeds, make_generators, parse_seeds
from cmdbench.video import (
    IN_MEMORY,
    PIX_FMT_MULTIPLE,
    codec_round_trip,
    mp4_storage,
    quiet_decord,
    storage_of,
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "evaluate",
        help="FVD/CLIPSIM of a folder of videos or a generator, written as result rows",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--videos", help="folder of generated videos")
    src.add_argument("--generator", help="registered generator name (see `cmdbench list`)")
    parser.add_argument("--tiny", action="store_true", help="generator: random-weight miniature")
    parser.add_argument("--checkpoint", default=None, help="generator: checkpoint path or hub id")
    parser.add_argument("--seeds", default="0-15", help="generator: one video per seed, e.g. 0-2047")
    parser.add_argument("--frames", type=int, default=None, help="generator: frames (default: its own)")
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--guidance-scale", type=float, default=None)
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--sample-batch-size", type=int, default=4, help="generator: videos per sample() call")
    parser.add_argument("--through-codec", action="store_true",
                        help="generator: score the videos after an in-memory mp4 round trip (what `cmdbench "
                             "sample` + `evaluate --videos` see) instead of the raw uint8 tensors")
    parser.add_argument("--codec-crf", type=int, default=18, help="--through-codec: x264 crf (sample writes 18)")
    parser.add_argument("--codec-pix-fmt", default="yuv420p", choices=sorted(PIX_FMT_MULTIPLE),
                        help="--through-codec: pixel format (sample writes yuv420p)")
    parser.add_argument("--metric", dest="metrics", action="append", required=True,
                        help="metric name, repeatable (fvd2048_16f, fvd-videogpt, clipsim, ...)")
    add_protocol_arguments(parser, metric_option=False)
    ref = parser.add_mutually_exclusive_group()
    ref.add_argument("--ref-stats", help="real statistics .npz from `cmdbench ref-stats`")
    ref.add_argument("--real", help="folder of real videos (statistics computed and cached)")
    parser.add_argument("--cache-dir", default=None, help="real-statistics cache (default $CMDBENCH_CACHE/ref_stats)")
    parser.add_argument("--prompts", default=None, help="captions CSV (filename,caption) or prompt list (.txt)")
    parser.add_argument("--records", required=True, help="records directory for result rows")
    parser.add_argument("--run-id", default=None)
    parser.add_argument("--dataset", default="", help="dataset name recorded in the rows")
    parser.add_argument("--policy", choices=("strict", "skip"), default="strict",
                        help="--videos: unreadable or stray files stop the run (strict) or are skipped, each "
                             "named with its reason on screen and in the run record (skip)")
    parser.add_argument("--non-strict", action="store_true",
                        help="compute FVD at other sample counts than the protocol's (rows say conformant=False)")
    parser.add_argument("--allow-singular", action="store_true", help="allow FVD with fewer clips than 400")
    parser.add_argument("--bootstrap", type=int, default=0, help="FVD bootstrap rounds for a std (0: none)")
    parser.add_argument("--notes", default="")
    parser.set_defaults(func=run)
    return parser


# --- metrics --------------------------------------------------------------------------------------------
def build_metrics(args: argparse.Namespace) -> dict[str, Any]:
    import cmdbench.metrics.catalog  # noqa: F401  (built-in metrics, without importing every generator)

    metrics: dict[str, Any] = {}
    for name in dict.fromkeys(args.metrics):
        if name not in METRICS:
            load_plugins()  # third-party metrics; raises with close matches when still unknown
        factory = METRICS.get(name)
        if name.startswith("fvd"):
            options = {"protocol": args.protocol} if args.protocol else {}
            metric = factory(**options, extractor=args.extractor, extractor_path=args.extractor_path,
                             device=args.device, batch_size=args.batch_size, strict=not args.non_strict,
                             bootstrap_rounds=args.bootstrap, allow_singular=args.allow_singular)
            attach_reference(metric, args)
        else:
            metric = factory(device=args.device)
        metrics[name] = metric
    return metrics


def attach_reference(metric: FVD, args: argparse.Namespace) -> None:
    if args.ref_stats:
        metric.set_reference(args.ref_stats)
        return
    if not args.real:
        raise ValueError(f"{metric.name} needs real statistics: pass --ref-stats FILE or --real DIR")
    stats, _ = compute_reference(args.real, metric.protocol, metric.extractor, cache=ReferenceCache(args.cache_dir),
                                 batch_size=args.batch_size, keep_features=args.bootstrap > 0)
    metric.set_reference(stats)


# --- sources --------------------------------------------------------------------------------------------
def read_prompt_file(path: str | Path) -> list[str]:
    """A ``filename,caption`` / ``prompt`` CSV (caption column) or a text file with one prompt per line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {path} does not exist")
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        column = next((c for c in ("caption", "prompt", "text") if rows and c in rows[0]), None)
        if column is None:
            raise ValueError(f"{path}: needs a 'caption' or 'prompt' column; got {list(rows[0]) if rows else []}")
        prompts = [r[column] for r in rows]
    else:
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts or any(not p.strip() for p in prompts):
        raise ValueError(f"{path}: empty prompt list or empty prompts")
    return prompts


def min_frames_needed(metrics: dict[str, Any]) -> int:
    spans = [(m.protocol.num_frames - 1) * m.protocol.frame_stride + 1 for m in metrics.values() if isinstance(m, FVD)]
    return max(spans, default=1)


def folder_batches(args: argparse.Namespace, metrics: dict[str, Any], reports: list[Any]):
    """Whole videos of ``--videos`` one at a time: ``(videos (1, T, 3, H, W), prompts | None, info)``;
    the folder's :class:`~cmdbench.data.policy.DataReport` (skipped files and reasons) goes to ``reports``."""
    from cmdbench.data.clips import ClipSpec
    from cmdbench.data.datasets import folder
    from cmdbench.data.readers import read_frames

    spec = ClipSpec(num_frames=min_frames_needed(metrics), size=None, order="listed")
    dataset = folder(args.videos, clip=spec, captions=args.prompts, policy=args.policy)
    reports.append(dataset.report)
    for src, n in dataset.usable:
        video = read_frames(src.path, range(n)).unsqueeze(0)  # (1, T, 3, H, W) uint8
        info = {"source": str(src.path), "storage": storage_of(src.path)}
        yield video, ([src.condition] if isinstance(src.condition, str) else None), info


def generator_batches(args: argparse.Namespace, gen: Any, seeds: tuple[int, ...], settings: dict[str, Any]):
    """Sampled videos, ``--sample-batch-size`` seeds per ``sample()`` call, with their prompts."""
    prompts = None
    if gen.conditioning == "text":
        prompts = read_prompt_file(args.prompts) if args.prompts else list(getattr(gen, "eval_prompts", ()) or ())
        if not prompts:
            raise ValueError(f"{args.generator} is text-conditional: pass --prompts")
    for i in range(0, len(seeds), args.sample_batch_size):
        batch = seeds[i : i + args.sample_batch_size]
        cond: dict[str, Any] = {}
        if gen.conditioning == "text":
            cond["prompts"] = [prompts[(i + j) % len(prompts)] for j in range(len(batch))]
        elif gen.conditioning == "class":
            cond["labels"] = [s % int(gen.num_classes) for s in batch]
        with torch.no_grad():
            videos = gen.sample(generator=make_generators(batch), **settings, **cond)
        if args.through_codec:  # the pixels `cmdbench sample` would write and `evaluate --videos` would read
            videos = codec_round_trip(videos, crf=args.codec_crf, pix_fmt=args.codec_pix_fmt)
        yield videos, cond.get("prompts"), {"seeds": batch}


# --- run ------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    quiet_decord()  # unreadable files raise clear errors; FFmpeg's per-frame log lines would flood the terminal
    if args.videos and args.through_codec:
        raise ValueError("--through-codec applies to --generator; --videos files are scored as they are stored")
    metrics = build_metrics(args)
    needs_prompts = [n for n, m in metrics.items() if not isinstance(m, FVD)]
    row_base: dict[str, Any] = {"generator": "", "checkpoint": "", "seeds": "", "dataset": args.dataset}
    reports: list[Any] = []
    if args.videos:
        batches = folder_batches(args, metrics, reports)
        row_base.update(generator=f"folder:{Path(args.videos).name}", conditioning="")
        count_seen = None
    else:
        load_plugins()
        gen = GENERATORS.get(args.generator)(
            GeneratorSpec(checkpoint=args.checkpoint, device=args.device, dtype=args.dtype, tiny=args.tiny)
        )
        d = gen.defaults
        settings = {"num_frames": args.frames or d.num_frames, "height": args.height or d.height,
                    "width": args.width or d.width, "steps": args.steps or d.steps,
                    "guidance_scale": args.guidance_scale if args.guidance_scale is not None else d.guidance_scale}
        seeds = parse_seeds(args.seeds)
        batches = generator_batches(args, gen, seeds, settings)
        row_base.update(generator=args.generator, checkpoint=args.checkpoint or "", seeds=format_seeds(seeds),
                        conditioning=gen.conditioning, num_frames=settings["num_frames"],
                        height=settings["height"], width=settings["width"], steps=settings["steps"],
                        guidance_scale=settings["guidance_scale"], batch_size=args.sample_batch_size,
                        dtype=args.dtype)
        count_seen = len(seeds)
    n_videos, storages = 0, set()
    for videos, prompts, info in batches:
        storages.add(info.get("storage") or (mp4_storage(crf=args.codec_crf, pix_fmt=args.codec_pix_fmt)
                                             if args.through_codec else None))
        for name, metric in metrics.items():
            if name in needs_prompts:
                if prompts is None:
                    raise ValueError(f"metric {name} needs prompts; {info} has none (pass --prompts)")
                metric.update(videos, prompts)
            else:
                metric.update(videos)
        n_videos += videos.shape[0]
    if count_seen is not None and n_videos != count_seen:
        raise RuntimeError(f"sampled {n_videos} videos for {count_seen} seeds")
    for report in reports:
        for item in report.skipped:
            print(f"skipped {item.source}: {item.reason} [{item.stage}]")
    storages.discard(None)
    if storages:  # files (one label per kind of file found) or the codec round trip; else in memory
        for metric in metrics.values():
            metric.storage = "; ".join(sorted(storages))
    rows = write_rows(args, metrics, row_base, n_videos, data_reports=[r.to_dict() for r in reports])
    for r in rows:
        std = f" ± {r['std']:.4g}" if r["std"] is not None else ""
        metric = metrics[r["metric"]]
        what = metric.describe() if isinstance(metric, FVD) else r["protocol"]
        print(f"{r['metric']} [{what}] = {r['value']:.6g}{std}  (n={r['n']}; videos: "
              f"{getattr(metric, 'storage', IN_MEMORY)})")
    return 0


def write_rows(args: argparse.Namespace, metrics: dict[str, Any], base: dict[str, Any], n_videos: int, *,
               data_reports: list[dict[str, Any]] | None = None) -> list:
    env = capture_environment(args.device)
    run_id = args.run_id or new_run_id("eval")
    writer = RecordWriter(args.records, run_id)
    rows = []
    for name, metric in metrics.items():
        mv: MetricValue = metric.compute()
        notes = json.dumps(to_jsonable(mv.extra), sort_keys=True, default=str)
        if args.notes:
            notes = f"{args.notes}; {notes}"
        rows.append(make_row(
            run_id=run_id, created_utc=now_utc(), source="measured", git_sha=env["git_sha"],
            git_dirty=env["git_dirty"], **base, metric=name, value=float(mv.value), std=mv.std,
            n=mv.n if mv.n is not None else n_videos, unit=mv.unit, higher_is_better=mv.higher_is_better,
            protocol=mv.protocol, device_name=env["device_name"], torch_version=env["torch_version"],
            cuda_version=env["cuda_version"], notes=notes,
            config_hash=config_hash({**base, "metric": name, "protocol": mv.protocol}, env, extra=mv.extra),
        ))
    writer.append(rows)
    writer.write_meta({"command": "evaluate", "argv": sys.argv[1:], "args": vars(args) | {"func": None},
                       "environment": env, "n_videos": n_videos, "data_reports": data_reports or []})
    print(f"records: {writer.csv_path}")
    return rows
