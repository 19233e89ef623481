"""The GPU check in one command (``nox -s gpu_check``): Table 9 measured on a CUDA device, beside predictions.

What it does, each part in its own guarded step (a failure is recorded with its error and the rest runs):

0. **preflight**: Python, torch, CUDA device and capability, and which of the modules the check path
   imports are present (``diffusers``, ``einops``, ``clip`` + ``ftfy``, ``PIL``, ``torchvision``,
   ``transformers``, ``accelerate``; ``pandas`` is optional) -- printed and saved in the run's JSON;
1. **Table 9** for CMD, ModelScope and LVDM: the full architectures with random weights on the GPU, fp16,
   at the paper setting (512x1024x16, 50 DDIM steps), batch 1 and 4, timed with
   :func:`cmdbench.metrics.efficiency.measure_sampling` (CUDA events, one warm-up call, repeated to 15 s
   of timed work or 3 calls); out-of-memory is recorded per row (``out_of_memory``);
2. **metric throughput**: I3D (the FVD extractor's full architecture, fp32 as FVD runs it) and CLIP
   ViT-B/32 (fp16, every frame, as CLIPSIM runs it) on 2,048 clips of 16 frames at 224x224;
3. **predictions** (guarded import of :mod:`cmdbench.metrics.memory_prediction` /
   :mod:`cmdbench.metrics.roofline`): fake-tensor peak memory and roofline time of the same settings for
   the GPU that ran (compute capability from the device; spec by name: A100 -> A100-40GB, H100 ->
   H100-SXM, H200 -> H200), printed beside the measurements and the paper's Table 9.

Rows (``results/records/gpu-<stamp>.csv`` by default, ``--records`` elsewhere) use the shared metric names
(``sampling_time``, ``sampling_time_excl_vae_decoder``, ``stage_time/<stage>``, ``time_per_step`` in
s/video, ``peak_memory`` in GiB with protocol ``cuda-allocated``; ``predicted_peak_memory``,
``predicted_time/<gpu>``; ``throughput/i3d`` and ``throughput/clip`` in clips/s) with the device named.
Planned time on one H100/H200: about 6 minutes (ModelScope and LVDM at batch 4 dominate); ``--budget-s``
(default 480) skips the steps that would start after it.

**The GPU machine** has its own Python (torch, transformers, accelerate) and no package index. The
check runs from the checkout (``python -m`` puts it on ``sys.path``; no install needed) and installs the
pure-Python wheels it carries into ``<wheels>/site`` (``pip install --no-deps --no-index --target``, put
first on ``sys.path``; the machine's own packages are not touched). Fetch them here, before the run, into
``.gpu_wheels/`` (kept out of git; carried with the run)::

    pip download --no-deps -d .gpu_wheels diffusers==0.42.1 einops==0.8.2 clip-anytorch==2.6.0 \
        ftfy==6.3.1 wcwidth==0.7.0

(7.6 MB) and run, on the GPU machine, from the repository root::

    python -m cmdbench.bench.gpu_check --wheels .gpu_wheels --records "$OUT/records"

``clip-anytorch`` imports ``torchvision`` and ``PIL`` at import time, binary wheels that cannot be carried
for an unknown interpreter: the preflight says whether the machine has them (the text generators need
``clip`` for their random-weight tokenizer; without it those steps fail, recorded, and the rest runs).

**Rehearsal** on a CPU with the same script and code path: ``python -m cmdbench.bench.gpu_check --device
cpu --tiny`` (the miniatures at their own settings, float32, batch 1 and 2, 8 clips), run by
``tests/bench/test_gpu_check.py`` so the first GPU run cannot fail on plumbing.
"""

from __future__ import annotations

import argparse
import csv
import gc
import importlib
import json
import platform
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
TABLE9 = ("cmd-webvid-512x1024", "modelscope-t2v", "lvdm-t2v")
PAPER_METHOD = {"cmd-webvid-512x1024": "CMD", "modelscope-t2v": "ModelScope", "lvdm-t2v": "LVDM"}
PAPER_SETTING = (16, 512, 1024, 50)       # frames, height, width, steps
CHECK_MODULES = ("numpy", "transformers", "accelerate", "diffusers", "einops", "clip", "ftfy", "PIL",
                 "torchvision", "pandas", "scipy")
GPU_SPEC_NAMES = (("H200", "H200"), ("H100", "H100-SXM"), ("A100", "A100-40GB"))
EXCLUDED = ("vae_decoder",)               # Table 9 excludes the SD VAE decoder
GIB = 2**30


# --- Steps ----------------------------------------------------------------------------------------------


@dataclass
class Step:
    """One guarded step: ``status`` is ok, failed or skipped; ``error`` the reason."""

    name: str
    status: str = "pending"
    seconds: float = 0.0
    error: str = ""


@dataclass
class Check:
    """The run's state: steps, rows, the summary lines to print, the clock."""

    budget_s: float
    log: Callable[[str], None] = print
    steps: list[Step] = field(default_factory=list)
    summary: list[dict[str, Any]] = field(default_factory=list)
    start: float = field(default_factory=time.perf_counter)

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` as a step; an exception is recorded (with the traceback's last line) and swallowed."""
        step = Step(name)
        self.steps.append(step)
        if time.perf_counter() - self.start > self.budget_s:
            step.status, step.error = "skipped", f"time budget of {self.budget_s:.0f} s spent"
            self.log(f"[skip] {name}: {step.error}")
            return None
        t0 = time.perf_counter()
        try:
            out = fn()
            step.status = "ok"
            return out
        except Exception as err:  # noqa: BLE001 - the point of a guarded step
            step.status, step.error = "failed", f"{type(err).__name__}: {err}"
            self.log(f"[fail] {name}: {step.error}\n{traceback.format_exc(limit=3)}")
            return None
        finally:
            step.seconds = time.perf_counter() - t0
            if step.status == "ok":
                self.log(f"[ok]   {name} ({step.seconds:.1f} s)")
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def preflight(device: str) -> dict[str, Any]:
    """Interpreter, torch, device and which modules of the check path import (version or the error)."""
    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(device)
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
        info["memory_gib"] = torch.cuda.get_device_properties(device).total_memory / GIB
    modules = {}
    for name in CHECK_MODULES:
        try:
            mod = importlib.import_module(name)
            modules[name] = str(getattr(mod, "__version__", "present"))
        except Exception as err:  # noqa: BLE001 - any import failure is what the preflight reports
            modules[name] = f"MISSING ({type(err).__name__}: {err})"
    info["modules"] = modules
    return info


# --- Records --------------------------------------------------------------------------------------------


class Rows:
    """Rows of the run with the shared fields filled in, appended as they come."""

    def __init__(self, records: Path, device: str, dtype: str) -> None:
        from cmdbench.bench.results import RecordWriter, new_run_id, now_utc
        from cmdbench.env import capture_environment

        self.env = capture_environment(device, dtype)
        self.run_id = new_run_id("gpu")
        self.writer = RecordWriter(records, self.run_id)
        self.created = now_utc()
        self.dtype = dtype

    def add(self, *, generator: str, metric: str, value: float, unit: str, setting: tuple[int, int, int, int],
            batch_size: int = 1, protocol: str = "", values: Sequence[float] | None = None,
            higher_is_better: bool | None = False, notes: str = "", environment: dict | None = None,
            dtype: str | None = None, conditioning: str | None = None) -> None:
        from cmdbench.bench.results import config_hash, make_row

        env = environment or self.env
        frames, height, width, steps = setting
        fields = dict(run_id=self.run_id, created_utc=self.created, source="measured", git_sha=self.env["git_sha"],
                      git_dirty=self.env["git_dirty"], generator=generator, checkpoint="random-init",
                      conditioning=conditioning, protocol=protocol, metric=metric, unit=unit,
                      higher_is_better=higher_is_better, num_frames=frames, height=height, width=width, steps=steps,
                      batch_size=batch_size, dtype=dtype or self.dtype, device_name=env["device_name"],
                      torch_version=self.env["torch_version"], cuda_version=self.env["cuda_version"], notes=notes)
        vals = [float(v) for v in values] if values else None
        if vals and len(vals) > 1:
            import statistics

            fields.update(std=statistics.stdev(vals), n=len(vals), values=vals)
        elif vals:
            fields.update(n=1)
        self.writer.append([make_row(**fields, value=float(value), config_hash=config_hash(fields, env))])


# --- Table 9 --------------------------------------------------------------------------------------------


def measure_table9(name: str, rows: Rows, check: Check, *, device: str, dtype: str, tiny: bool,
                   batch_sizes: Sequence[int]) -> None:
    """Build ``name`` (random weights) and measure ``sample()`` per batch size, each batch its own step."""
    from cmdbench.config import TimingConfig
    from cmdbench.interfaces import GeneratorSpec
    from cmdbench.metrics.efficiency import measure_sampling
    from cmdbench.registry import GENERATORS

    gen = check.run(f"{name}: build on {device} ({dtype}{', tiny' if tiny else ''})",
                    lambda: GENERATORS.get(name)(GeneratorSpec(checkpoint=None, device=device, dtype=dtype, tiny=tiny)))
    if gen is None:
        return
    d = gen.defaults
    setting = (d.num_frames, d.height, d.width, d.steps) if tiny else PAPER_SETTING
    timing = TimingConfig(warmup=1, min_repeats=1, min_seconds=15.0, max_repeats=3)
    protocol = f"{'cuda_events' if device.startswith('cuda') else 'perf_counter'} warmup=1 until 15 s or 3 calls"
    for b in batch_sizes:
        def one(b: int = b) -> None:
            m = measure_sampling(gen, num_frames=setting[0], height=setting[1], width=setting[2], steps=setting[3],
                                 batch_size=b, guidance_scale=d.guidance_scale, timing=timing, device=device,
                                 excluded_stages=EXCLUDED)
            common = dict(generator=name, setting=setting, batch_size=b, conditioning=gen.conditioning)
            if m.status == "oom":
                rows.add(metric="out_of_memory", value=1.0, unit="flag", notes=m.error, higher_is_better=None,
                         **common)
                check.summary.append({"generator": name, "batch": b, "status": "out of memory"})
                return
            per_video = [t / b for t in m.time.raw]
            rows.add(metric="sampling_time", value=m.time.median / b, unit="s/video", values=per_video,
                     protocol=protocol, notes="whole sample() call per video", **common)
            excl = m.time_excl / b
            rows.add(metric="sampling_time_excl_vae_decoder", value=excl, unit="s/video", protocol=protocol,
                     notes="median call minus the median SD VAE decoder stage (Table 9's reading), per video",
                     **common)
            for st, t in m.stage_times.items():
                rows.add(metric=f"stage_time/{st}", value=t / b, unit="s/video", protocol=protocol,
                         notes="median over timed calls, per video", **common)
            denoise = sum(t for st, t in m.stage_times.items() if st not in ("text_encoder", "decoder", "vae_decoder"))
            rows.add(metric="time_per_step", value=denoise / b / setting[3], unit="s/step", protocol=protocol,
                     notes="denoising stages per video / steps", **common)
            label = {"cuda_max_memory_allocated": "cuda-allocated", "cpu_peak_rss": "cpu-rss"}.get(m.memory_label,
                                                                                                  m.memory_label)
            rows.add(metric="peak_memory", value=m.peak_memory / GIB, unit="GiB", protocol=label,
                     notes="absolute peak of the sample() calls (weights included)", **common)
            kept = [p for st, p in m.stage_peaks.items() if st not in EXCLUDED]
            check.summary.append({"generator": name, "batch": b, "status": "ok", "time_excl_s": excl,
                                  "time_s": m.time.median / b, "repeats": len(m.time.raw),
                                  "peak_gib": m.peak_memory / GIB,
                                  "peak_excl_gib": (max(kept) if kept else m.peak_memory) / GIB})

        check.run(f"{name}: sample batch {b} at {setting[1]}x{setting[2]}x{setting[0]}, {setting[3]} steps", one)


# --- Metric throughput ------------------------------------------------------------------------------------


def throughput(rows: Rows, check: Check, *, device: str, tiny: bool, clips: int) -> None:
    """I3D (fp32) and CLIP ViT-B/32 (fp16 on CUDA) forward throughput over ``clips`` clips of 16 frames."""
    cuda = device.startswith("cuda")
    size = 224

    def timed(fn: Callable[[], Any], calls: int) -> float:
        fn()  # warm-up
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        if cuda:
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    def i3d() -> None:
        from cmdbench.metrics.i3d import NUM_CLASSES, InceptionI3d, init_variance_preserving_

        batch = 2 if tiny else 32
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = init_variance_preserving_(InceptionI3d(NUM_CLASSES, width_divisor=16 if tiny else 1))
        model = model.to(device).eval()
        x = torch.rand(batch, 3, 16, size, size, device=device) * 2 - 1           # (B, 3, T, H, W)
        calls = max(1, clips // batch)
        with torch.inference_mode():
            seconds = timed(lambda: model(x), calls)
        n = calls * batch
        rows.add(generator="i3d" + ("-tiny" if tiny else ""), metric="throughput/i3d", value=n / seconds,
                 unit="clips/s", setting=(16, size, size, 0), batch_size=batch, higher_is_better=True,
                 protocol=f"InceptionI3d forward, float32, {n} clips, batch {batch}", dtype="float32")
        check.summary.append({"generator": "I3D", "batch": batch, "status": "ok", "clips": n,
                              "seconds": seconds, "clips_per_s": n / seconds})

    def clip() -> None:
        from clip.model import CLIP

        dtype = torch.float16 if cuda else torch.float32
        arch = (64, 224, 2, 64, 32, 77, 49408, 64, 1, 2) if tiny else (512, 224, 12, 768, 32, 77, 49408, 512, 8, 12)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = CLIP(*arch)
        model = model.to(device=device, dtype=dtype).eval()
        clips_per_call = 16                                                       # 16 clips x 16 frames
        frames = torch.rand(clips_per_call * 16, 3, size, size, device=device, dtype=dtype)  # (B*T, 3, H, W)
        text = torch.randint(1, 49407, (clips_per_call, 77), device=device)
        calls = max(1, clips // clips_per_call)
        with torch.inference_mode():
            seconds = timed(lambda: (model.encode_image(frames), model.encode_text(text)), calls)
        n = calls * clips_per_call
        name = "clip-vit-b32" if not tiny else "clip-tiny"
        rows.add(generator=name, metric="throughput/clip", value=n / seconds, unit="clips/s",
                 setting=(16, size, size, 0), batch_size=clips_per_call, higher_is_better=True,
                 protocol=f"CLIP encode_image every frame + encode_text, {str(dtype)[6:]}, {n} clips",
                 dtype=str(dtype).removeprefix("torch."))
        check.summary.append({"generator": "CLIP", "batch": clips_per_call * 16, "status": "ok", "clips": n,
                              "seconds": seconds, "clips_per_s": n / seconds})

    check.run(f"I3D throughput on {clips} clips", i3d)
    check.run(f"CLIP throughput on {clips} clips", clip)


# --- Predictions ------------------------------------------------------------------------------------------


def gpu_spec_name(device_name: str) -> str | None:
    """The roofline spec for a CUDA device name (``NVIDIA H100 80GB HBM3`` -> ``H100-SXM``), else None."""
    for key, spec in GPU_SPEC_NAMES:
        if key in device_name.upper():
            return spec
    return None


def predictions(name: str, rows: Rows, check: Check, *, tiny: bool, batch_sizes: Sequence[int],
                spec_name: str | None, capability: float) -> None:
    """Predicted peak memory (fp16) and roofline time on ``spec_name`` of ``name`` at the measured settings."""
    from cmdbench.interfaces import GeneratorSpec
    from cmdbench.registry import GENERATORS

    try:
        from cmdbench.metrics.memory_prediction import predict_sampling_memory
    except ImportError as err:
        check.log(f"[skip] predictions: {err}")
        return
    try:
        from cmdbench.metrics.roofline import get_gpu, predict_sampling_cost
    except ImportError:
        predict_sampling_cost = get_gpu = None
    gpu = get_gpu(spec_name) if get_gpu is not None and spec_name else None
    meta_env = {**rows.env, "device": "meta", "device_name": "meta"}
    for b in batch_sizes:
        def one(b: int = b) -> None:
            gen = GENERATORS.get(name)(GeneratorSpec(checkpoint=None, device="meta", tiny=tiny))
            d = gen.defaults
            setting = (d.num_frames, d.height, d.width, d.steps) if tiny else PAPER_SETTING
            kw = dict(num_frames=setting[0], height=setting[1], width=setting[2], steps=setting[3], batch_size=b,
                      dtype="float16", compute_capability=capability, name=name)
            if predict_sampling_cost is not None:
                mem, tp = predict_sampling_cost(gen, **kw)
            else:
                mem, tp = predict_sampling_memory(gen, **kw), None
            protocol = f"fake-cuda sdpa={mem.sdpa} cc={capability}"
            common = dict(generator=name, setting=setting, batch_size=b, protocol=protocol, environment=meta_env,
                          dtype="float16", conditioning=gen.conditioning)
            rows.add(metric="predicted_peak_memory", value=mem.peak / GIB, unit="GiB", **common)
            entry = {"generator": name, "batch": b, "pred_peak_gib": mem.peak / GIB,
                     "pred_peak_excl_gib": mem.peak_excluding(EXCLUDED) / GIB}
            if tp is not None and gpu is not None:
                t = tp.time(gpu, exclude=EXCLUDED)
                rows.add(metric=f"predicted_time/{gpu.name}", value=tp.time(gpu), unit="s/video", **common)
                entry["pred_time_excl_s"] = t
            check.summary.append({"kind": "prediction", **entry})

        check.run(f"{name}: predict batch {b}", one)


# --- Printing -----------------------------------------------------------------------------------------------


def paper_table9(path: Path = ROOT / "results" / "paper" / "cmd_arxiv_v1.csv") -> dict[tuple[str, str, int], float]:
    """(method, metric, batch) -> value of Table 9 from the committed paper CSV (read with the csv module)."""
    out: dict[tuple[str, str, int], float] = {}
    if not path.is_file():
        return out
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            if r["protocol"] == "Table 9" and r["metric"] in ("sampling_time", "peak_memory") \
                    and r["steps"] in ("", "50", "50.0"):
                out[(r["generator"], r["metric"], int(float(r["batch_size"] or 1)))] = float(r["value"])
    return out


def report(check: Check) -> str:
    """Measured beside predicted (and the paper's A100 numbers) per model and batch."""
    paper = paper_table9()
    preds = {(e["generator"], e["batch"]): e for e in check.summary if e.get("kind") == "prediction"}
    lines = [f"{'model':<22}{'batch':>6}{'time s':>10}{'pred s':>10}{'paper s':>9}{'peak GiB':>10}"
             f"{'pred GiB':>10}{'paper GB':>10}  status"]
    for e in check.summary:
        if e.get("kind") == "prediction" or e["generator"] in ("I3D", "CLIP"):
            continue
        p = preds.get((e["generator"], e["batch"]), {})
        method = PAPER_METHOD.get(e["generator"], "")

        def num(v: Any) -> str:
            return "-" if v is None else f"{v:.3g}"

        lines.append(f"{e['generator']:<22}{e['batch']:>6}{num(e.get('time_excl_s')):>10}"
                     f"{num(p.get('pred_time_excl_s')):>10}{num(paper.get((method, 'sampling_time', e['batch']))):>9}"
                     f"{num(e.get('peak_gib')):>10}{num(p.get('pred_peak_gib')):>10}"
                     f"{num(paper.get((method, 'peak_memory', e['batch']))):>10}  {e['status']}")
    for e in check.summary:
        if e["generator"] in ("I3D", "CLIP"):
            lines.append(f"{e['generator']} throughput: {e['clips_per_s']:.1f} clips/s ({e['clips']} clips in "
                         f"{e['seconds']:.1f} s)")
    lines.append("time: s per video excluding the SD VAE decoder (Table 9's reading); peak: whole call, "
                 "max_memory_allocated; paper: A100 40GB, GB as printed")
    return "\n".join(lines)


# --- Main ---------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cmdbench.bench.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (rehearsal)")
    p.add_argument("--tiny", action="store_true", help="the random miniatures at their own settings (rehearsal)")
    p.add_argument("--records", type=Path, default=ROOT / "results" / "records", help="records directory")
    p.add_argument("--generators", default=",".join(TABLE9), help="comma-separated (default: %(default)s)")
    p.add_argument("--batch-sizes", default=None, help="default 1,4 (tiny: 1,2)")
    p.add_argument("--clips", type=int, default=None, help="clips for the I3D/CLIP throughput (default 2048; tiny 8)")
    p.add_argument("--budget-s", type=float, default=480.0, help="skip steps that would start after this")
    p.add_argument("--wheels", type=Path, default=None,
                   help="install the *.whl in this folder into <folder>/site first (no index, no deps)")
    p.add_argument("--gpu-spec", default=None,
                   help="roofline spec for predicted time (default: the device's, e.g. H100-SXM; on a CPU A100-40GB)")
    args = p.parse_args(list(argv) if argv is not None else None)
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible to torch; rehearse on the CPU with --device cpu --tiny",
              file=sys.stderr)
        return 2
    dtype = "float16" if cuda else "float32"
    batch_sizes = [int(b) for b in (args.batch_sizes or ("1,2" if args.tiny else "1,4")).split(",")]
    clips = args.clips or (8 if args.tiny else 2048)
    names = [g.strip() for g in args.generators.split(",") if g.strip()]
    check = Check(budget_s=args.budget_s)
    if args.wheels is not None:
        check.run(f"install wheels from {args.wheels}", lambda: install_wheels(args.wheels))
    info = preflight(args.device)
    print(json.dumps(info, indent=1))

    rows = check.run("records", lambda: Rows(args.records, args.device, dtype))
    if rows is None:
        return 1
    # Written now and again at the end: a run cut off by a time limit keeps its preflight and environment.
    rows.writer.write_meta({"check": "gpu_check", "argv": list(argv or sys.argv[1:]), "preflight": info,
                            "environment": rows.env, "complete": False})
    check.run("load generators", lambda: _load(names))
    capability = float(info.get("capability", "8.0"))
    for name in names:
        measure_table9(name, rows, check, device=args.device, dtype=dtype, tiny=args.tiny, batch_sizes=batch_sizes)
    throughput(rows, check, device=args.device, tiny=args.tiny, clips=clips)
    spec = args.gpu_spec or gpu_spec_name(info.get("device", "")) or ("A100-40GB" if not cuda else None)
    for name in names:
        predictions(name, rows, check, tiny=args.tiny, batch_sizes=batch_sizes, spec_name=spec,
                    capability=capability)
    print(report(check))
    failed = [s for s in check.steps if s.status != "ok"]
    rows.writer.write_meta({"check": "gpu_check", "argv": list(argv or sys.argv[1:]), "preflight": info,
                            "environment": rows.env, "steps": [vars(s) for s in check.steps],
                            "summary": check.summary, "seconds": time.perf_counter() - check.start,
                            "complete": True})
    print(f"records: {rows.writer.csv_path}; {len(check.steps) - len(failed)} of {len(check.steps)} steps ok "
          f"in {time.perf_counter() - check.start:.0f} s")
    for s in failed:
        print(f"  {s.status}: {s.name}: {s.error}")
    return 1 if failed else 0


def install_wheels(folder: Path) -> list[str]:
    """``pip install --no-deps --no-index --target <folder>/site <folder>/*.whl`` and put that folder first on
    ``sys.path`` (this process and the children it starts); returns the wheel names."""
    import os
    import subprocess

    wheels = sorted(Path(folder).glob("*.whl"))
    if not wheels:
        raise FileNotFoundError(f"no *.whl in {folder}; fetch them with the `pip download` line in "
                                "cmdbench/bench/gpu_check.py's docstring")
    site = Path(folder).resolve() / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--upgrade", "--target",
                    str(site), *map(str, wheels)], check=True)
    sys.path.insert(0, str(site))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    importlib.invalidate_caches()
    return [w.name for w in wheels]


def _load(names: Sequence[str]) -> None:
    """Import the registering modules the check needs (not every plugin: a data reader's missing codec
    library must not stop the check) and verify the names."""
    from cmdbench.registry import GENERATORS

    for module in ("baselines", "cmdbench.cmd.presets"):
        importlib.import_module(module)
    for n in names:
        GENERATORS.get(n)


if __name__ == "__main__":
    raise SystemExit(main())
