"""``cmdbench efficiency``: parameters, paper-convention TMACs, true FLOPs and (optionally) measured time and
memory of registered generators at one setting.

    cmdbench efficiency --count-only --json          # CMD, ModelScope, LVDM at 512x1024x16, 50 steps, seconds
    cmdbench efficiency --generators modelscope-t2v --height 64 --width 64 --steps 1 --device cpu
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cmdbench.bench.repro_efficiency import (
    MAIN_GENERATORS,
    PAPER_SETTING,
    Recorder,
    Setting,
    count_generator,
    measure_generator,
    record_counts,
)
from cmdbench.config import TimingConfig
from cmdbench.interfaces import DTYPES, UnsupportedSettingError
from cmdbench.registry import GENERATORS, UnknownNameError, load_plugins


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("efficiency", help="FLOPs/MACs, parameters, sampling time and peak memory",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generators", default=",".join(MAIN_GENERATORS), help="comma-separated (default: %(default)s)")
    p.add_argument("--frames", type=int, default=PAPER_SETTING.num_frames)
    p.add_argument("--height", type=int, default=PAPER_SETTING.height)
    p.add_argument("--width", type=int, default=PAPER_SETTING.width)
    p.add_argument("--steps", type=int, default=PAPER_SETTING.steps)
    p.add_argument("--count-only", action="store_true", help="count on the meta device; run no model")
    p.add_argument("--json", action="store_true", help="print one JSON object per generator name")
    p.add_argument("--device", default="cpu", help="measurement device: cpu or cuda[:N] (default: %(default)s)")
    p.add_argument("--dtype", default=None, choices=DTYPES, help="default: float16 on cuda, float32 on cpu")
    p.add_argument("--batch-sizes", default="1", help="measured batch sizes, comma-separated (default: 1)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1, help="minimum timed calls (default: 1)")
    p.add_argument("--records", type=Path, default=None, help="write result records to this directory")
    p.set_defaults(func=run)
    return p


def _positive(name: str, v: int) -> int:
    if v < 1:
        raise ValueError(f"--{name}={v}; allowed: a positive integer")
    return v


def run(args: argparse.Namespace) -> int:
    load_plugins()
    names = [n.strip() for n in args.generators.split(",") if n.strip()]
    for n in names:
        if n not in GENERATORS:
            raise UnknownNameError(GENERATORS._unknown_message(n))
    setting = Setting(_positive("frames", args.frames), _positive("height", args.height),
                      _positive("width", args.width), _positive("steps", args.steps))
    batch_sizes = [_positive("batch-sizes", int(b)) for b in args.batch_sizes.split(",") if b.strip()]
    dtype = args.dtype or ("float16" if args.device.startswith("cuda") else "float32")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--device cuda asked for but torch sees no CUDA device; use --device cpu")
    rec = Recorder(args.records if args.records else Path(_scratch_dir()), prefix="efficiency")
    out: dict[str, Any] = {}
    for name in names:
        entry: dict[str, Any] = {"setting": vars(setting), "params": None, "params_denoiser": None,
                                 "tmacs_paper": None, "tflops_true": None, "sampling_time_s": None,
                                 "peak_memory_gb": None, "memory_label": None, "status": "ok"}
        try:
            (cost,), cond = count_generator(name, setting, (setting.steps,))
        except UnsupportedSettingError as err:
            entry["status"] = f"unsupported: {err}"
            out[name] = entry
            _print(args, name, entry)
            continue
        record_counts(rec, name, [cost], cond)
        entry |= {"params": cost.params, "params_denoiser": cost.paper_params, "tmacs_paper": cost.paper_tmacs,
                  "tflops_true": cost.true_tflops, "stages": cost.as_rows()}
        if not args.count_only:
            n_before = len(rec.rows)
            try:
                measure_generator(rec, name, setting, batch_sizes=batch_sizes, device=args.device, dtype=dtype,
                                  timing=TimingConfig(warmup=args.warmup, min_repeats=args.repeats),
                                  log=(lambda *_: None) if args.json else print)
            except UnsupportedSettingError as err:
                entry["status"] = f"unsupported: {err}"
            new = rec.rows[n_before:]
            entry["measured"] = {f"{r['metric']}@b{r['batch_size']}": r["value"] for r in new}
            entry["sampling_time_s"] = next((r["value"] for r in new if r["metric"] == "sampling_time"), None)
            mem = next((r for r in new if r["metric"] == "peak_memory"), None)
            entry["peak_memory_gb"], entry["memory_label"] = (mem["value"], mem["protocol"]) if mem else (None, None)
            if any(r["metric"] == "out_of_memory" for r in new):
                entry["status"] = "out of memory"
        out[name] = entry
        _print(args, name, entry)
    if args.json:
        print(json.dumps(out, indent=2, default=str))
    if args.records and not args.json:
        print(f"records: {rec.writer.csv_path}")
    return 0


def _print(args: argparse.Namespace, name: str, e: dict[str, Any]) -> None:
    if args.json:
        return
    if e["tmacs_paper"] is None:
        print(f"{name}: {e['status']}")
        return
    line = (f"{name}: {e['params'] / 1e9:.3f} B params ({e['params_denoiser'] / 1e9:.3f} B in paper-convention networks), "
            f"{e['tmacs_paper']:.1f} TMAC paper convention, {e['tflops_true']:.1f} TFLOP true")
    if e.get("sampling_time_s") is not None:
        line += f", {e['sampling_time_s']:.2f} s, peak {e['peak_memory_gb']:.2f} GB ({e['memory_label']})"
    elif e["status"] != "ok":
        line += f" [{e['status']}]"
    print(line)


def _scratch_dir() -> str:
    """Without --records, rows go to a temporary directory that is removed at exit."""
    import atexit
    import shutil
    import tempfile

    d = tempfile.mkdtemp(prefix="cmdbench-efficiency-")
    atexit.register(shutil.rmtree, d, ignore_errors=True)
    return d
