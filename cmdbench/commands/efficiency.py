"""``cmdbench efficiency``: parameters, paper-convention TMACs, true FLOPs, predicted GPU memory and time
(fake tensors, no GPU needed) and, optionally, measured time and memory of registered generators at one
setting; ``--scaling`` sweeps frames and frame size instead.

    cmdbench efficiency --count-only --json          # CMD, ModelScope, LVDM at 512x1024x16, 50 steps, seconds
    cmdbench efficiency --count-only --predict --batch-sizes 1,4   # + predicted memory (GiB) and A100/H100/H200 time
    cmdbench efficiency --generators modelscope-t2v --height 64 --width 64 --steps 1 --device cpu
    cmdbench efficiency --scaling                    # MACs, predicted memory and time vs frames and size
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from cmdbench.bench.repro_efficiency import (
    EXCLUDED_STAGES,
    MAIN_GENERATORS,
    PAPER_SETTING,
    RESULTS,
    Recorder,
    Setting,
    count_generator,
    measure_generator,
    parse_ints,
    record_counts,
    record_predictions,
    record_scaling,
    select_gpus,
)
from cmdbench.bench.scaling import DEFAULT_FRAMES, DEFAULT_SIZES, SCALING_GENERATORS, scaling_grid, sweep
from cmdbench.config import TimingConfig
from cmdbench.interfaces import DTYPES, UnsupportedSettingError
from cmdbench.metrics.memory_prediction import GIB
from cmdbench.metrics.roofline import DEFAULT_GPUS
from cmdbench.registry import GENERATORS, UnknownNameError, load_plugins


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("efficiency", help="FLOPs/MACs, parameters, predicted and measured time and memory",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generators", default=None,
                   help=f"comma-separated (default: {','.join(MAIN_GENERATORS)}; with --scaling: "
                        f"{','.join(SCALING_GENERATORS)})")
    p.add_argument("--frames", type=int, default=PAPER_SETTING.num_frames)
    p.add_argument("--height", type=int, default=PAPER_SETTING.height)
    p.add_argument("--width", type=int, default=PAPER_SETTING.width)
    p.add_argument("--steps", type=int, default=PAPER_SETTING.steps)
    p.add_argument("--count-only", action="store_true", help="count (and predict) only; run no model")
    p.add_argument("--predict", action="store_true",
                   help="add predicted peak CUDA memory per --batch-sizes (fp16, fake tensors) and roofline "
                        "time per --gpus")
    p.add_argument("--gpus", default=",".join(DEFAULT_GPUS), help="GPUs for predicted times (default: %(default)s)")
    p.add_argument("--mixed-precision", action="store_true",
                   help="with --predict: float32 weights under CUDA autocast fp16 (memory only) instead of fp16 "
                        "weights")
    p.add_argument("--scaling", action="store_true",
                   help="sweep TMACs, predicted memory and time over --scaling-frames and --scaling-sizes; writes "
                        "tables/scaling.md and figures/scaling.{png,pdf} under --results")
    p.add_argument("--scaling-frames", default=",".join(map(str, DEFAULT_FRAMES)),
                   help="frame counts at 512x512 (default: %(default)s)")
    p.add_argument("--scaling-sizes", default=",".join(map(str, DEFAULT_SIZES)),
                   help="square frame sizes at 16 frames (default: %(default)s)")
    p.add_argument("--results", type=Path, default=RESULTS,
                   help="results root for --scaling records, table and figure (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object per generator name")
    p.add_argument("--device", default="cpu", help="measurement device: cpu or cuda[:N] (default: %(default)s)")
    p.add_argument("--dtype", default=None, choices=DTYPES, help="default: float16 on cuda, float32 on cpu")
    p.add_argument("--batch-sizes", default="1", help="measured / predicted batch sizes, comma-separated (default: 1)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1, help="minimum timed calls (default: 1)")
    p.add_argument("--records", type=Path, default=None, help="write result records to this directory")
    p.set_defaults(func=run)
    return p


def _positive(name: str, v: int) -> int:
    if v < 1:
        raise ValueError(f"--{name}={v}; allowed: a positive integer")
    return v


def _names(text: str | None, default: tuple[str, ...]) -> list[str]:
    load_plugins()
    names = [n.strip() for n in (text or ",".join(default)).split(",") if n.strip()]
    for n in names:
        if n not in GENERATORS:
            raise UnknownNameError(GENERATORS._unknown_message(n))
    return names


def run(args: argparse.Namespace) -> int:
    if args.scaling:
        return run_scaling(args)
    names = _names(args.generators, MAIN_GENERATORS)
    setting = Setting(_positive("frames", args.frames), _positive("height", args.height),
                      _positive("width", args.width), _positive("steps", args.steps))
    batch_sizes = [_positive("batch-sizes", int(b)) for b in args.batch_sizes.split(",") if b.strip()]
    gpus = select_gpus(args.gpus) if args.predict else []
    dtype = args.dtype or ("float16" if args.device.startswith("cuda") else "float32")
    if args.device.startswith("cuda") and not args.count_only:
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--device cuda asked for but torch sees no CUDA device; use --device cpu")
    rec = Recorder(args.records if args.records else Path(_scratch_dir()), prefix="efficiency")
    out: dict[str, Any] = {}
    for name in names:
        entry: dict[str, Any] = {"setting": vars(setting), "params": None, "params_denoiser": None,
                                 "tmacs_paper": None, "tflops_true": None, "sampling_time_s": None,
                                 "sampling_time_excl_vae_decoder_s": None, "peak_memory_gib": None,
                                 "memory_label": None, "status": "ok"}
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
        if args.predict:
            entry["predicted"] = _predict(rec, name, setting, batch_sizes, gpus, args.mixed_precision)
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
            entry["sampling_time_s"] = _first(new, "sampling_time")
            entry["sampling_time_excl_vae_decoder_s"] = _first(new, "sampling_time_excl_vae_decoder")
            mem = next((r for r in new if r["metric"] == "peak_memory"), None)
            entry["peak_memory_gib"], entry["memory_label"] = (mem["value"], mem["protocol"]) if mem else (None, None)
            if any(r["metric"] == "out_of_memory" for r in new):
                entry["status"] = "out of memory"
        out[name] = entry
        _print(args, name, entry)
    if args.json:
        print(json.dumps(out, indent=2, default=str))
    if args.records and not args.json:
        print(f"records: {rec.writer.csv_path}")
    return 0


def _first(rows: list[dict[str, Any]], metric: str) -> float | None:
    return next((r["value"] for r in rows if r["metric"] == metric and r["batch_size"] == 1), None)


def _predict(rec: Recorder, name: str, setting: Setting, batch_sizes: list[int], gpus: list,
             mixed_precision: bool = False) -> dict[str, Any]:
    """Predicted memory (GiB, whole call and without the SD VAE decoder, per stage) and times (s/video)."""
    t0 = time.perf_counter()
    preds = record_predictions(rec, name, setting, batch_sizes=batch_sizes, gpus=gpus,
                               mixed_precision=mixed_precision)
    out: dict[str, Any] = {"seconds": round(time.perf_counter() - t0, 1),
                           "precision": "float32 weights, autocast fp16" if mixed_precision else "fp16"}
    for b, (mem, pred) in preds.items():
        out[f"memory_gib@b{b}"] = {"peak": mem.peak / GIB, "peak_excl_vae_decoder":
                                   mem.peak_excluding(EXCLUDED_STAGES) / GIB, "weights": mem.weights / GIB,
                                   "stages": {s.stage: mem.stage_peak(s.stage) / GIB for s in mem.stages}}
        if pred is not None:
            out["time_s"] = {g.name: {"total": pred.time(g), "excl_vae_decoder": pred.time(g, EXCLUDED_STAGES),
                                      "stages": {s.stage: s.time_per_video(g) for s in pred.stages}} for g in gpus}
    return out


def _print(args: argparse.Namespace, name: str, e: dict[str, Any]) -> None:
    if args.json:
        return
    if e["tmacs_paper"] is None:
        print(f"{name}: {e['status']}")
        return
    line = (f"{name}: {e['params'] / 1e9:.3f} B params ({e['params_denoiser'] / 1e9:.3f} B in paper-convention networks), "
            f"{e['tmacs_paper']:.1f} TMAC paper convention, {e['tflops_true']:.1f} TFLOP true")
    if e.get("sampling_time_s") is not None:
        line += (f", {e['sampling_time_s']:.2f} s/video ({e['sampling_time_excl_vae_decoder_s']:.2f} excl. SD "
                 f"decoder), peak {e['peak_memory_gib']:.2f} GiB ({e['memory_label']})")
    elif e["status"] != "ok":
        line += f" [{e['status']}]"
    print(line)
    pred = e.get("predicted")
    if pred:
        mems = ", ".join(f"B={k.split('@b')[1]} {v['peak_excl_vae_decoder']:.2f} GiB "
                         f"({v['peak']:.2f} with the SD VAE decoder stage)"
                         for k, v in pred.items() if k.startswith("memory_gib@"))
        times = ", ".join(f"{g} {v['excl_vae_decoder']:.2f} s" for g, v in pred.get("time_s", {}).items())
        print(f"  predicted ({pred['precision']}, fake tensors, {pred['seconds']} s): peak {mems}"
              + (f"; roofline time per video excl. SD decoder: {times}" if times else ""))


def run_scaling(args: argparse.Namespace) -> int:
    """``--scaling``: sweep, record under ``<results>/records``, render the table and figure."""
    from cmdbench.bench.efficiency_report import load_efficiency_records
    from cmdbench.bench.scaling import render_scaling

    names = _names(args.generators, SCALING_GENERATORS)
    grid = scaling_grid(parse_ints(args.scaling_frames, "--scaling-frames"),
                        parse_ints(args.scaling_sizes, "--scaling-sizes"))
    gpus = select_gpus(args.gpus)
    records = args.records or args.results / "records"
    rec = Recorder(records, prefix="efficiency")
    print(f"cost scaling: {len(names)} generators x {len(grid)} settings; records in {rec.writer.csv_path}")
    t0 = time.perf_counter()
    points = sweep(names, grid)
    record_scaling(rec, points, gpus)
    seconds = time.perf_counter() - t0
    rec.writer.write_meta({"command": "efficiency --scaling", "generators": names, "grid": grid,
                           "gpus": [g.name for g in gpus], "seconds": round(seconds, 1)})
    paths, _ = render_scaling(load_efficiency_records(records), args.results)
    for p in paths:
        print(f"  wrote {p}")
    print(f"sweep: {sum(p.status == 'ok' for p in points)} counted, "
          f"{sum(p.status != 'ok' for p in points)} unsupported points in {seconds:.0f} s")
    return 0


def _scratch_dir() -> str:
    """Without --records, rows go to a temporary directory that is removed at exit."""
    import atexit
    import shutil
    import tempfile

    d = tempfile.mkdtemp(prefix="cmdbench-efficiency-")
    atexit.register(shutil.rmtree, d, ignore_errors=True)
    return d
