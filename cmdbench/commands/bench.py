"""``cmdbench bench``: run a BenchConfig (JSON file and/or flags) and append result rows to records."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cmdbench.commands.progress import add_progress_argument, progress_enabled
from cmdbench.commands.sample import add_generation_args

EPILOG = """examples:
  cmdbench bench --generator tiny-unet3d --tiny --seeds 0-7 --batch-size 2 --records results/records
  cmdbench bench --config bench.json --run-id nightly-1       # rerun with the same id to resume
  cmdbench bench --config bench.json --resume                 # resume the newest unfinished run of it
  cmdbench bench --generator tiny-unet3d --tiny --metric fvd2048_16f \
      --metric-option fvd2048_16f:ref_stats=real.npz --metric-option fvd2048_16f:strict=false
config JSON keys: generator, seeds, sampling{num_frames,height,width,steps,guidance_scale,batch_size},
  checkpoint, tiny, device, dtype, prompts, labels, metrics, metric_options{metric:{key:value}}, trackers,
  dataset, save_videos, through_codec, codec_crf, codec_pix_fmt, notes
"""

SAMPLING_KEYS = ("num_frames", "height", "width", "steps", "guidance_scale", "batch_size")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "bench", help="sample with seeds, measure (time, memory, metrics), write result records",
        description="Run a benchmark and append its rows to <records>/<run_id>.csv (config and environment "
                    "in <run_id>.json). Killed runs resume with the same --run-id or --resume.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="BenchConfig JSON; flags override its values")
    parser.add_argument("--generator", help="registered generator name")
    add_generation_args(parser)
    parser.add_argument("--metric", action="append", dest="metrics", metavar="NAME", help="metric, repeatable")
    parser.add_argument("--metric-option", action="append", dest="metric_options", metavar="METRIC:KEY=VALUE",
                        help="option of a metric's factory, repeatable, e.g. fvd2048_16f:ref_stats=real.npz; "
                             "VALUE is read as JSON when it parses (true, false, null, numbers), else as text")
    parser.add_argument("--tracker", action="append", dest="trackers", choices=("time", "memory"),
                        help="cost tracker, repeatable (default: time and memory)")
    parser.add_argument("--dataset", help="dataset name recorded in the rows")
    parser.add_argument("--save-videos", action="store_true", default=None, help="also write one mp4 per seed")
    parser.add_argument("--through-codec", action="store_true", default=None,
                        help="score the videos after an H.264 round trip (the pixels `sample` + `evaluate --videos` "
                             "score); the storage is recorded in every metric row")
    parser.add_argument("--codec-crf", type=int, help="--through-codec: x264 crf (default 18, as sample writes)")
    parser.add_argument("--codec-pix-fmt", help="--through-codec: pixel format (default yuv420p, as sample writes)")
    parser.add_argument("--notes", help="free text recorded in every row")
    parser.add_argument("--records", type=Path, default=Path("results/records"), help="records directory")
    parser.add_argument("--run-id", help="run id (default: new); an existing id resumes that run")
    parser.add_argument("--resume", action="store_true", help="resume the newest unfinished run of this config")
    add_progress_argument(parser)
    parser.set_defaults(func=run)
    return parser


def config_from_args(args: argparse.Namespace):
    from cmdbench.config import BenchConfig

    data: dict = {}
    if args.config is not None:
        try:
            data = json.loads(args.config.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"bench config {args.config} does not exist") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"bench config {args.config} is not valid JSON: {err}") from None
    sampling = dict(data.get("sampling") or {})
    sampling.update({k: getattr(args, k) for k in SAMPLING_KEYS if getattr(args, k) is not None})
    data["sampling"] = sampling
    for key in ("generator", "seeds", "checkpoint", "tiny", "device", "dtype", "prompts", "labels", "metrics",
                "trackers", "dataset", "save_videos", "through_codec", "codec_crf", "codec_pix_fmt", "notes"):
        value = getattr(args, key)
        if value is not None:
            data[key] = value
    if args.metric_options:
        data["metric_options"] = merge_metric_options(data.get("metric_options"), args.metric_options)
    if not data.get("generator"):
        raise ValueError("bench needs a generator: pass --generator NAME or a --config with \"generator\"")
    return BenchConfig.from_dict(data)


def parse_metric_option(text: str) -> tuple[str, str, Any]:
    """``"METRIC:KEY=VALUE"`` -> (metric, key, value); VALUE is JSON when it parses, else the text."""
    metric, sep, rest = text.partition(":")
    key, eq, raw = rest.partition("=")
    if not (sep and eq and metric and key):
        raise ValueError(f"--metric-option {text!r}; expected METRIC:KEY=VALUE, e.g. fvd2048_16f:ref_stats=real.npz")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    if isinstance(value, (list, dict)):
        value = raw  # only scalars are options; keep the text as given
    return metric, key, value


def merge_metric_options(base: Any, flags: list[str]) -> dict[str, dict[str, Any]]:
    """The config file's ``metric_options`` (mapping or stored pairs) overridden key by key by the flags."""
    merged: dict[str, dict[str, Any]] = {}
    items = base.items() if isinstance(base, dict) else (base or [])
    for metric, opts in items:
        merged[metric] = dict(opts.items() if isinstance(opts, dict) else opts)
    for text in flags:
        metric, key, value = parse_metric_option(text)
        merged.setdefault(metric, {})[key] = value
    return merged


def run(args: argparse.Namespace) -> int:
    from cmdbench.bench.runner import find_unfinished_run, run_bench

    cfg = config_from_args(args)  # an unavailable --device is refused by GeneratorSpec before any work
    run_id = args.run_id
    if args.resume and run_id is None:
        run_id = find_unfinished_run(cfg, args.records)
        if run_id is None:
            print(f"no unfinished run of this config in {args.records}; starting a new run")
    rows = run_bench(cfg, args.records, run_id=run_id, progress=progress_enabled(args))
    run_id = str(rows["run_id"].iloc[0]) if len(rows) else run_id
    cols = ["metric", "value", "std", "unit", "n"]
    print(rows[cols].to_string(index=False) if len(rows) else "(no rows: no trackers or metrics requested)")
    print(f"run {run_id}: {len(rows)} rows in {Path(args.records) / f'{run_id}.csv'}")
    return 0
