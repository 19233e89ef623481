"""The bench runner: BenchConfig -> sample with per-seed generators in batches -> metrics and trackers -> rows.

Layout of one run under the records directory::

    <run_id>.csv              result rows (SCHEMA), appended once the last batch is done
    <run_id>.json             resolved config, resolved sampling settings, environment, status
    <run_id>.progress/        per-batch progress, the resume state
        batch-00003.json      seeds, wall time, stage times, peak memory of batch 3 (its commit marker)
        batch-00003.pt        the batch's videos (uint8) or the metrics' state after it (only with metrics)
    <run_id>.videos/seed-000017.mp4   with ``save_videos``

**Resume.** Every batch writes its payload first and its JSON last, each atomically (temp file, then
rename), so a batch either counts as done with all its data or not at all. Started again with the same
``run_id``, the runner skips every batch with a JSON, restores the metrics (their ``state_dict`` when
they have one, else by replaying the stored videos), samples only the missing batches and appends only
the rows not yet in the CSV: every row exactly once, nothing recorded recomputed.

**Trackers** (metric names, units and statistics as every producer writes them; issue 10 item 5).
``time``: wall clock of each ``sample()`` call (``perf_counter``; the device is synchronised around it),
one untimed warm-up call per process. Each batch is one timed repeat:

* ``sampling_time`` [s/video]: batch time / batch size; ``value`` the median over batches, ``std`` their
  sample standard deviation (empty for one batch), ``n`` the number of batches, ``values`` the raw repeats;
* ``sampling_time_excl_vae_decoder`` [s/video]: the same minus the SD VAE decoder stage (Table 9's reading),
  when the generator has that stage;
* ``stage_time/<stage>`` [s/video]: each stage's share (stage names from the generator's ``stage_hook``);
* ``time_per_step`` [s/step]: the denoising stages' time per video / steps (every stage but the text
  encoder and the decoders).

``memory``: ``peak_memory`` [GiB], the **absolute** peak of each ``sample()`` call from
:class:`cmdbench.metrics.efficiency.PeakMemory` -- CUDA ``max_memory_allocated`` after a reset (protocol
``cuda-allocated``, weights included) or the process's peak RSS (protocol ``cpu-rss``); ``value`` the median
over batches, ``values`` each batch's peak.

**Identity.** ``config_hash`` comes from :func:`cmdbench.bench.results.config_hash`: the setting, the
metric's protocol and provenance (extractor checksum, reference statistics, CLIP weights), device class,
dtype and TF32 flags; seeds and prompts only for quality metrics. A plugin generator's package, version
and git sha are recorded in the notes of its rows and in the run's JSON.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from cmdbench.bench.results import RecordWriter, config_hash, make_row, new_run_id, now_utc
from cmdbench.config import BenchConfig, stable_hash, to_jsonable
from cmdbench.env import capture_environment, generator_provenance
from cmdbench.interfaces import GeneratorSpec, MetricValue, check_device, is_paired
from cmdbench.registry import GENERATORS, METRICS, load_plugins
from cmdbench.seeding import format_seeds, make_generators, parse_seeds

GIB = 2**30
# Stages that do not denoise (everything else counts towards ``time_per_step``).
NON_DENOISING_STAGES = ("text_encoder", "decoder", "vae_decoder")
MEMORY_PROTOCOLS = {"cpu_peak_rss": "cpu-rss", "cuda_max_memory_allocated": "cuda-allocated"}


class RunMismatchError(ValueError):
    """Resuming a run id that was started with a different configuration."""


# --- Resolved settings ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resolved:
    """What a run samples with once the generator's defaults fill the gaps in the config."""

    num_frames: int
    height: int
    width: int
    steps: int
    guidance_scale: float | None
    batch_size: int
    conditioning: str
    num_classes: int | None
    prompts: tuple[str, ...] | None
    labels: tuple[int, ...] | None


def resolve(config: BenchConfig, gen: Any) -> Resolved:
    """Fill ``config.sampling`` from ``gen.defaults``; pick the condition pool for each seed."""
    s, d = config.sampling, gen.defaults
    prompts = labels = None
    if gen.conditioning == "text":
        prompts = config.prompts or tuple(getattr(gen, "eval_prompts", None) or ())
        if not prompts:
            raise ValueError(f"{config.generator} is text-conditional and has no eval_prompts; pass prompts")
        if config.labels:
            raise ValueError(f"{config.generator} is text-conditional; labels {list(config.labels)} are not allowed")
    elif gen.conditioning == "class":
        labels = config.labels  # None: seed % num_classes
        if config.prompts:
            raise ValueError(f"{config.generator} is class-conditional; prompts are not allowed")
    elif config.prompts or config.labels:
        raise ValueError(f"{config.generator} is unconditional; pass neither prompts nor labels")
    return Resolved(
        num_frames=s.num_frames or d.num_frames, height=s.height or d.height, width=s.width or d.width,
        steps=s.steps or d.steps,
        guidance_scale=s.guidance_scale if s.guidance_scale is not None else d.guidance_scale,
        batch_size=s.batch_size, conditioning=gen.conditioning, num_classes=gen.num_classes,
        prompts=tuple(prompts) if prompts else None, labels=tuple(labels) if labels else None,
    )


def conditions_for(res: Resolved, seeds: Sequence[int], indices: Sequence[int]) -> dict[str, Any]:
    """Prompts/labels for the seeds at positions ``indices`` of the run: cycled by index, or seed % classes."""
    if res.conditioning == "text":
        assert res.prompts
        return {"prompts": [res.prompts[i % len(res.prompts)] for i in indices]}
    if res.conditioning == "class":
        if res.labels:
            return {"labels": [int(res.labels[i % len(res.labels)]) for i in indices]}
        return {"labels": [int(seeds[i]) % int(res.num_classes or 1) for i in indices]}
    return {}


def checkpoint_sha(checkpoint: str | None) -> str:
    """sha256 (16 hex) of a local checkpoint file or directory's files; '' for none or a hub id."""
    if not checkpoint:
        return ""
    path = Path(checkpoint)
    if not path.exists():
        return ""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for f in files:
        digest.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


# --- Atomic progress files ------------------------------------------------------------------------------


def _atomic_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def _atomic_torch(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


# --- Metrics --------------------------------------------------------------------------------------------


def metric_option_names(factory: Callable[..., Any]) -> tuple[str, ...] | None:
    """Keyword options a metric factory accepts: its declared ``options`` attribute, else its named
    parameters; ``None`` when it cannot be told (a ``**kwargs`` factory without ``options``)."""
    declared = getattr(factory, "options", None)
    if declared is not None:
        return tuple(declared)
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return tuple(p.name for p in params
                 if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY))


def check_metric_options(name: str, options: dict[str, Any]) -> None:
    """Unknown option keys for metric ``name`` raise, naming what its factory accepts."""
    accepted = metric_option_names(METRICS.get(name))
    unknown = sorted(set(options) - set(accepted)) if accepted is not None else []
    if unknown:
        raise ValueError(f"metric {name!r} has no option(s) {unknown}; its factory accepts {sorted(accepted)}")


def build_metric(name: str, device: str, options: dict[str, Any] | None = None) -> Any:
    """The metric ``name`` from its factory with ``options`` (and ``device=`` when it takes one)."""
    options = dict(options or {})
    check_metric_options(name, options)
    factory = METRICS.get(name)
    accepted = metric_option_names(factory)
    if accepted is not None and "device" in accepted:
        options.setdefault("device", device)
    return factory(**options)


def _has_state(metric: Any) -> bool:
    return callable(getattr(metric, "state_dict", None)) and callable(getattr(metric, "load_state_dict", None))


# --- The run --------------------------------------------------------------------------------------------


def run_key(config: BenchConfig) -> str:
    """Identity of a run's work: resuming requires the same key."""
    return stable_hash({k: v for k, v in to_jsonable(config).items() if k != "notes"})


def run_bench(
    config: BenchConfig,
    records_dir: str | Path,
    run_id: str | None = None,
    progress: bool = True,
    *,
    on_batch_done: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Run ``config``, write rows under ``records_dir``; returns the run's rows (validated SCHEMA frame).

    run_id: ``None`` starts a new run; an existing id resumes it (same config required).
    on_batch_done: called as ``(batch_index, num_batches)`` after each batch is recorded.
    """
    load_plugins()
    check_device(config.device, what="--device")  # before anything is written
    GENERATORS.get(config.generator)  # unknown name -> close matches, before anything is written
    for name in config.metrics:
        METRICS.get(name)
        check_metric_options(name, config.options_for(name))
    metrics = {name: build_metric(name, config.device, config.options_for(name)) for name in config.metrics}
    paired = [name for name, m in metrics.items() if is_paired(m)]
    if paired:
        raise ValueError(f"metrics {paired} compare each video with its reference video; `cmdbench bench` samples "
                         "without references: score sampled videos with `cmdbench evaluate --videos DIR "
                         "--references DIR` instead")
    if config.through_codec:
        from cmdbench.video import mp4_storage

        for m in metrics.values():
            if hasattr(m, "storage"):
                m.storage = mp4_storage(crf=config.codec_crf, pix_fmt=config.codec_pix_fmt)
    run_id = run_id or new_run_id("bench")
    writer = RecordWriter(records_dir, run_id)
    progress_dir = writer.directory / f"{run_id}.progress"
    progress_dir.mkdir(exist_ok=True)
    video_dir = writer.directory / f"{run_id}.videos"

    seeds = parse_seeds(config.seeds)
    key = run_key(config)
    meta = json.loads(writer.meta_path.read_text()) if writer.meta_path.exists() else None
    if meta is not None and meta.get("run_key") != key:
        raise RunMismatchError(
            f"run {run_id!r} in {writer.directory} was started with a different config "
            f"({writer.meta_path}); use a new --run-id or the same config to resume it"
        )

    spec = GeneratorSpec(checkpoint=config.checkpoint, device=config.device, dtype=config.dtype, tiny=config.tiny)
    gen: Any = None
    if meta is None:
        gen = GENERATORS.get(config.generator)(spec)
        res = resolve(config, gen)
        env = capture_environment(config.device, config.dtype)
        meta = {"run_id": run_id, "run_key": key, "created_utc": now_utc(), "config": to_jsonable(config),
                "resolved": to_jsonable(res), "checkpoint_sha": checkpoint_sha(config.checkpoint),
                "environment": env, "plugin": generator_provenance(GENERATORS.get(config.generator)),
                "complete": False}
        writer.write_meta(meta)
    res = Resolved(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["resolved"].items()})

    batches = [list(range(i, min(i + res.batch_size, len(seeds)))) for i in range(0, len(seeds), res.batch_size)]
    done = {i for i in range(len(batches)) if (progress_dir / f"batch-{i:05d}.json").exists()}
    pending = [i for i in range(len(batches)) if i not in done]

    _restore_metrics(metrics, sorted(done), batches, seeds, res, progress_dir)

    if pending:
        gen = gen or GENERATORS.get(config.generator)(spec)
        _sample_batches(config, gen, res, seeds, batches, pending, metrics, progress_dir, video_dir,
                        progress=progress, on_batch_done=on_batch_done)

    records = [json.loads((progress_dir / f"batch-{i:05d}.json").read_text()) for i in range(len(batches))]
    rows = _rows(config, meta, res, seeds, records, metrics)
    existing = writer.existing()
    have = set(zip(existing["metric"], existing["config_hash"], strict=True))
    new_rows = [r for r in rows if (r["metric"], r["config_hash"]) not in have]
    writer.append(new_rows)
    if not meta.get("complete"):
        meta["complete"] = True
        meta["finished_utc"] = now_utc()
        writer.write_meta(meta)
    return writer.existing()


def _restore_metrics(metrics: dict[str, Any], done: list[int], batches: list[list[int]], seeds: Sequence[int],
                     res: Resolved, progress_dir: Path) -> None:
    """Bring the metrics to the state after the ``done`` batches without sampling anything."""
    if not metrics or not done:
        return
    for metric in metrics.values():
        metric.reset()
    if all(_has_state(m) for m in metrics.values()):
        state = torch.load(progress_dir / f"batch-{done[-1]:05d}.pt", weights_only=False)
        for name, metric in metrics.items():
            metric.load_state_dict(state["metrics"][name])
        return
    for i in done:
        videos = torch.load(progress_dir / f"batch-{i:05d}.pt", weights_only=False)["videos"]
        prompts = conditions_for(res, seeds, batches[i]).get("prompts")
        for metric in metrics.values():
            metric.update(videos, prompts)


def _sample_batches(config: BenchConfig, gen: Any, res: Resolved, seeds: Sequence[int], batches: list[list[int]],
                    pending: list[int], metrics: dict[str, Any], progress_dir: Path, video_dir: Path, *,
                    progress: bool, on_batch_done: Callable[[int, int], None] | None) -> None:
    from tqdm.auto import tqdm

    from cmdbench.metrics.efficiency import PeakMemory, StageRecorder, current_rss

    settings = {"num_frames": res.num_frames, "height": res.height, "width": res.width, "steps": res.steps,
                "guidance_scale": res.guidance_scale}
    track_time, track_memory = "time" in config.trackers, "memory" in config.trackers
    stateful = bool(metrics) and all(_has_state(m) for m in metrics.values())
    if track_time:  # one untimed warm-up call per process (lazy init, allocator, kernels)
        first = batches[pending[0]][:1]
        gen.sample(**conditions_for(res, seeds, first), **settings, generator=make_generators([seeds[first[0]]]))
    device = torch.device(config.device)
    cuda = device.type == "cuda"  # CUDA is asynchronous: synchronise around the timed call
    memory = PeakMemory(config.device) if track_memory else None
    baseline = current_rss() if memory is not None and not memory.cuda else 0
    bar = tqdm(total=len(seeds), initial=sum(len(batches[i]) for i in range(len(batches)) if i not in pending),
               desc=f"bench {config.generator}", unit="video", disable=not progress)
    previous_hook = getattr(gen, "stage_hook", None)
    with ExitStack() as stack:
        if memory is not None:
            stack.enter_context(memory)  # starts the RSS sampling thread where VmHWM cannot be reset
        stack.callback(bar.close)
        stack.callback(setattr, gen, "stage_hook", previous_hook)
        for i in pending:
            idx = batches[i]
            batch_seeds = [seeds[j] for j in idx]
            cond = conditions_for(res, seeds, idx)
            recorder = StageRecorder(memory)
            gen.stage_hook = recorder
            if memory is not None:
                memory.checkpoint()  # start this batch's peak interval
            if cuda:
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            videos = gen.sample(**cond, **settings, generator=make_generators(batch_seeds))
            if cuda:
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - t0
            recorder.finish()
            peak = recorder.peak_overall if memory is not None else None
            if config.through_codec:  # the pixels `sample` + `evaluate --videos` would score
                from cmdbench.video import codec_round_trip

                videos = codec_round_trip(videos, crf=config.codec_crf, pix_fmt=config.codec_pix_fmt)
            for metric in metrics.values():
                metric.update(videos, cond.get("prompts"))
            if config.save_videos:
                from cmdbench.video import write_mp4

                for j, seed in enumerate(batch_seeds):
                    write_mp4(video_dir / f"seed-{seed:06d}.mp4", videos[j])
            if metrics:  # payload first ...
                payload = ({"metrics": {n: m.state_dict() for n, m in metrics.items()}} if stateful
                           else {"videos": videos})
                _atomic_torch(progress_dir / f"batch-{i:05d}.pt", payload)
            _atomic_json(progress_dir / f"batch-{i:05d}.json", {  # ... then the commit marker
                "index": i, "seeds": batch_seeds, "time_s": elapsed, "stage_times_s": recorder.times,
                "peak_bytes": peak, "baseline_bytes": baseline, "memory_label": memory.label if memory else None,
                "pid": os.getpid(), "finished_utc": now_utc(),
            })
            bar.update(len(idx))
            if on_batch_done is not None:
                on_batch_done(i, len(batches))


# --- Rows -----------------------------------------------------------------------------------------------


def _rows(config: BenchConfig, meta: dict[str, Any], res: Resolved, seeds: Sequence[int],
          records: list[dict[str, Any]], metrics: dict[str, Any]) -> list[dict[str, Any]]:
    env = meta["environment"]
    base = {
        "run_id": meta["run_id"], "created_utc": now_utc(), "source": "measured", "git_sha": env["git_sha"],
        "git_dirty": env["git_dirty"], "generator": config.generator, "checkpoint": config.checkpoint or "",
        "checkpoint_sha": meta["checkpoint_sha"], "conditioning": res.conditioning, "dataset": config.dataset,
        "num_frames": res.num_frames, "height": res.height, "width": res.width, "steps": res.steps,
        "guidance_scale": res.guidance_scale, "batch_size": res.batch_size, "dtype": config.dtype,
        "seeds": format_seeds(seeds), "device_name": env["device_name"], "torch_version": env["torch_version"],
        "cuda_version": env["cuda_version"],
    }
    plugin = meta.get("plugin")
    plugin_note = (f"plugin {plugin['package']} {plugin['version']} (git {plugin['git_sha']})" if plugin else "")

    def row(metric: str, value: float, protocol: str = "", *, extra: dict[str, Any] | None = None,
            options: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        fields = {**base, "metric": metric, "protocol": protocol}
        context = {"tiny": config.tiny, "metric_options": options or None}
        h = config_hash(fields, env, extra=extra, context=context,
                        samples={"prompts": res.prompts, "labels": res.labels})
        notes = "; ".join(x for x in (config.notes, plugin_note, kw.pop("notes", "")) if x)
        return make_row(**fields, value=float(value), config_hash=h, notes=notes, **kw)

    def repeated(metric: str, per_batch: list[float], unit: str, notes: str, protocol: str = "") -> dict:
        return row(metric, statistics.median(per_batch), protocol, std=_std(per_batch), n=len(per_batch),
                   values=per_batch, unit=unit, higher_is_better=False, notes=notes)

    rows = []
    batches = f"median over {len(records)} batches of {res.batch_size} (one timed repeat each)"
    if "time" in config.trackers:
        size = [len(r["seeds"]) for r in records]
        per_video = [r["time_s"] / b for r, b in zip(records, size, strict=True)]
        rows.append(repeated("sampling_time", per_video, "s/video",
                             f"per video, whole sample() call; {batches}; 1 warm-up call per process"))
        stages = sorted({s for r in records for s in r["stage_times_s"]})
        if "vae_decoder" in stages:
            excl = [(r["time_s"] - r["stage_times_s"].get("vae_decoder", 0.0)) / b
                    for r, b in zip(records, size, strict=True)]
            rows.append(repeated("sampling_time_excl_vae_decoder", excl, "s/video",
                                 f"per video, sample() minus the SD VAE decoder stage; {batches}"))
        for st in stages:
            vals = [r["stage_times_s"].get(st, 0.0) / b for r, b in zip(records, size, strict=True)]
            rows.append(repeated(f"stage_time/{st}", vals, "s/video", f"per video, stage {st!r} of sample(); {batches}"))
        denoising = [s for s in stages if s not in NON_DENOISING_STAGES]
        if denoising:
            per_step = [sum(r["stage_times_s"].get(s, 0.0) for s in denoising) / b / res.steps
                        for r, b in zip(records, size, strict=True)]
            rows.append(repeated("time_per_step", per_step, "s/step",
                                 f"per video, stages {'+'.join(denoising)} / {res.steps} steps; {batches}"))
    if "memory" in config.trackers:
        label = records[0]["memory_label"]
        peaks = [r["peak_bytes"] / GIB for r in records]
        rows.append(repeated("peak_memory", peaks, "GiB",
                             f"absolute peak of each sample() call ({label}; weights included), "
                             f"median over {len(records)} batches of {res.batch_size}",
                             protocol=MEMORY_PROTOCOLS.get(label, label)))
    for name, metric in metrics.items():
        mv: MetricValue = metric.compute()
        extra = json.dumps(to_jsonable(mv.extra), sort_keys=True, default=str) if mv.extra else ""
        rows.append(row(name, mv.value, mv.protocol, extra=mv.extra, options=config.options_for(name), std=mv.std,
                        n=mv.n if mv.n is not None else len(seeds), unit=mv.unit,
                        higher_is_better=mv.higher_is_better, notes=extra))
    return rows


def _std(values: Sequence[float]) -> float | None:
    return statistics.stdev(values) if len(values) > 1 else None


# --- Finding a run to resume ----------------------------------------------------------------------------


def find_unfinished_run(config: BenchConfig, records_dir: str | Path) -> str | None:
    """The newest run in ``records_dir`` started with ``config`` that has not completed, else ``None``."""
    key = run_key(config)
    best: tuple[str, str] | None = None
    for path in Path(records_dir).glob("*.json"):
        try:
            meta = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(meta, dict) and meta.get("run_key") == key and not meta.get("complete"):
            stamp = meta.get("created_utc", "")
            if best is None or stamp > best[0]:
                best = (stamp, meta["run_id"])
    return best[1] if best else None

