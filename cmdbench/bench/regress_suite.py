"""The CI-sized regression suite behind ``nox -s regress``: a few minutes on 2 CPU cores, judged exactly.

What it measures (one run, one record file ``results/regress/regress-<stamp>.csv``):

* **timed figures**, in interleaved rounds (every figure once per round, so a slow minute of the machine
  touches every figure alike): the calibration workload (:mod:`cmdbench.bench.calibration`); tiny-size
  sampling of **every registered generator** at its miniature defaults, batch 1 (``sampling_time``,
  ``stage_time/<stage>``, ``time_per_step``; names and units as ``cmdbench bench`` writes them); the metric
  kernels: the Fréchet distance at D = 400 (I3D's logit width), a tiny I3D forward and a tiny CLIP forward
  (``kernel_time/<kernel>``). ``values`` keeps every round. ``--inner k`` makes each round's value the
  fastest of k back-to-back calls (the Python ``timeit`` rule: the lowest of a few calls is the one least
  disturbed by other processes); the default is one call per round, since the CPU-time figures below are
  barely disturbed and more independent rounds tighten the gate's interval more than best-of-k does.
  Every timed figure is recorded twice: wall clock under the shared names (``sampling_time`` ...: what a
  user waits) and the process's **CPU time** under its own names (``sampling_cpu_time``,
  ``stage_cpu_time/<stage>``, ``cpu_time_per_step``, ``kernel_cpu_time/<kernel>``, ``calibration_cpu_time``;
  unit ``CPU s/...``). On 2 shared cores with other jobs running, wall-clock calls of the same code were
  measured 3x slower with a 15-25% spread while their CPU time moved 2-5% (one intra-op thread, so the
  process's CPU time is the work itself, not the wait for a core): CPU time is the figure that can
  resolve a 10% change on a busy CI machine, wall clock the one that means "faster" to a user.
* **exact figures** on the meta device: paper-convention TMACs, true TFLOPs and parameters of every
  registered generator's full-size architecture (text-to-video models at the paper's 512x1024x16, 50
  steps; the others at their own full-size defaults); and, when ``cmdbench.metrics.memory_prediction``
  is importable, the predicted CUDA peak memory of CMD, ModelScope and LVDM (fp16, batch 1) at the paper
  setting, whole and per stage, and (with ``cmdbench.metrics.roofline``) their roofline time on an A100.

How many rounds: the gate's 99% bootstrap interval of a ratio of medians from ``n`` rounds per side with
relative spread ``cv`` has a half-width of about ``2.58 * sqrt(2) * 1.25 * cv / sqrt(n)``; resolving a 10%
change needs that below 0.10, so ``n >= (45.6 cv)^2`` (:func:`rounds_needed`). On the project machine (2
shared cores, load 6-8) the CPU-time spread of the generators' whole calls and denoisers was 2-6%, of the
kernels 2-3%, which 15 rounds resolve (up to 8.5%): :data:`DEFAULT_ROUNDS`. Stages of a few milliseconds
(text encoders, tiny decoders) spread 10-60% and the wall clock 15-25% there; the run's JSON names every
figure whose spread needs more rounds (``underpowered``), and the gate calls their changes not separated.

**Test-only knob** ``CMDBENCH_TEST_SLOWDOWN="GENERATOR[/STAGE]:FACTOR"`` (e.g. ``tiny-unet3d:1.2``;
stage default ``denoiser``): this suite's timing wrapper stretches that stage of that generator by
busy-waiting ``(FACTOR - 1)`` times the stage's own CPU time before the stage ends -- extra work, so the
stage's CPU time grows by that factor and its wall time by about as much. It exists to prove the gate
flags a deliberate slowdown; it is honoured only here (never by ``cmdbench bench`` or the reproductions)
and recorded in the run's JSON and in the slowed rows' notes.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cmdbench.bench import calibration
from cmdbench.bench.results import RecordWriter, config_hash, make_row, new_run_id, now_utc
from cmdbench.env import capture_environment, generator_provenance
from cmdbench.interfaces import GeneratorSpec, UnsupportedSettingError
from cmdbench.seeding import make_generators

ROOT = Path(__file__).resolve().parents[2]
RECORDS = ROOT / "results" / "regress"
REFERENCE = ROOT / "results" / "reference"
PREFIX = "regress"
SUITE = "regress-suite-v1"
DEFAULT_ROUNDS = 15
INNER = 1
THREADS = 1
PAPER_SETTING = (16, 512, 1024, 50)          # frames, height, width, steps (CMD Table 9)
PREDICTED_GENERATORS = ("cmd-webvid-512x1024", "modelscope-t2v", "lvdm-t2v")
PREDICTED_GPU = "A100-40GB"
SLOWDOWN_ENV = "CMDBENCH_TEST_SLOWDOWN"
PROMPT = "a panda playing a guitar in a garden"
NON_DENOISING_STAGES = ("text_encoder", "decoder", "vae_decoder")
GIB = 2**30


def rounds_needed(cv: float, band: float = 0.10, confidence_z: float = 2.576) -> int:
    """Rounds per side for the gate's interval of a ratio of medians to resolve a change of ``band`` at
    relative spread ``cv`` (module docstring): ``ceil((z * sqrt(2) * 1.2533 * cv / band)^2)``, at least 3."""
    return max(3, math.ceil((confidence_z * math.sqrt(2) * 1.2533 * cv / band) ** 2))


# --- The test-only slowdown -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Slowdown:
    """``CMDBENCH_TEST_SLOWDOWN``: stretch ``stage`` of ``generator`` by ``factor`` (test-only)."""

    generator: str
    stage: str
    factor: float

    @staticmethod
    def from_env(environ: dict[str, str] | None = None) -> Slowdown | None:
        text = (environ if environ is not None else os.environ).get(SLOWDOWN_ENV, "").strip()
        if not text:
            return None
        target, sep, factor = text.rpartition(":")
        gen, _, stage = target.partition("/")
        try:
            value = float(factor)
        except ValueError:
            value = math.nan
        if not sep or not gen or not value >= 1.0:
            raise ValueError(f"{SLOWDOWN_ENV}={text!r}; write GENERATOR[/STAGE]:FACTOR with FACTOR >= 1, "
                             "e.g. tiny-unet3d:1.2 or tiny-unet3d/denoiser:1.2")
        return Slowdown(gen, stage or "denoiser", value)


def _spin(cpu_seconds: float) -> None:
    """Busy-wait until this process has used ``cpu_seconds`` more CPU time: extra *work*, which a busy
    machine stretches in wall time as it stretches the stage's own work (a wall-clock wait would not)."""
    end = time.process_time() + cpu_seconds
    while time.process_time() < end:
        pass


class StageTimes:
    """The suite's timing wrapper: a generator ``stage_hook`` that records each stage's wall and CPU time
    and, when a :class:`Slowdown` names this generator's stage, stretches it before forwarding its end."""

    def __init__(self, slow: Slowdown | None = None) -> None:
        self.slow = slow
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._open: dict[str, tuple[float, float]] = {}

    def __call__(self, name: str, event: str) -> None:
        now = time.perf_counter()
        if event == "start":
            self._open[name] = (now, time.process_time())
            return
        if self.slow is not None and name == self.slow.stage:
            _spin((self.slow.factor - 1.0) * (time.process_time() - self._open[name][1]))
            now = time.perf_counter()
        w0, c0 = self._open.pop(name)
        self.wall[name] = self.wall.get(name, 0.0) + now - w0
        self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - c0


# --- Timed figures ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One call: wall and CPU seconds, and each stage's."""

    wall: float
    cpu: float
    stage_wall: dict[str, float] = field(default_factory=dict)
    stage_cpu: dict[str, float] = field(default_factory=dict)


@dataclass
class Timed:
    """One timed figure: ``call()`` returns a :class:`Sample`; each round keeps the best of ``inner`` calls,
    for wall clock and CPU time apart (with the stage split of the call that was best)."""

    name: str
    call: Callable[[], Sample]
    generator: str = ""
    setting: dict[str, Any] = field(default_factory=dict)
    best_wall: list[Sample] = field(default_factory=list)
    best_cpu: list[Sample] = field(default_factory=list)

    def run_round(self, inner: int) -> None:
        calls = [self.call() for _ in range(inner)]
        self.best_wall.append(min(calls, key=lambda c: c.wall))
        self.best_cpu.append(min(calls, key=lambda c: c.cpu))


def generator_figure(name: str, slow: Slowdown | None) -> Timed:
    """Tiny-size sampling of a registered generator at its miniature defaults, batch 1, one fixed seed."""
    from cmdbench.registry import GENERATORS

    gen = GENERATORS.get(name)(GeneratorSpec(tiny=True))
    d = gen.defaults
    kwargs: dict[str, Any] = dict(num_frames=d.num_frames, height=d.height, width=d.width, steps=d.steps,
                                  guidance_scale=d.guidance_scale)
    cond = {"text": {"prompts": [PROMPT]}, "class": {"labels": [0]}}.get(gen.conditioning, {})
    target = slow if slow is not None and slow.generator == name else None

    def call() -> Sample:
        hook = StageTimes(target)
        gen.stage_hook = hook
        with torch.inference_mode():
            w0, c0 = time.perf_counter(), time.process_time()
            gen.sample(**kwargs, **cond, generator=make_generators([0]))
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        return Sample(wall, cpu, hook.wall, hook.cpu)

    call()  # warm-up: lazy init, allocator, first-call kernels
    setting = {**kwargs, "conditioning": gen.conditioning, "plugin": generator_provenance(GENERATORS.get(name))}
    return Timed("sampling", call, generator=name, setting=setting)


def kernel_figures() -> list[Timed]:
    """The metric kernels: Fréchet distance at D = 400, tiny I3D forward, tiny CLIP forward (fixed inputs)."""
    import numpy as np

    from cmdbench.metrics.frechet import frechet_distance
    from cmdbench.metrics.i3d import NUM_CLASSES, InceptionI3d, init_variance_preserving_

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((800, 400)), rng.standard_normal((800, 400)) * 1.1 + 0.1  # (N, D) float64
    mu1, s1, mu2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        i3d = init_variance_preserving_(InceptionI3d(NUM_CLASSES, width_divisor=16)).eval()
        clip_in = torch.rand(4, 3, 224, 224) * 2 - 1                                  # (B, 3, H, W)
        i3d_in = torch.rand(1, 3, 16, 224, 224) * 2 - 1                               # (B, 3, T, H, W)
    figures = [Timed("frechet_distance_d400", _timed(lambda: frechet_distance(mu1, s1, mu2, s2))),
               Timed("i3d_tiny_forward", _timed(lambda: i3d(i3d_in)))]
    try:
        from clip.model import CLIP  # clip-anytorch, as CLIPSIM loads it
    except ImportError:  # pragma: no cover - clip-anytorch is a project dependency
        return figures
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        clip = CLIP(64, 224, 2, 64, 32, 77, 49408, 64, 1, 2).eval()  # the CLIPSIM tests' miniature ViT
    tokens = torch.randint(1, 49407, (4, 77))
    figures.append(Timed("clip_tiny_forward", _timed(lambda: (clip.encode_image(clip_in), clip.encode_text(tokens)))))
    return figures


def _timed(fn: Callable[[], object]) -> Callable[[], Sample]:
    @torch.inference_mode()
    def call() -> Sample:
        return Sample(*calibration.time_call(fn))

    call()  # warm-up
    return call


# --- Exact figures ----------------------------------------------------------------------------------------


def count_rows(names: Sequence[str], log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Meta-device counts of every generator's full-size architecture (dicts of row fields)."""
    from cmdbench.metrics.efficiency import count_generator_cost
    from cmdbench.registry import GENERATORS

    out = []
    for name in names:
        gen = GENERATORS.get(name)(GeneratorSpec(checkpoint=None, device="meta"))
        if not hasattr(gen, "cost_stages"):
            log(f"  counts: {name} has no cost_stages (skipped)")
            continue
        d = gen.defaults
        settings = ([PAPER_SETTING] if gen.conditioning == "text" else []) + [
            (d.num_frames, d.height, d.width, d.steps)]
        cost, refused = None, ""
        for frames, height, width, steps in settings:
            try:
                cost = count_generator_cost(gen, frames, height, width, steps, name=name)
                break
            except UnsupportedSettingError as err:  # e.g. a fixed-size miniature: counted at its own setting
                refused = f"; paper setting refused ({err})"
        if cost is None:
            log(f"  counts: {name} takes neither the paper setting nor its defaults{refused}")
            continue
        setting = dict(num_frames=frames, height=height, width=width, steps=steps,
                       guidance_scale=d.guidance_scale, conditioning=gen.conditioning, batch_size=1)
        out += [dict(generator=name, metric="tmacs_paper", value=cost.paper_tmacs, unit="TMAC", **setting,
                     notes="one conditional denoiser pass per step, batch 1, CMD's convention"),
                dict(generator=name, metric="tflops_true", value=cost.true_tflops, unit="TFLOP", **setting,
                     notes="2*MAC of every op, guidance passes, text encoder and decoders"),
                dict(generator=name, metric="params", value=float(cost.params), unit="count", **setting,
                     notes="every network sampling uses")]
        if refused:
            for row in out[-3:]:
                row["notes"] += refused
        del gen
        gc.collect()
    return out


def prediction_rows(log: Callable[[str], None], names: Sequence[str] = PREDICTED_GENERATORS) -> list[dict[str, Any]]:
    """Predicted CUDA peak memory (fp16, batch 1, whole call and per stage) of the Table 9 models at the
    paper setting, and their roofline time on an A100-40GB when the roofline module is there too; none
    (with a line in the log) when the prediction module is not importable."""
    try:
        from cmdbench.metrics.memory_prediction import predict_sampling_memory
    except ImportError as err:
        log(f"  predicted memory: skipped ({err})")
        return []
    try:
        from cmdbench.metrics.roofline import get_gpu, predict_sampling_cost
        gpu = get_gpu(PREDICTED_GPU)
    except (ImportError, KeyError, ValueError) as err:
        log(f"  predicted time: skipped ({err})")
        predict_sampling_cost = gpu = None
    from cmdbench.registry import GENERATORS

    out: list[dict[str, Any]] = []
    for name in names:
        if name not in GENERATORS:
            continue
        gen = GENERATORS.get(name)(GeneratorSpec(checkpoint=None, device="meta"))
        frames, height, width, steps = PAPER_SETTING if gen.conditioning == "text" else (
            gen.defaults.num_frames, gen.defaults.height, gen.defaults.width, gen.defaults.steps)
        kw = dict(num_frames=frames, height=height, width=width, steps=steps, batch_size=1, dtype="float16",
                  name=name)
        try:
            if predict_sampling_cost is not None:
                pred, time_pred = predict_sampling_cost(gen, **kw)
            else:
                pred, time_pred = predict_sampling_memory(gen, **kw), None
        except Exception as err:  # noqa: BLE001 - one model's failure is logged; the gate reports it missing
            log(f"  prediction of {name} failed: {type(err).__name__}: {err}")
            continue
        setting = dict(num_frames=frames, height=height, width=width, steps=steps, batch_size=1, dtype="float16",
                       conditioning=gen.conditioning,
                       protocol=f"fake-cuda sdpa={pred.sdpa} cc={pred.compute_capability}")
        out.append(dict(generator=name, metric="predicted_peak_memory", value=pred.peak / GIB, unit="GiB",
                        notes="fake-tensor prediction of max_memory_allocated, whole sample()", **setting))
        for st in pred.stages:
            out.append(dict(generator=name, metric=f"predicted_peak_memory/{st.stage}",
                            value=pred.stage_peak(st.stage) / GIB, unit="GiB", notes=f"call batch {st.batch}",
                            **setting))
        if time_pred is not None:
            key = f"predicted_time/{gpu.name}"
            out.append(dict(generator=name, metric=key, value=time_pred.time(gpu), unit="s/video",
                            notes="roofline estimate, whole sample()", **setting))
            for st in time_pred.stages:
                out.append(dict(generator=name, metric=f"{key}/{st.stage}", value=time_pred.stage_time(gpu, st.stage),
                                unit="s/video", notes="roofline estimate", **setting))
        del gen
        gc.collect()
    return out


# --- The run ----------------------------------------------------------------------------------------------


def run_suite(records: str | Path = RECORDS, *, rounds: int = DEFAULT_ROUNDS, inner: int = INNER,
              generators: Sequence[str] | None = None, counts: bool | Sequence[str] = True,
              predictions: bool = True, kernels: bool = True,
              log: Callable[[str], None] = print) -> tuple[str, list[dict[str, Any]]]:
    """Run the suite, write its rows to ``<records>/<run_id>.csv``; returns (run_id, rows).

    generators: the timed ones (default: every registered generator); counts: count the full-size
    architectures of those (``True``), of the named generators, or none (``False``).
    """
    from cmdbench.registry import GENERATORS, load_plugins

    if rounds < 1 or inner < 1:
        raise ValueError(f"rounds={rounds}, inner={inner}; both must be >= 1")
    t_start = time.perf_counter()
    torch.set_num_threads(THREADS)
    slow = Slowdown.from_env()
    load_plugins()
    names = list(generators) if generators is not None else GENERATORS.names()
    for n in names:
        GENERATORS.get(n)  # unknown names -> close matches, before anything runs
    env = capture_environment("cpu", "float32")
    meta_env = {**env, "device": "meta", "device_name": "meta"}
    run_id = new_run_id(PREFIX)
    writer = RecordWriter(records, run_id)
    log(f"regress suite: run {run_id}, {len(names)} generators, {rounds} rounds x best of {inner}, "
        f"{THREADS} thread(s); {env['device_name']}")
    if slow is not None:
        log(f"  TEST-ONLY slowdown active: {slow.generator}/{slow.stage} x{slow.factor} ({SLOWDOWN_ENV})")

    cal = Timed("calibration", _timed(calibration.workload()))
    figures = [cal] + [generator_figure(n, slow) for n in names] + (kernel_figures() if kernels else [])
    t_timed = time.perf_counter()
    for _ in range(rounds):
        for fig in figures:
            fig.run_round(inner)
    t_timed = time.perf_counter() - t_timed
    log(f"  timed {len(figures)} figures in {t_timed:.1f} s")

    created = now_utc()
    base = dict(run_id=run_id, created_utc=created, source="measured", git_sha=env["git_sha"],
                git_dirty=env["git_dirty"], checkpoint="random-init", dataset="", seeds="0",
                torch_version=env["torch_version"], cuda_version=env["cuda_version"])
    rows: list[dict[str, Any]] = []

    def add(fields: dict[str, Any], environment: dict[str, Any], *, tiny: bool) -> None:
        fields = {"protocol": "", "dtype": "float32", "batch_size": 1, **fields}
        full = {**base, **fields, "device_name": environment["device_name"]}
        full["config_hash"] = config_hash(full, environment, context={"tiny": tiny, "suite": SUITE})
        rows.append(make_row(**full))

    # The protocol (part of the identity) names what changes a value's meaning: the clock, best-of-k, the
    # threads. The round count only changes how sure the gate can be, so it is in the notes, not the identity.
    timing = f"best of {inner} call(s) per round; {THREADS} thread(s)"
    rounds_note = f"{rounds} interleaved rounds"
    underpowered: dict[str, int] = {}
    spreads: dict[str, float] = {}

    def timed_row(fig: Timed, metric: str, values: list[float], unit: str, notes: str, **fields: Any) -> None:
        med = statistics.median(values)
        cv = statistics.stdev(values) / med if len(values) > 1 and med else 0.0
        label = f"{fig.generator or fig.name}:{metric}"
        spreads[label] = cv
        if rounds_needed(cv) > rounds:
            underpowered[label] = rounds_needed(cv)
        clock = "process_time (CPU)" if "cpu_time" in metric else "perf_counter (wall)"
        add(dict(metric=metric, value=med, std=statistics.stdev(values) if len(values) > 1 else None,
                 n=len(values), values=values, unit=unit, higher_is_better=False, protocol=f"{clock}; {timing}",
                 notes=f"{notes}; {rounds_note}", **fields), env, tiny=bool(fig.generator))

    def both(fig: Timed, wall_metric: str, cpu_metric: str, pick: Callable[[Sample, bool], float], unit: str,
             notes: str, **fields: Any) -> None:
        timed_row(fig, wall_metric, [pick(c, False) for c in fig.best_wall], unit, notes, **fields)
        timed_row(fig, cpu_metric, [pick(c, True) for c in fig.best_cpu], f"CPU {unit}", notes, **fields)

    def total(c: Sample, cpu: bool) -> float:
        return c.cpu if cpu else c.wall

    both(cal, calibration.METRIC, calibration.CPU_METRIC, total, "s/call", calibration.PROTOCOL,
         generator="calibration")
    for fig in figures[1:]:
        if not fig.generator:
            both(fig, f"kernel_time/{fig.name}", f"kernel_cpu_time/{fig.name}", total, "s/call",
                 "metric kernel, fixed inputs", generator="kernels")
            continue
        s = fig.setting
        plugin = s.pop("plugin", None)
        notes = "tiny miniature, defaults, batch 1"
        if plugin:
            notes += f"; plugin {plugin['package']} {plugin['version']} (git {plugin['git_sha']})"
        if slow is not None and slow.generator == fig.generator:
            notes += f"; TEST-ONLY slowdown {slow.stage} x{slow.factor}"
        fields = dict(generator=fig.generator, num_frames=s["num_frames"], height=s["height"], width=s["width"],
                      steps=s["steps"], guidance_scale=s["guidance_scale"], conditioning=s["conditioning"])
        both(fig, "sampling_time", "sampling_cpu_time", total, "s/video", notes, **fields)
        stages = sorted({st for c in fig.best_wall + fig.best_cpu for st in c.stage_wall})
        for st in stages:
            both(fig, f"stage_time/{st}", f"stage_cpu_time/{st}",
                 lambda c, cpu, st=st: (c.stage_cpu if cpu else c.stage_wall).get(st, 0.0), "s/video", notes,
                 **fields)
        denoising = [st for st in stages if st not in NON_DENOISING_STAGES]
        if denoising:
            both(fig, "time_per_step", "cpu_time_per_step",
                 lambda c, cpu, den=tuple(denoising), steps=s["steps"]:
                 sum((c.stage_cpu if cpu else c.stage_wall).get(st, 0.0) for st in den) / steps, "s/step", f"{notes}; stages {'+'.join(denoising)}", **fields)

    t_exact = time.perf_counter()
    counted = names if counts is True else list(counts or [])
    exact = count_rows(counted, log) + (prediction_rows(log) if predictions else [])
    for fields in exact:
        add({"protocol": "flopcounter-meta", **fields}, meta_env, tiny=False)
    t_exact = time.perf_counter() - t_exact
    log(f"  {len(exact)} exact figures in {t_exact:.1f} s")
    writer.append(rows)
    writer.write_meta({"suite": SUITE, "run_id": run_id, "rounds": rounds, "inner": inner, "threads": THREADS,
                       "generators": names, "slowdown": vars(slow) if slow else None, "environment": env,
                       "relative_spread": spreads, "underpowered": underpowered,
                       "seconds": {"timed": t_timed, "exact": t_exact, "total": time.perf_counter() - t_start}})
    if underpowered:
        cpu = sum("cpu_time" in k for k in underpowered)
        log(f"  {len(underpowered)} figures ({cpu} of them CPU time) spread too wide for {rounds} rounds to resolve "
            f"10% (named in {writer.meta_path.name}, 'underpowered'); the gate calls their changes not separated")
    log(f"  wrote {len(rows)} rows to {writer.csv_path} in {time.perf_counter() - t_start:.0f} s")
    return run_id, rows


def reference_dir(root: str | Path = REFERENCE) -> Path:
    """This machine's reference directory: ``<root>/<device slug>`` (the suite times on 1 thread)."""
    from cmdbench.bench.regression import device_slug
    from cmdbench.env import current_device_key

    torch.set_num_threads(THREADS)
    return Path(root) / device_slug(current_device_key("cpu"))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cmdbench.bench.regress_suite``: run the suite, then gate it against this device's
    reference (``results/reference/<slug>/regress.csv``); exit 1 on a failing verdict."""
    p = argparse.ArgumentParser(prog="python -m cmdbench.bench.regress_suite", description=main.__doc__)
    p.add_argument("--records", type=Path, default=RECORDS, help="where the run's records go (%(default)s)")
    p.add_argument("--reference-root", type=Path, default=REFERENCE, help="reference root (%(default)s)")
    p.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    p.add_argument("--inner", type=int, default=INNER)
    p.add_argument("--generators", help="comma-separated subset (default: every registered generator)")
    p.add_argument("--no-counts", action="store_true", help="skip the meta-device counts")
    p.add_argument("--no-predictions", action="store_true", help="skip the predicted memory")
    p.add_argument("--run-only", action="store_true", help="record the run, do not compare it")
    p.add_argument("--allow-missing", action="store_true")
    p.add_argument("--allow-new", action="store_true")
    args = p.parse_args(list(argv) if argv is not None else None)
    gens = [g.strip() for g in args.generators.split(",") if g.strip()] if args.generators else None
    run_id, _ = run_suite(args.records, rounds=args.rounds, inner=args.inner, generators=gens,
                          counts=not args.no_counts, predictions=not args.no_predictions)
    if args.run_only:
        return 0
    reference = reference_dir(args.reference_root) / f"{PREFIX}.csv"
    if not reference.is_file():
        print(f"no reference for this device: {reference} does not exist; accept this run with "
              f"`cmdbench accept {args.records} --run-id {run_id}` (nox -s accept_reference)")
        return 1
    from cmdbench.cli import main as cli

    extra = [f for f, on in (("--allow-missing", args.allow_missing), ("--allow-new", args.allow_new)) if on]
    return cli(["compare", str(reference), str(Path(args.records) / f"{run_id}.csv"), *extra])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
