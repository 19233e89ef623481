"""Cost-scaling curves: paper-convention MACs, predicted GPU memory and predicted GPU time against the
number of frames and the frame size, for CMD and the baselines (``cmdbench efficiency --scaling``).

Every point builds the generator's full published architecture on the meta device and asks it for its
``cost_stages`` at that setting: a refused setting (``UnsupportedSettingError``: CMD's fixed 16 frames,
AnimateDiff's 32-frame motion tables, Latte's 16-entry temporal table, ...) becomes an "unsupported" point
with the generator's own reason, shown as such in the table and as a cross at the axis in the figure.
Counted points get the MACs from :func:`cmdbench.metrics.efficiency.count_generator_cost` (CMD's
convention, 50 steps) and memory and time from one fake-tensor run
(:func:`cmdbench.metrics.roofline.predict_sampling_cost`; fp16, batch 1, fused attention). Memory and time
are read as in Table 9: without the SD VAE decoder stage (whose ``cost_stages`` call decodes all frames at
once, while the samplers decode a few frames per call).

The grid (:data:`DEFAULT_FRAMES` at :data:`FRAMES_SIZE` square, :data:`DEFAULT_SIZES` square at
:data:`SIZES_FRAMES` frames) costs a few seconds per supported point on 2 CPU cores.
Rows are recorded by :func:`cmdbench.bench.repro_efficiency.record_scaling` with the protocol suffix
:data:`SCALING_TAG`; :func:`render_scaling` draws the table and figure from those records.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter, NullLocator

from cmdbench.bench.plots import plt, save_figure
from cmdbench.bench.tables import to_markdown, write_text_atomic
from cmdbench.interfaces import GeneratorSpec, UnsupportedSettingError
from cmdbench.metrics.efficiency import GeneratorCost, count_generator_cost
from cmdbench.metrics.memory_prediction import GIB, MemoryPrediction
from cmdbench.metrics.roofline import GPUSpec, TimePrediction, predict_sampling_cost
from cmdbench.registry import GENERATORS

SCALING_GENERATORS = ("cmd-webvid-512x1024", "modelscope-t2v", "lvdm-t2v", "animatediff-v152", "latte-1")
DEFAULT_FRAMES = (8, 16, 32, 64)
FRAMES_SIZE = 512  # frame-count axis at 512x512
DEFAULT_SIZES = (256, 512, 1024)
SIZES_FRAMES = 16  # size axis at 16 frames
STEPS = 50
SCALING_TAG = "scaling"
EXCLUDED = ("vae_decoder",)  # Table 9's reading: the SD decoder is left out
TIME_GPU = "A100-40GB"


@dataclass(frozen=True)
class ScalingPoint:
    """One (generator, setting) of the sweep: ``status`` "ok" (costs filled) or "unsupported" (``reason``)."""

    generator: str
    num_frames: int
    height: int
    width: int
    status: str
    reason: str = ""
    cost: GeneratorCost | None = None
    memory: MemoryPrediction | None = None
    time: TimePrediction | None = None
    conditioning: str | None = None


def scaling_grid(frames: Sequence[int] = DEFAULT_FRAMES, sizes: Sequence[int] = DEFAULT_SIZES, *,
                 frames_size: int = FRAMES_SIZE, sizes_frames: int = SIZES_FRAMES) -> list[tuple[int, int, int]]:
    """(frames, height, width) of both axes, each setting once, in axis order."""
    for what, values in (("frames", frames), ("sizes", sizes), ("frames_size", [frames_size]),
                         ("sizes_frames", [sizes_frames])):
        bad = [v for v in values if not isinstance(v, int) or v < 1]
        if bad or not values:
            raise ValueError(f"scaling grid {what}={list(values)}; allowed: positive integers")
    points = [(f, frames_size, frames_size) for f in frames] + [(sizes_frames, s, s) for s in sizes]
    return list(dict.fromkeys(points))


def _build(name: str) -> Any:
    return GENERATORS.get(name)(GeneratorSpec(checkpoint=None, device="meta", dtype="float16"))


def sweep(generators: Sequence[str], grid: Sequence[tuple[int, int, int]], *, steps: int = STEPS,
          log: Callable[[str], None] = print) -> list[ScalingPoint]:
    """Count and predict every generator at every grid setting (one meta build per generator: the
    prediction fakes its networks for a run and puts them back)."""
    points = []
    for name in generators:
        gen = _build(name)
        cond = getattr(gen, "conditioning", None)
        for frames, height, width in grid:
            try:
                cost = count_generator_cost(gen, frames, height, width, steps, name=name)
                memory, time = predict_sampling_cost(gen, num_frames=frames, height=height, width=width,
                                                     steps=steps, name=name)
            except UnsupportedSettingError as err:
                points.append(ScalingPoint(name, frames, height, width, "unsupported", reason=str(err)))
                log(f"  {name} {height}x{width}x{frames}: unsupported ({err})")
                continue
            finally:
                gc.collect()
            points.append(ScalingPoint(name, frames, height, width, "ok", cost=cost, memory=memory, time=time,
                                       conditioning=cond))
            log(f"  {name} {height}x{width}x{frames}: {cost.paper_tmacs:.1f} TMAC, "
                f"{memory.peak_excluding(EXCLUDED) / GIB:.2f} GiB predicted")
        del gen
    return points


def point_values(p: ScalingPoint, gpu: GPUSpec) -> dict[str, float]:
    """The three plotted figures of a counted point (memory and time without the SD VAE decoder)."""
    assert p.cost is not None and p.memory is not None and p.time is not None
    return {"tmacs_paper": p.cost.paper_tmacs, "memory_gib": p.memory.peak_excluding(EXCLUDED) / GIB,
            "time_s": p.time.time(gpu, exclude=EXCLUDED)}


# --- rendering from records -----------------------------------------------------------------------------------


def scaling_frame(rec: pd.DataFrame, gpu: str = TIME_GPU) -> pd.DataFrame:
    """One row per (generator, setting) of the newest scaling rows: TMAC, memory (GiB), time (s), status."""
    tagged = rec[rec["protocol"].astype("string").str.endswith(SCALING_TAG).fillna(False)]
    if tagged.empty:
        return pd.DataFrame(columns=["generator", "num_frames", "height", "width", "status", "reason",
                                     "tmacs_paper", "memory_gib", "time_s"])
    tagged = tagged.sort_values(["created_utc", "run_id"], kind="stable")
    rows = []
    for (gen, t, h, w), sub in tagged.groupby(["generator", "num_frames", "height", "width"], sort=True):
        sub = sub[sub["run_id"] == sub["run_id"].iloc[-1]]  # the newest run of this point
        by = {m: (float(v), str(n)) for m, v, n in zip(sub["metric"], sub["value"], sub["notes"], strict=True)}
        row = {"generator": gen, "num_frames": int(t), "height": int(h), "width": int(w)}
        if "unsupported" in by:
            rows.append(row | {"status": "unsupported", "reason": by["unsupported"][1]})
            continue
        stage_mem = [v for m, (v, _) in by.items() if m.startswith("predicted_peak_memory/")
                     and m.split("/", 1)[1] not in EXCLUDED]
        stage_time = [v for m, (v, _) in by.items() if m.startswith(f"predicted_time/{gpu}/")
                      and m.rsplit("/", 1)[1] not in EXCLUDED]
        rows.append(row | {"status": "ok", "reason": "",
                           "tmacs_paper": by.get("tmacs_paper", (np.nan, ""))[0],
                           "memory_gib": max(stage_mem) if stage_mem else np.nan,
                           "time_s": sum(stage_time) if stage_time else np.nan})
    return pd.DataFrame(rows)


def _axis_rows(df: pd.DataFrame, axis: str, frames_size: int, sizes_frames: int) -> pd.DataFrame:
    if axis == "frames":
        return df[(df["height"] == frames_size) & (df["width"] == frames_size)]
    return df[(df["num_frames"] == sizes_frames) & (df["height"] == df["width"])]


def scaling_table(df: pd.DataFrame) -> pd.DataFrame:
    """Markdown-ready table: one row per setting and generator, units in the headers."""
    out = []
    for r in df.sort_values(["generator", "num_frames", "height"], kind="stable").itertuples(index=False):
        setting = f"{r.height}x{r.width}x{r.num_frames}"
        if r.status != "ok":
            out.append({"Generator": r.generator, "Setting (HxWxT)": setting, "TMAC (50 steps)": "unsupported",
                        "pred. memory B=1 (GiB)": "–", f"pred. time {TIME_GPU} (s/video)": "–",
                        "note": str(r.reason)[:120]})
            continue
        out.append({"Generator": r.generator, "Setting (HxWxT)": setting, "TMAC (50 steps)": f"{r.tmacs_paper:.1f}",
                    "pred. memory B=1 (GiB)": f"{r.memory_gib:.2f}",
                    f"pred. time {TIME_GPU} (s/video)": f"{r.time_s:.2f}", "note": ""})
    return pd.DataFrame(out)


def scaling_figure(df: pd.DataFrame, stem: Path, *, frames_size: int = FRAMES_SIZE,
                   sizes_frames: int = SIZES_FRAMES) -> list[Path]:
    """3 x 2 panels: TMAC, predicted memory, predicted time (rows) against frames and size (columns).

    MACs and time on log axes, memory on a linear one; unsupported settings are crosses near the bottom
    (one row per generator).
    """
    fig, axes = plt.subplots(3, 2, figsize=(10, 10), sharex="col")
    quantities = (("tmacs_paper", "TMAC, 50 DDIM steps\n(CMD convention)"),
                  ("memory_gib", "predicted peak memory,\nbatch 1, fp16 (GiB)"),
                  ("time_s", f"predicted time on {TIME_GPU}\n(roofline, s/video)"))
    gens = sorted(df["generator"].unique()) if not df.empty else []
    colors = {g: plt.cm.tab10(i) for i, g in enumerate(gens)}
    for col, (axis, xkey, xlabel) in enumerate((("frames", "num_frames", f"frames (at {frames_size}x{frames_size})"),
                                                ("size", "height", f"frame size, square (at {sizes_frames} frames)"))):
        rows = _axis_rows(df, axis, frames_size, sizes_frames)
        for row_i, (q, ylabel) in enumerate(quantities):
            ax = axes[row_i, col]
            positive = False
            for i, g in enumerate(gens):
                sub = rows[rows["generator"] == g].sort_values(xkey)
                ok = sub[sub["status"] == "ok"]
                ys = ok[q].astype(float)
                positive |= bool((ys > 0).any())
                ax.plot(ok[xkey], ys, marker="o", color=colors[g], label=g)
                bad = sub[sub["status"] != "ok"]
                if not bad.empty:  # near the bottom edge, one row per generator (x in data, y in axes coordinates)
                    ax.scatter(bad[xkey], [0.03 + 0.045 * i] * len(bad), marker="x", color=colors[g], zorder=3,
                               transform=ax.get_xaxis_transform())
            ax.set_xscale("log", base=2)
            xs = sorted(rows[xkey].dropna().astype(int).unique())
            ax.set_xticks(xs, [str(x) for x in xs])
            ax.xaxis.set_minor_locator(NullLocator())
            if q == "memory_gib":  # GiB read best on a linear axis from zero
                ax.set_ylim(bottom=0)
            elif positive:
                ax.set_yscale("log")
                ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
            if col == 0:
                ax.set_ylabel(ylabel, fontsize=8)
            if row_i == 2:
                ax.set_xlabel(xlabel, fontsize=8)
            ax.tick_params(labelsize=7)
    if gens:
        axes[0, 0].legend(fontsize=7)
    fig.suptitle("Cost scaling (x near the bottom: a setting the generator refuses)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, stem)


def render_scaling(rec: pd.DataFrame, results: Path) -> tuple[list[Path], str]:
    """Write ``tables/scaling.md`` and ``figures/scaling.{png,pdf}`` from records; return (paths, markdown)."""
    df = scaling_frame(rec)
    if df.empty:
        text = "## Cost scaling\n\nNo scaling sweep recorded yet (`cmdbench efficiency --scaling`).\n"
        return [write_text_atomic(results / "tables" / "scaling.md", text)], text
    text = "\n".join([
        "## Cost scaling: TMAC, predicted memory and predicted time against frames and frame size", "",
        f"Frames axis at {FRAMES_SIZE}x{FRAMES_SIZE}, size axis at {SIZES_FRAMES} frames; 50 DDIM steps, batch 1, "
        "fp16, fused attention; memory and time without the SD VAE decoder (Table 9's reading). "
        "'unsupported': the generator refuses the setting (its reason is in the note).", "",
        to_markdown(scaling_table(df)).rstrip("\n"), ""])
    paths = [write_text_atomic(results / "tables" / "scaling.md", text)]
    paths += scaling_figure(df, results / "figures" / "scaling")
    return paths, text
