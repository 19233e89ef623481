"""Reproduction "efficiency": CMD's cost tables (Tables 8, 9, 10) and figures (1, 5, 6).

``cmdbench reproduce efficiency`` / ``nox -s reproduce -- efficiency``:

1. **counts** (meta device, any machine, seconds per model): for CMD, ModelScope, LVDM (+ every other
   registered baseline that takes the setting) at 512x1024x16: paper-convention TMACs at 50 and 100
   steps, true FLOPs with guidance, text encoder and decoders, parameters, per stage (Tables 9, 10);
   training-step cost per component at 512x512x16, batch 1 (Table 8);
2. **measurements** of ``sample()`` (time, peak memory, per stage): on CUDA at the paper setting in
   half precision, batch 1 and 4; without CUDA on the CPU at a reduced setting (:data:`CPU_SETTING`,
   full architectures, random weights, float32, batch 1), all models in the same run;
3. records under ``results/records/efficiency-*.csv``, then tables and figures rendered from the
   records and ``results/paper/`` by :mod:`cmdbench.bench.efficiency_report`.

Generators are used only through the registry and their ``cost_stages`` / ``sample`` / ``stage_hook``.
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cmdbench.bench.reproduce import REPRODUCTIONS
from cmdbench.bench.results import RecordWriter, make_row, new_run_id, now_utc
from cmdbench.config import TimingConfig, stable_hash
from cmdbench.env import capture_environment, cuda_version, device_name, git_info
from cmdbench.interfaces import GeneratorSpec, UnsupportedSettingError
from cmdbench.metrics.efficiency import (
    GeneratorCost,
    SamplingMeasurement,
    count_flops,
    count_generator_cost,
    count_params,
    measure_sampling,
)
from cmdbench.registry import GENERATORS, load_plugins

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "results"
MAIN_GENERATORS = ("cmd-webvid-512x1024", "modelscope-t2v", "lvdm-t2v")
EXTRA_GENERATORS = ("animatediff-v152", "latte-1", "pvdm-ucf101")
# Table 8 trains at 512x512x16 (the paper's setting): CMD's WebVid architecture (SD 2.1-base UNet, motion
# DiT-XL/2 with content patch 8) at that size has 256 motion + 64 content = 320 motion-DiT tokens, which
# matches the paper's 0.14 TFLOPs; the SD1.5 variant (content patch 4: 512 tokens) gives 0.23.
TRAINING_GENERATORS = (("cmd-webvid-512x1024", "cmd-sd15-512"), ("modelscope-t2v",), ("lvdm-t2v",))
PAPER_METHOD = {"cmd-webvid-512x1024": "CMD", "cmd-sd15-512": "CMD", "modelscope-t2v": "ModelScope",
                "lvdm-t2v": "LVDM"}
COUNT_PROTOCOL = "flopcounter-meta"  # FlopCounterMode on the meta device, attention by formula
GB = 1e9


@dataclass(frozen=True)
class Setting:
    num_frames: int
    height: int
    width: int
    steps: int = 50

    def describe(self) -> str:
        return f"{self.height}x{self.width}x{self.num_frames}, {self.steps} steps"


PAPER_SETTING = Setting(16, 512, 1024, 50)
PAPER_STEPS = (50, 100)
TRAINING_SETTING = Setting(16, 512, 512, 1)
# Full architectures at 256x256x16, 2 DDIM steps, batch 1, float32, one timed call and no warm-up call
# (CPU_WARMUP): CMD (sizes in multiples of 64 for the SD 2.1 presets), ModelScope and LVDM all take it, so
# all three are timed in the same run, and the whole reproduction stays near 10 minutes on 2 idle cores
# (every model also runs the SD VAE decoder on 16 frames, which the time excludes but the run pays).
# Smaller frames are dominated by fixed per-layer costs (2.5x at 64x64x16, 1 step); the FLOP ratio only
# shows from about this size on. A generator that refuses a setting is recorded as unsupported.
CPU_SETTING = Setting(16, 256, 256, 2)
CPU_WARMUP = 0  # calls of tens of seconds to minutes: one-time start-up costs are a small share


class Recorder:
    """Rows of one run with the shared fields filled in, written as they come."""

    def __init__(self, records: Path, *, prefix: str = "efficiency") -> None:
        self.run_id = new_run_id(prefix)
        self.writer = RecordWriter(records, self.run_id)
        self.created = now_utc()
        self.sha, self.dirty = git_info()
        self.rows: list[dict[str, Any]] = []

    def add(self, *, generator: str, metric: str, value: float, unit: str, setting: Setting,
            batch_size: int = 1, protocol: str = COUNT_PROTOCOL, device: str = "meta", dtype: str = "float32",
            std: float | None = None, n: int | None = None, notes: str = "", conditioning: str | None = None,
            guidance_scale: float | None = None) -> None:
        dev_name = "meta" if device == "meta" else device_name(device)
        key = {"generator": generator, "metric": metric, "protocol": protocol, "setting": setting,
               "batch_size": batch_size, "dtype": dtype, "device": dev_name, "guidance": guidance_scale}
        row = make_row(
            run_id=self.run_id, created_utc=self.created, source="measured", git_sha=self.sha,
            git_dirty=self.dirty, generator=generator, checkpoint="random-init", conditioning=conditioning,
            protocol=protocol, metric=metric, value=float(value), std=std, n=n, unit=unit, higher_is_better=False,
            num_frames=setting.num_frames, height=setting.height, width=setting.width, steps=setting.steps,
            guidance_scale=guidance_scale, batch_size=batch_size, dtype=dtype, device_name=dev_name,
            torch_version=torch.__version__, cuda_version=cuda_version(), config_hash=stable_hash(key),
            notes=notes,
        )
        self.writer.append([row])
        self.rows.append(row)


def resolve_generators(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """(registered, missing) among ``names``, after loading every plugin."""
    load_plugins()
    present = [n for n in names if n in GENERATORS]
    return present, [n for n in names if n not in GENERATORS]


def build(name: str, *, device: str = "meta", dtype: str = "float32") -> Any:
    """The full published architecture of ``name`` with random weights on ``device``."""
    return GENERATORS.get(name)(GeneratorSpec(checkpoint=None, device=device, dtype=dtype))


# --- counting -------------------------------------------------------------------------------------------


def count_generator(name: str, setting: Setting, steps: Sequence[int],
                    batch_size: int = 1) -> tuple[list[GeneratorCost], str | None]:
    """Counts of ``name`` at ``setting`` for each step count (per-call counts reused), and its conditioning."""
    gen = build(name, device="meta")
    cache: dict = {}
    costs = [count_generator_cost(gen, setting.num_frames, setting.height, setting.width, s, batch_size,
                                  name=name, cache=cache) for s in steps]
    return costs, getattr(gen, "conditioning", None)


def record_counts(rec: Recorder, name: str, costs: Sequence[GeneratorCost], conditioning: str | None) -> None:
    for cost in costs:
        setting = Setting(cost.num_frames, cost.height, cost.width, cost.steps)
        rec.add(generator=name, metric="tmacs_paper", value=cost.paper_tmacs, unit="TMAC", setting=setting,
                conditioning=conditioning,
                notes="CMD convention: one conditional denoiser pass per step, batch 1, attention scores, "
                      "text encoder and SD decoder excluded")
        rec.add(generator=name, metric="tflops_true", value=cost.true_tflops, unit="TFLOP", setting=setting,
                batch_size=cost.batch_size, conditioning=conditioning,
                notes="2*MAC of every op incl. attention, guidance passes, text encoder and decoders")
        for st in cost.stages:
            rec.add(generator=name, metric=f"stage_tflops_true/{st.stage}", value=st.true_tflops, unit="TFLOP",
                    setting=setting, batch_size=cost.batch_size, conditioning=conditioning,
                    notes=f"calls={st.calls} guidance_passes={st.guidance_passes} "
                          f"attention_tmacs_per_call={st.attention_macs_per_call / 1e12:.6g}")
            if st.paper_convention:
                rec.add(generator=name, metric=f"stage_tmacs_paper/{st.stage}", value=st.paper_tmacs,
                        unit="TMAC", setting=setting, conditioning=conditioning, notes=f"calls={st.calls}")
    cost = costs[0]
    setting = Setting(cost.num_frames, cost.height, cost.width, cost.steps)
    names = ", ".join(f"{s.stage}={s.params / 1e6:.1f}M" for s in cost.stages)
    rec.add(generator=name, metric="params", value=cost.params / 1e9, unit="B", setting=setting,
            conditioning=conditioning, notes=f"all networks sampling uses: {names}")
    rec.add(generator=name, metric="params_denoiser", value=cost.paper_params / 1e9, unit="B", setting=setting,
            conditioning=conditioning, notes="networks of the paper-convention stages (denoisers)")


def training_stages(gen: Any, setting: Setting) -> tuple[list[Any], str]:
    """The networks a training step runs: ``training_cost_stages`` when the generator has it, else the
    paper-convention (denoiser) stages of ``cost_stages`` at one step."""
    hook = getattr(gen, "training_cost_stages", None)
    if hook is not None:
        return list(hook(num_frames=setting.num_frames, height=setting.height, width=setting.width)), \
            "training_cost_stages"
    stages = gen.cost_stages(num_frames=setting.num_frames, height=setting.height, width=setting.width, steps=1)
    return [s for s in stages if s.paper_convention], "cost_stages (denoisers only)"


def record_training(rec: Recorder, name: str, setting: Setting = TRAINING_SETTING) -> list[str]:
    """Table 8: per trained network, forward MACs (paper's inferred convention) and forward+backward FLOPs."""
    gen = build(name, device="meta")
    stages, source = training_stages(gen, setting)
    cond = getattr(gen, "conditioning", None)
    for st in stages:
        fwd = count_flops(st.module, st.make_inputs(1), forward=st.forward)
        both = count_flops(st.module, st.make_inputs(1), forward=st.forward, backward=True)
        common = dict(generator=name, setting=setting, conditioning=cond, protocol=f"{COUNT_PROTOCOL}/training")
        rec.add(metric=f"train_tmacs_forward/{st.name}",
                value=fwd.macs_excl_attention / 1e12, unit="TMAC",
                notes=f"one forward, batch 1, attention scores excluded (paper's inferred convention); from {source}",
                **common)
        rec.add(metric=f"train_tflops_true/{st.name}", value=both.flops / 1e12, unit="TFLOP",
                notes=f"forward+backward, 2*MAC incl. attention, batch 1, no optimiser; from {source}", **common)
        rec.add(metric=f"train_params/{st.name}", value=count_params(st.module) / 1e9, unit="B",
                notes=f"from {source}", **common)
    return [st.name for st in stages]


# --- measuring ------------------------------------------------------------------------------------------


def record_measurement(rec: Recorder, name: str, m: SamplingMeasurement, setting: Setting, *, batch_size: int,
                       device: str, dtype: str, timing: TimingConfig, guidance: float | None,
                       conditioning: str | None) -> None:
    protocol = (f"{'cuda_events' if device.startswith('cuda') else 'perf_counter'} "
                f"warmup={timing.warmup} min_repeats={timing.min_repeats}")
    common = dict(generator=name, setting=setting, batch_size=batch_size, device=device, dtype=dtype,
                  conditioning=conditioning, guidance_scale=guidance)
    if m.status == "oom":
        rec.add(metric="out_of_memory", value=1.0, unit="flag", protocol=protocol, notes=m.error, **common)
        return
    raw = ", ".join(f"{v:.4f}" for v in m.time.raw)
    excluded = "+".join(m.excluded_stages) or "nothing"
    rec.add(metric="sampling_time", value=m.time_excl, unit="s", protocol=protocol, std=m.time.iqr,
            n=len(m.time.raw), notes=f"median of sample() minus stages {excluded} (paper: SD decoder excluded); "
                                     f"std=IQR; raw totals s=[{raw}]", **common)
    rec.add(metric="sampling_time_total", value=m.time.median, unit="s", protocol=protocol, std=m.time.iqr,
            n=len(m.time.raw), notes=f"median of whole sample() calls; std=IQR; raw s=[{raw}]", **common)
    for st, t in m.stage_times.items():
        rec.add(metric=f"stage_time/{st}", value=t, unit="s", protocol=protocol, n=len(m.time.raw),
                notes="median over timed calls", **common)
    denoise = sum(t for st, t in m.stage_times.items() if st not in ("text_encoder", "decoder", "vae_decoder"))
    rec.add(metric="time_per_step", value=denoise / setting.steps, unit="s", protocol=protocol,
            notes="denoising stages' time / steps", **common)
    kept = [p for st, p in m.stage_peaks.items() if st not in m.excluded_stages]
    if m.peak_memory is not None:
        rec.add(metric="peak_memory", value=(max(kept) if kept else m.peak_memory) / GB, unit="GB",
                protocol=m.memory_label,
                notes=f"peak over stages except {excluded}; baseline before sampling "
                      f"{(m.baseline_memory or 0) / GB:.3f} GB", **common)
        rec.add(metric="peak_memory_total", value=m.peak_memory / GB, unit="GB", protocol=m.memory_label,
                notes="peak over the whole sample() call", **common)


def measure_generator(rec: Recorder, name: str, setting: Setting, *, batch_sizes: Sequence[int], device: str,
                      dtype: str, timing: TimingConfig, log: Any = print) -> None:
    """Build ``name`` with random weights on ``device`` and measure ``sample()`` per batch size."""
    gen = build(name, device=device, dtype=dtype)
    guidance = getattr(getattr(gen, "defaults", None), "guidance_scale", None)
    cond = getattr(gen, "conditioning", None)
    try:
        for b in batch_sizes:
            m = measure_sampling(gen, num_frames=setting.num_frames, height=setting.height, width=setting.width,
                                 steps=setting.steps, batch_size=b, guidance_scale=guidance, timing=timing,
                                 device=device)
            record_measurement(rec, name, m, setting, batch_size=b, device=device, dtype=dtype, timing=timing,
                               guidance=guidance, conditioning=cond)
            if m.status == "ok":
                log(f"  {name} batch {b}: {m.time_excl:.2f} s excl. SD decoder "
                    f"({m.time.median:.2f} s total), peak {m.peak_memory / GB:.2f} GB {m.memory_label}")
            else:
                log(f"  {name} batch {b}: out of memory ({m.error})")
    finally:
        del gen
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()


# --- the reproduction -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="cmdbench reproduce efficiency", description=__doc__.splitlines()[0])
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="measurement dtype (default: float16 on cuda, float32 on cpu)")
    p.add_argument("--generators", default=",".join(MAIN_GENERATORS),
                   help="main rows, comma-separated (default: %(default)s)")
    p.add_argument("--extra", default=",".join(EXTRA_GENERATORS),
                   help="extra baselines counted at the paper setting when registered ('' for none)")
    p.add_argument("--measure-setting", default=None,
                   help="HxWxT:steps for the measured rows (default: 512x1024x16:50 on cuda, "
                        f"{CPU_SETTING.height}x{CPU_SETTING.width}x{CPU_SETTING.num_frames}:{CPU_SETTING.steps} on cpu)")
    p.add_argument("--batch-sizes", default=None, help="measured batch sizes (default: 1,4 on cuda, 1 on cpu)")
    p.add_argument("--warmup", type=int, default=None,
                   help=f"untimed calls (default 1 on cuda, {CPU_WARMUP} on cpu)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls (default 3 on cuda, 1 on cpu)")
    p.add_argument("--count-only", action="store_true", help="skip the measured rows")
    p.add_argument("--skip-training", action="store_true", help="skip Table 8")
    p.add_argument("--results", type=Path, default=RESULTS, help="results root (default: %(default)s)")
    p.add_argument("--no-render", action="store_true", help="write records only")
    return p.parse_args(list(argv))


def parse_setting(text: str) -> Setting:
    try:
        size, steps = text.split(":")
        h, w, t = (int(v) for v in size.lower().split("x"))
        return Setting(t, h, w, int(steps))
    except ValueError:
        raise ValueError(f"--measure-setting {text!r}: write HxWxT:steps, e.g. 64x128x16:2") from None


def _split(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


@REPRODUCTIONS.register("efficiency", description="Tables 8, 9, 10 and Figures 1, 5, 6: FLOPs, time, memory")
def run(argv: list[str]) -> int:
    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    device = args.device or ("cuda" if cuda else "cpu")
    if device.startswith("cuda") and not cuda:
        raise ValueError("--device cuda asked for but torch sees no CUDA device; use --device cpu")
    on_gpu = device.startswith("cuda")
    dtype = args.dtype or ("float16" if on_gpu else "float32")
    setting = parse_setting(args.measure_setting) if args.measure_setting else (
        PAPER_SETTING if on_gpu else CPU_SETTING)
    batch_sizes = [int(b) for b in _split(args.batch_sizes)] if args.batch_sizes else ([1, 4] if on_gpu else [1])
    timing = TimingConfig(warmup=(1 if on_gpu else CPU_WARMUP) if args.warmup is None else args.warmup,
                          min_repeats=args.repeats or (3 if on_gpu else 1))

    main, missing = resolve_generators(_split(args.generators))
    extra, missing_extra = resolve_generators([g for g in _split(args.extra) if g not in main])
    rec = Recorder(args.results / "records")
    rec.writer.write_meta({"reproduction": "efficiency", "argv": list(argv), "measure_setting": vars(setting),
                           "batch_sizes": batch_sizes, "timing": vars(timing), "main": main, "extra": extra,
                           "missing": missing + missing_extra, "environment": capture_environment(device, dtype)})
    print(f"efficiency: run {rec.run_id}; records in {rec.writer.csv_path}")
    if missing or missing_extra:
        print(f"  not registered (skipped): {', '.join(missing + missing_extra)}")
    skipped: list[str] = []

    print(f"Table 9/10 counts at {PAPER_SETTING.height}x{PAPER_SETTING.width}x{PAPER_SETTING.num_frames} "
          "on the meta device")
    for name in [*main, *extra]:
        try:
            costs, cond = count_generator(name, PAPER_SETTING, PAPER_STEPS)
        except UnsupportedSettingError as err:
            skipped.append(f"{name}: {err}")
            print(f"  {name}: unsupported at the paper setting ({err})")
            rec.add(generator=name, metric="unsupported", value=1.0, unit="flag", setting=PAPER_SETTING,
                    notes=str(err))
            continue
        record_counts(rec, name, costs, cond)
        print(f"  {name}: {costs[0].paper_tmacs:.1f} TMAC (50 steps, paper convention), "
              f"{costs[1].paper_tmacs:.1f} (100), true {costs[0].true_tflops:.1f} TFLOP, "
              f"{costs[0].params / 1e9:.3f} B params")

    if not args.skip_training:
        print(f"Table 8 training-step counts at {TRAINING_SETTING.height}x{TRAINING_SETTING.width}x"
              f"{TRAINING_SETTING.num_frames}, batch 1")
        for choices in TRAINING_GENERATORS:
            present, _ = resolve_generators(choices)
            if not present:
                print(f"  {' / '.join(choices)}: not registered (skipped)")
                continue
            try:
                stages = record_training(rec, present[0])
                print(f"  {present[0]}: {', '.join(stages)}")
            except UnsupportedSettingError as err:
                skipped.append(f"{present[0]} (training): {err}")
                print(f"  {present[0]}: unsupported at 512x512x16 ({err})")

    if not args.count_only:
        print(f"Measured sampling on {device_name(device)}, {dtype}, {setting.describe()}, "
              f"batch {batch_sizes}, warm-up {timing.warmup}, repeats {timing.min_repeats}")
        for name in main:
            try:  # a setting the architecture refuses is found on the meta build, before any real weights
                build(name, device="meta").cost_stages(num_frames=setting.num_frames, height=setting.height,
                                                       width=setting.width, steps=setting.steps)
                measure_generator(rec, name, setting, batch_sizes=batch_sizes, device=device, dtype=dtype,
                                  timing=timing)
            except UnsupportedSettingError as err:
                skipped.append(f"{name} (measured): {err}")
                print(f"  {name}: unsupported at {setting.describe()} ({err})")
                rec.add(generator=name, metric="unsupported", value=1.0, unit="flag", setting=setting,
                        device=device, dtype=dtype, protocol="sample()", notes=str(err))

    if skipped:
        meta = {"skipped": skipped}
        rec.writer.write_meta({**_read_meta(rec), **meta})
    if not args.no_render:
        from cmdbench.bench.efficiency_report import render

        for path in render(args.results):
            print(f"  wrote {path}")
    return 0


def _read_meta(rec: Recorder) -> dict:
    import json

    try:
        return json.loads(rec.writer.meta_path.read_text())
    except (OSError, ValueError):
        return {}


if __name__ == "__main__":
    raise SystemExit(run(sys.argv[1:]))
