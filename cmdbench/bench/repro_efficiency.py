"""Reproduction "efficiency": CMD's cost tables (Tables 8, 9, 10) and figures (1, 5, 6).

``cmdbench reproduce efficiency`` / ``nox -s reproduce -- efficiency``:

1. **counts** (meta device, any machine, seconds per model): for CMD, ModelScope, LVDM (+ every other
   registered baseline that takes the setting) at 512x1024x16: paper-convention TMACs at 50 and 100
   steps, true FLOPs with guidance, text encoder and decoders, parameters, per stage (Tables 9, 10);
   training-step cost per component at 512x512x16, batch 1 (Table 8);
2. **predictions** without a GPU (fake tensors, :mod:`cmdbench.metrics.memory_prediction` and
   :mod:`cmdbench.metrics.roofline`): peak CUDA memory of sampling at the paper setting in fp16, batch 1
   and 4, per stage; roofline sampling time per video on the GPUs of ``gpu_specs.csv`` (A100-40GB, the
   paper's, H100-SXM, H200), per stage; peak memory of one mixed-precision training step per Table 8
   network; the cost-scaling sweep (:mod:`cmdbench.bench.scaling`);
3. **measurements** of ``sample()`` (time, peak memory, per stage): on CUDA at the paper setting in
   half precision, batch 1 and 4; without CUDA on the CPU at a reduced setting (:data:`CPU_SETTING`,
   full architectures, random weights, float32, batch 1), all models in the same run;
4. records under ``results/records/efficiency-*.csv``, then tables and figures rendered from the
   records and ``results/paper/`` by :mod:`cmdbench.bench.efficiency_report`.

Metric names (one meaning each, shared with ``cmdbench bench``): ``sampling_time`` = seconds per video of
the whole ``sample()`` call, ``sampling_time_excl_vae_decoder`` = the same minus the SD VAE decoder stage
(Table 9's reading), ``stage_time/<stage>``, ``time_per_step``, ``peak_memory`` = absolute peak of one call
in GiB (``protocol`` says ``cuda-allocated`` or ``cpu-rss``), ``peak_memory_excl_vae_decoder``,
``peak_memory/<stage>`` (absolute peak while the stage runs); ``predicted_weights_memory`` (GiB),
``predicted_peak_memory[/<stage>]`` (GiB), ``predicted_time/<gpu>[/<stage>]`` (s/video),
``predicted_train_peak_memory/<network>`` (GiB).

Generators are used only through the registry and their ``cost_stages`` / ``sample`` / ``stage_hook``.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cmdbench.bench.reproduce import REPRODUCTIONS
from cmdbench.bench.results import RecordWriter, config_hash, make_row, new_run_id, now_utc
from cmdbench.bench.scaling import (
    DEFAULT_FRAMES,
    DEFAULT_SIZES,
    SCALING_GENERATORS,
    SCALING_TAG,
    ScalingPoint,
    scaling_grid,
    sweep,
)
from cmdbench.config import TimingConfig
from cmdbench.env import capture_environment, cuda_version, device_name, git_info
from cmdbench.interfaces import GeneratorSpec, UnsupportedSettingError
from cmdbench.metrics.efficiency import (
    GeneratorCost,
    SamplingMeasurement,
    count_flops,
    count_generator_cost,
    count_params,
    measure_sampling,
    training_stages,
)
from cmdbench.metrics.memory_prediction import (
    GIB,
    MemoryPrediction,
    predict_sampling_memory,
    predict_training_memory,
)
from cmdbench.metrics.roofline import (
    DEFAULT_GPUS,
    GPUSpec,
    TimePrediction,
    load_gpu_specs,
    predict_sampling_cost,
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
# Predictions: fake CUDA tensors, attention through the kernel an sm80+ GPU picks, allocator-rounded, with
# the A100's (sm80) cuBLAS workspaces (Hopper's are 24 MiB larger); time: per-op roofline with PyTorch's
# TF32 defaults (cuDNN on, matmul off).
MEMORY_PROTOCOL = "fake-cuda sdpa=auto workspace=sm80"
TIME_PROTOCOL = "roofline fake-cuda sdpa=auto tf32_conv=1 tf32_matmul=0"
TRAIN_PRECISION = "amp-fp16"
TRAIN_PROTOCOL = f"fake-tensor training {TRAIN_PRECISION} adam sdpa=auto workspace=sm80"
PREDICT_BATCH_SIZES = (1, 4)
# Training-step memory is predicted for CMD's networks by default (~10 s each); the baselines' full UNets take
# ~20-40 s each on 2 cores (``--train-memory`` adds them).
TRAIN_MEMORY_GENERATORS = ("cmd-webvid-512x1024", "cmd-sd15-512")


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
# Full architectures at 128x128x16, 2 DDIM steps, batch 1, float32, one untimed warm-up call and one timed
# call (CPU_WARMUP): CMD (sizes in multiples of 64 for the SD 2.1 presets), ModelScope and LVDM all take it, so
# all three are timed side by side in the same run. It was 256x256x16 without a warm-up (ModelScope/CMD 11.2x
# there), which alone took ~10 of the reproduction's ~12 minutes on 2 cores (the SD VAE decoder on 16 frames,
# which the paper's time excludes but every sample() call pays, was ~40% of it). At 128x128 a call costs about
# a quarter of that; the warm-up call is needed at this size: without it, first-call costs (oneDNN primitive
# creation per layer shape, lazy initialisation: CMD's text encoder 3.4 s on its first call, 0.26 s after)
# dominate and weigh most on CMD's five networks (ModelScope/CMD 0.96x without, 5.0x with the warm-up on an
# idle machine). The whole main job (counts, GPU predictions, scaling sweep, measurements) then takes ~5
# minutes on 2 idle cores. The GPU reading of Table 9 comes from the predictions and a GPU run (``nox -s
# gpu_check``); the CPU times are a same-machine sanity check whose ratios are compressed at small sizes by
# per-layer fixed costs. A generator that refuses a setting is recorded as unsupported.
CPU_SETTING = Setting(16, 128, 128, 2)
CPU_WARMUP = 1
EXCLUDED_STAGES = ("vae_decoder",)  # Table 9 leaves the SD decoder out


class Recorder:
    """Rows of one run with the shared fields filled in, written as they come.

    ``device``: "meta" for device-independent figures (counts and fake-tensor predictions), else the
    measuring device; each row's ``config_hash`` comes from :func:`cmdbench.bench.results.config_hash`.
    """

    def __init__(self, records: Path, *, prefix: str = "efficiency") -> None:
        self.run_id = new_run_id(prefix)
        self.writer = RecordWriter(records, self.run_id)
        self.created = now_utc()
        self.sha, self.dirty = git_info()
        self.rows: list[dict[str, Any]] = []
        self._env: dict[tuple[str, str], dict] = {}

    def environment(self, device: str, dtype: str) -> dict:
        if (device, dtype) not in self._env:
            self._env[(device, dtype)] = capture_environment(device, dtype)
        return self._env[(device, dtype)]

    def add(self, *, generator: str, metric: str, value: float, unit: str, setting: Setting,
            batch_size: int = 1, protocol: str = COUNT_PROTOCOL, device: str = "meta", dtype: str = "float32",
            std: float | None = None, n: int | None = None, notes: str = "", conditioning: str | None = None,
            guidance_scale: float | None = None, values: Sequence[float] | None = None) -> None:
        dev_name = "meta" if device == "meta" else device_name(device)
        row = make_row(
            run_id=self.run_id, created_utc=self.created, source="measured", git_sha=self.sha,
            git_dirty=self.dirty, generator=generator, checkpoint="random-init", conditioning=conditioning,
            protocol=protocol, metric=metric, value=float(value), std=std, n=n, unit=unit, higher_is_better=False,
            num_frames=setting.num_frames, height=setting.height, width=setting.width, steps=setting.steps,
            guidance_scale=guidance_scale, batch_size=batch_size, dtype=dtype, device_name=dev_name,
            torch_version=torch.__version__, cuda_version=cuda_version(), notes=notes, values=values,
        )
        row["config_hash"] = config_hash(row, self.environment(device, dtype))
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
                notes="CMD convention (fvcore's count): one conditional denoiser pass per step, batch 1, fused "
                      "attention, text encoder and SD decoder excluded")
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


def record_training(rec: Recorder, name: str, setting: Setting = TRAINING_SETTING) -> list[str]:
    """Table 8: per trained network, forward MACs (paper's inferred convention) and forward+backward FLOPs."""
    gen = build(name, device="meta")
    stages, source = training_stages(gen, num_frames=setting.num_frames, height=setting.height, width=setting.width)
    cond = getattr(gen, "conditioning", None)
    for st in stages:
        fwd = count_flops(st.module, st.make_inputs(1), forward=st.forward)
        both = count_flops(st.module, st.make_inputs(1), forward=st.forward, backward=True)
        common = dict(generator=name, setting=setting, conditioning=cond, protocol=f"{COUNT_PROTOCOL}/training")
        rec.add(metric=f"train_tmacs_forward/{st.name}",
                value=fwd.paper_macs / 1e12, unit="TMAC",
                notes=f"one forward, batch 1, fvcore's count (fused attention excluded; the paper's convention, "
                      f"cmdbench.metrics.efficiency); from {source}",
                **common)
        rec.add(metric=f"train_tflops_true/{st.name}", value=both.flops / 1e12, unit="TFLOP",
                notes=f"forward+backward, 2*MAC incl. attention, batch 1, no optimiser; from {source}", **common)
        rec.add(metric=f"train_params/{st.name}", value=count_params(st.module) / 1e9, unit="B",
                notes=f"from {source}", **common)
    return [st.name for st in stages]


# --- predicting (fake tensors: no GPU, no weights) -------------------------------------------------------


def record_memory_prediction(rec: Recorder, name: str, mem: MemoryPrediction, setting: Setting, *,
                             protocol: str = MEMORY_PROTOCOL, conditioning: str | None = None) -> None:
    """``predicted_peak_memory`` (whole call), ``predicted_weights_memory`` and ``predicted_peak_memory/<stage>``,
    GiB."""
    common = dict(generator=name, setting=setting, batch_size=mem.batch_size, dtype=mem.dtype, protocol=protocol,
                  conditioning=conditioning, n=1)
    rec.add(metric="predicted_peak_memory", value=mem.peak / GIB, unit="GiB",
            notes=f"max over stages; weights {mem.weights / GIB:.3f} GiB, cuBLAS workspaces "
                  f"{mem.workspace / 2**20:.2f} MiB; segment-rounded (reserved) estimate "
                  f"{mem.peak_reserved / GIB:.3f} GiB; CUDA context and cuDNN workspaces not included", **common)
    rec.add(metric="predicted_weights_memory", value=mem.weights / GIB, unit="GiB",
            notes="parameters and buffers of every network the sampler keeps on the GPU, allocator-rounded",
            **common)
    for st in mem.stages:
        rec.add(metric=f"predicted_peak_memory/{st.stage}", value=mem.stage_peak(st.stage) / GIB, unit="GiB",
                notes=f"call batch {st.batch}; activations {st.activations / GIB:.3f} GiB; attention "
                      + ", ".join(f"{k}={v}" for k, v in sorted(st.attention.items())), **common)


def record_time_prediction(rec: Recorder, name: str, pred: TimePrediction, setting: Setting,
                           gpus: Sequence[GPUSpec], *, conditioning: str | None = None) -> None:
    """``predicted_time/<gpu>`` (whole call) and ``predicted_time/<gpu>/<stage>``, seconds per video."""
    common = dict(generator=name, setting=setting, batch_size=pred.batch_size, dtype=pred.dtype,
                  protocol=TIME_PROTOCOL, conditioning=conditioning, n=1)
    for gpu in gpus:
        rec.add(metric=f"predicted_time/{gpu.name}", value=pred.time(gpu), unit="s/video",
                notes=f"roofline sum over ops and calls; {gpu.name}: {gpu.fp16_bf16_dense_tflops:g} TFLOP/s fp16, "
                      f"{gpu.memory_bandwidth_tbs:g} TB/s; launch overheads not modelled", **common)
        for st in pred.stages:
            rec.add(metric=f"predicted_time/{gpu.name}/{st.stage}", value=st.time_per_video(gpu), unit="s/video",
                    notes=f"{st.ops} ops per call x {st.calls} calls, call batch {st.batch}", **common)


def record_predictions(rec: Recorder, name: str, setting: Setting = PAPER_SETTING, *,
                       batch_sizes: Sequence[int] = PREDICT_BATCH_SIZES, gpus: Sequence[GPUSpec] = (),
                       dtype: str = "float16", mixed_precision: bool = False,
                       ) -> dict[int, tuple[MemoryPrediction, TimePrediction | None]]:
    """Predicted memory per batch size and (at batch 1) roofline time of ``name`` at ``setting``.

    ``mixed_precision``: float32 weights under CUDA autocast to ``dtype`` (memory only; protocol suffix
    ``amp``) instead of ``dtype`` weights.
    """
    out: dict[int, tuple[MemoryPrediction, TimePrediction | None]] = {}
    for b in batch_sizes:
        gen = build(name, device="meta", dtype=dtype)
        cond = getattr(gen, "conditioning", None)
        kw = dict(num_frames=setting.num_frames, height=setting.height, width=setting.width, steps=setting.steps,
                  batch_size=b, dtype=dtype, name=name)
        if mixed_precision:
            mem, pred = predict_sampling_memory(gen, **(kw | {"dtype": "float32"}), autocast=dtype), None
            record_memory_prediction(rec, name, mem, setting, conditioning=cond,
                                     protocol=f"{MEMORY_PROTOCOL} amp={dtype}")
            out[b] = (mem, pred)
            continue
        if b == 1 and gpus:
            mem, pred = predict_sampling_cost(gen, **kw)
            record_time_prediction(rec, name, pred, setting, gpus, conditioning=cond)
        else:
            mem, pred = predict_sampling_memory(gen, **kw), None
        record_memory_prediction(rec, name, mem, setting, conditioning=cond)
        out[b] = (mem, pred)
        del gen
        gc.collect()
    return out


def record_training_memory(rec: Recorder, name: str, setting: Setting = TRAINING_SETTING,
                           precision: str = TRAIN_PRECISION) -> list[str]:
    """Table 8's memory column: predicted peak of one training step per network (Adam, no EMA), GiB."""
    probe = build(name, device="meta")
    names = [s.name for s in training_stages(probe, num_frames=setting.num_frames, height=setting.height,
                                             width=setting.width)[0]]
    cond = getattr(probe, "conditioning", None)
    for stage in names:
        mem = predict_training_memory(build(name, device="meta"), stage, num_frames=setting.num_frames,
                                      height=setting.height, width=setting.width, precision=precision)
        rec.add(generator=name, metric=f"predicted_train_peak_memory/{stage}", value=mem.total_peak / GIB,
                unit="GiB", setting=setting, protocol=TRAIN_PROTOCOL, conditioning=cond, n=1,
                dtype="float32" if precision.startswith("amp") else precision,
                notes=f"peak in {mem.peak_phase}; weights {mem.weights / GIB:.3f}, gradients "
                      f"{mem.gradients / GIB:.3f}, Adam moments {mem.optimizer_states / GIB:.3f} GiB; forward/"
                      f"backward/optimizer peaks " + "/".join(f"{v / GIB:.2f}" for v in mem.phase_peaks.values())
                      + " GiB; no EMA copy, no frozen networks")
        gc.collect()
    return names


def record_scaling(rec: Recorder, points: Sequence[ScalingPoint], gpus: Sequence[GPUSpec]) -> None:
    """Rows of a scaling sweep, protocols tagged :data:`~cmdbench.bench.scaling.SCALING_TAG`."""
    for p in points:
        setting = Setting(p.num_frames, p.height, p.width, 50 if p.time is None else p.time.steps)
        if p.status != "ok":
            rec.add(generator=p.generator, metric="unsupported", value=1.0, unit="flag", setting=setting,
                    protocol=f"{COUNT_PROTOCOL}/{SCALING_TAG}", notes=p.reason)
            continue
        assert p.cost is not None and p.memory is not None and p.time is not None
        rec.add(generator=p.generator, metric="tmacs_paper", value=p.cost.paper_tmacs, unit="TMAC", setting=setting,
                protocol=f"{COUNT_PROTOCOL}/{SCALING_TAG}", conditioning=p.conditioning,
                notes="CMD convention (Table 9), 50 steps")
        record_memory_prediction(rec, p.generator, p.memory, setting, protocol=f"{MEMORY_PROTOCOL}/{SCALING_TAG}",
                                 conditioning=p.conditioning)
        common = dict(generator=p.generator, setting=setting, dtype=p.time.dtype, conditioning=p.conditioning,
                      protocol=f"{TIME_PROTOCOL}/{SCALING_TAG}", n=1, unit="s/video")
        for gpu in gpus:
            rec.add(metric=f"predicted_time/{gpu.name}", value=p.time.time(gpu), **common)
            for st in p.time.stages:
                rec.add(metric=f"predicted_time/{gpu.name}/{st.stage}", value=st.time_per_video(gpu), **common)


# --- measuring ------------------------------------------------------------------------------------------


def _per_video(seconds: Sequence[float], batch_size: int) -> list[float]:
    return [t / batch_size for t in seconds]


def record_measurement(rec: Recorder, name: str, m: SamplingMeasurement, setting: Setting, *, batch_size: int,
                       device: str, dtype: str, timing: TimingConfig, guidance: float | None,
                       conditioning: str | None) -> None:
    """Rows of one measured ``sample()`` setting under the shared metric names (module docstring).

    Times are per video (a call's time / batch size): value = median over timed calls, std = sample
    standard deviation (empty for one call), n = timed calls, ``values`` = the raw per-video times.
    Stage times are medians over calls (their per-call spread is not kept: std empty).
    """
    cuda = device.startswith("cuda")
    protocol = f"{'cuda_events' if cuda else 'perf_counter'} warmup={timing.warmup} min_repeats={timing.min_repeats}"
    common = dict(generator=name, setting=setting, batch_size=batch_size, device=device, dtype=dtype,
                  conditioning=conditioning, guidance_scale=guidance)
    if m.status == "oom":
        rec.add(metric="out_of_memory", value=1.0, unit="flag", protocol=protocol, notes=m.error, **common)
        return
    raw = _per_video(m.time.raw, batch_size)
    n = len(raw)
    std = statistics.stdev(raw) if n >= 2 else None
    excluded = [s for s in m.excluded_stages if s in m.stage_times]
    rec.add(metric="sampling_time", value=statistics.median(raw), unit="s/video", protocol=protocol, std=std, n=n,
            values=raw, notes="whole sample() call per video (text encoder .. last decoder)", **common)
    excl = [(t - sum(m.stage_times[s] for s in excluded)) / batch_size for t in m.time.raw]
    rec.add(metric="sampling_time_excl_vae_decoder", value=statistics.median(excl), unit="s/video", protocol=protocol,
            std=statistics.stdev(excl) if n >= 2 else None, n=n, values=excl,
            notes=f"whole call minus the median time of {'+'.join(excluded) or 'no stage'} (Table 9's reading)",
            **common)
    for st, t in m.stage_times.items():
        rec.add(metric=f"stage_time/{st}", value=t / batch_size, unit="s/video", protocol=protocol, n=n,
                notes="median over timed calls, per video", **common)
    denoise = sum(t for st, t in m.stage_times.items() if st not in ("text_encoder", "decoder", "vae_decoder"))
    rec.add(metric="time_per_step", value=denoise / setting.steps, unit="s/step", protocol=protocol, n=n,
            notes="denoising stages' median time per call / steps", **common)
    if m.peak_memory is not None:
        label = "cuda-allocated" if m.memory_label.startswith("cuda") else "cpu-rss"
        base = f"before sampling {(m.baseline_memory or 0) / GIB:.3f} GiB"
        rec.add(metric="peak_memory", value=m.peak_memory / GIB, unit="GiB", protocol=label,
                notes=f"absolute peak of one sample() call ({m.memory_label}); {base}", **common)
        kept = [p for st, p in m.stage_peaks.items() if st not in m.excluded_stages]
        if kept:
            rec.add(metric="peak_memory_excl_vae_decoder", value=max(kept) / GIB, unit="GiB", protocol=label,
                    notes=f"peak over the stages except {'+'.join(m.excluded_stages)}; {base}", **common)
        for st, p in m.stage_peaks.items():
            rec.add(metric=f"peak_memory/{st}", value=p / GIB, unit="GiB", protocol=label,
                    notes="absolute peak while the stage runs", **common)


def measure_generator(rec: Recorder, name: str, setting: Setting, *, batch_sizes: Sequence[int], device: str,
                      dtype: str, timing: TimingConfig, log: Any = print) -> None:
    """Build ``name`` with random weights on ``device`` and measure ``sample()`` per batch size."""
    gen = build(name, device=device, dtype=dtype)
    if hasattr(gen, "motion_steps_for"):  # Table 9 reads "steps" as every stage's steps (CMD: content and motion)
        gen.motion_steps = setting.steps
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
                log(f"  {name} batch {b}: {m.time_excl / b:.2f} s/video excl. SD decoder "
                    f"({m.time.median / b:.2f} s whole call), peak {m.peak_memory / GIB:.2f} GiB {m.memory_label}")
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
    p.add_argument("--skip-predictions", action="store_true",
                   help="skip the fake-tensor memory and roofline time predictions (and the scaling sweep)")
    p.add_argument("--gpus", default=",".join(DEFAULT_GPUS),
                   help="GPUs of gpu_specs.csv for predicted times (default: %(default)s)")
    p.add_argument("--train-memory", default=",".join(TRAIN_MEMORY_GENERATORS),
                   help="Table 8 generators whose training-step memory is predicted (default: %(default)s; "
                        "'all' for every Table 8 row)")
    p.add_argument("--skip-scaling", action="store_true", help="skip the cost-scaling sweep")
    p.add_argument("--scaling-generators", default=",".join(SCALING_GENERATORS),
                   help="generators of the scaling sweep (default: %(default)s)")
    p.add_argument("--scaling-frames", default=",".join(map(str, DEFAULT_FRAMES)),
                   help="frame counts of the sweep, at 512x512 (default: %(default)s)")
    p.add_argument("--scaling-sizes", default=",".join(map(str, DEFAULT_SIZES)),
                   help="square frame sizes of the sweep, at 16 frames (default: %(default)s)")
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


def parse_ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in _split(text)]
    except ValueError:
        raise ValueError(f"{flag} {text!r}: write comma-separated positive integers, e.g. 8,16,32") from None
    if not values or any(v < 1 for v in values):
        raise ValueError(f"{flag} {text!r}: write comma-separated positive integers, e.g. 8,16,32")
    return values


def select_gpus(text: str) -> list[GPUSpec]:
    """The named GPUs of ``gpu_specs.csv`` (an unknown name raises, listing the known ones)."""
    specs = load_gpu_specs()
    names = _split(text)
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise ValueError(f"--gpus: unknown {unknown}; gpu_specs.csv lists {sorted(specs)}")
    return [specs[n] for n in names]


def _split(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


class Phases:
    """Wall time of each phase of the run, printed as it ends and kept for the run's JSON."""

    def __init__(self, log: Callable[[str], None] = print) -> None:
        self.seconds: dict[str, float] = {}
        self.log = log
        self._t0 = time.perf_counter()

    def done(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self._t0, 1)
        self.log(f"  [{name}: {now - self._t0:.0f} s]")
        self._t0 = now


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
    gpus = select_gpus(args.gpus)
    train_memory = set(_split(args.train_memory))
    grid = scaling_grid(parse_ints(args.scaling_frames, "--scaling-frames"),
                        parse_ints(args.scaling_sizes, "--scaling-sizes"))

    main, missing = resolve_generators(_split(args.generators))
    extra, missing_extra = resolve_generators([g for g in _split(args.extra) if g not in main])
    scaling_gens, missing_scaling = resolve_generators(_split(args.scaling_generators))
    rec = Recorder(args.results / "records")
    meta: dict[str, Any] = {
        "reproduction": "efficiency", "argv": list(argv), "measure_setting": vars(setting), "batch_sizes": batch_sizes,
        "timing": vars(timing), "main": main, "extra": extra, "gpus": [g.name for g in gpus],
        "missing": sorted(set(missing + missing_extra + missing_scaling)),
        "environment": capture_environment(device, dtype)}
    rec.writer.write_meta(meta)
    print(f"efficiency: run {rec.run_id}; records in {rec.writer.csv_path}")
    if meta["missing"]:
        print(f"  not registered (skipped): {', '.join(meta['missing'])}")
    skipped: list[str] = []
    phases = Phases()

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
    phases.done("counts")

    if not args.skip_predictions:
        print(f"Table 9 predictions at {PAPER_SETTING.describe()}, fp16, batch {list(PREDICT_BATCH_SIZES)} "
              f"(fake CUDA tensors; times on {', '.join(g.name for g in gpus)})")
        a100 = next((g for g in gpus if g.name == "A100-40GB"), gpus[0] if gpus else None)
        for name in main:
            try:
                preds = record_predictions(rec, name, PAPER_SETTING, gpus=gpus)
            except UnsupportedSettingError as err:
                skipped.append(f"{name} (predicted): {err}")
                print(f"  {name}: unsupported ({err})")
                continue
            line = ", ".join(f"B={b} {m.peak_excluding(EXCLUDED_STAGES) / GIB:.2f} GiB" for b, (m, _) in preds.items())
            t = preds.get(1, (None, None))[1]
            if t is not None and a100 is not None:
                line += f"; {t.time(a100, exclude=EXCLUDED_STAGES):.2f} s/video on {a100.name}"
            print(f"  {name}: {line} (excl. SD VAE decoder)")
        phases.done("predictions")

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
                if not args.skip_predictions and (args.train_memory == "all" or present[0] in train_memory):
                    record_training_memory(rec, present[0])
                print(f"  {present[0]}: {', '.join(stages)}")
            except UnsupportedSettingError as err:
                skipped.append(f"{present[0]} (training): {err}")
                print(f"  {present[0]}: unsupported at 512x512x16 ({err})")
        phases.done("training")

    if not args.skip_predictions and not args.skip_scaling and scaling_gens:
        print(f"Cost scaling: {len(scaling_gens)} generators x {len(grid)} settings")
        record_scaling(rec, sweep(scaling_gens, grid), gpus)
        phases.done("scaling")

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
        phases.done("measurements")

    if not args.no_render:
        from cmdbench.bench.efficiency_report import render

        for path in render(args.results):
            print(f"  wrote {path}")
        phases.done("render")
    rec.writer.write_meta({**meta, "skipped": skipped, "phase_seconds": phases.seconds})
    return 0


if __name__ == "__main__":
    raise SystemExit(run(sys.argv[1:]))
