"""Render CMD's cost tables (8, 9, 10) and figures (1, 5, 6, trend) from records, paper vs reproduced.

Inputs: ``results/records/efficiency-*.csv`` (written by :mod:`cmdbench.bench.repro_efficiency`; the
newest row per measured quantity wins) and ``results/paper/cmd_arxiv_v1.csv`` (the paper's numbers).
Outputs: ``results/tables/efficiency.md`` (all tables, notes), ``results/tables/efficiency_table{8,9,9_measured,
9_predicted,10}.tex``, ``results/tables/scaling.md``, ``results/figures/efficiency_fig{1,5,6,_trend}.{png,pdf}``
and ``results/figures/scaling.{png,pdf}``. Rendering is deterministic: the same records give
byte-identical tables.

Metric names follow the shared meanings (``cmdbench.bench.repro_efficiency``'s docstring). Records written
before the rename (runs that hold ``sampling_time_total``) are read through :func:`upgrade_legacy_names`;
the files on disk are history and stay as written.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from cmdbench.bench.plots import plt, save_figure, trend_plot
from cmdbench.bench.results import load_records, read_csv
from cmdbench.bench.scaling import render_scaling
from cmdbench.bench.tables import to_latex, to_markdown, write_text_atomic

MAIN = (("CMD", "cmd-webvid-512x1024"), ("ModelScope", "modelscope-t2v"), ("LVDM", "lvdm-t2v"))
METHOD_OF = {"cmd-webvid-512x1024": "CMD", "cmd-sd15-512": "CMD", "modelscope-t2v": "ModelScope", "lvdm-t2v": "LVDM"}
TRAINING_COMPONENTS = (  # paper name, stage names that may carry it
    ("ModelScope diffusion", "modelscope-t2v", ("denoiser",)),
    ("LVDM diffusion", "lvdm-t2v", ("denoiser",)),
    ("CMD autoencoder", "cmd", ("autoencoder", "decoder")),  # "decoder": decoder half only (see note)
    ("CMD content-frame diffusion", "cmd", ("content",)),
    ("CMD motion diffusion", "cmd", ("motion",)),
)
PAPER_FILE = Path("paper") / "cmd_arxiv_v1.csv"
DEFAULT_PAPER = Path(__file__).resolve().parents[2] / "results" / PAPER_FILE
KEY = ["generator", "metric", "protocol", "num_frames", "height", "width", "steps", "batch_size", "dtype",
       "device_name"]
DASH = "–"
PREDICT_GPUS = ("A100-40GB", "H100-SXM", "H200")
EXCLUDED = ("vae_decoder",)
GIB_PER_GB = 1e9 / 2**30


# --- data -----------------------------------------------------------------------------------------------


def upgrade_legacy_names(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of runs written before the metric rename, under today's names and units (a copy).

    A run holding ``sampling_time_total`` used: ``sampling_time`` = per call minus the SD decoder (std an
    IQR), ``sampling_time_total`` = whole call, ``peak_memory`` = GB (1e9) excluding the decoder,
    ``peak_memory_total`` = GB of the whole call. They become ``sampling_time_excl_vae_decoder`` and
    ``sampling_time`` (per video: / batch size; std dropped: an IQR is not a standard deviation),
    ``peak_memory_excl_vae_decoder`` and ``peak_memory`` (GiB); memory protocols ``cpu-rss`` /
    ``cuda-allocated``; stage times per video. ``stage_peak_memory/<stage>`` (one run's name) becomes
    ``peak_memory/<stage>``.
    """
    staged = df["metric"].astype("string").str.startswith("stage_peak_memory/").fillna(False)
    if staged.any():  # the name stage peaks had for one run before they joined peak_memory/<stage>
        df = df.copy()
        df.loc[staged, "metric"] = df.loc[staged, "metric"].str.replace("stage_peak_memory/", "peak_memory/")
    legacy_runs = set(df.loc[df["metric"] == "sampling_time_total", "run_id"])
    if not legacy_runs:
        return df
    df = df.copy()
    old = df["run_id"].isin(legacy_runs)
    metric = df["metric"].copy()
    batch = df["batch_size"].astype("float64").fillna(1.0)
    timed = old & (metric.isin(["sampling_time", "sampling_time_total"]) | metric.str.startswith("stage_time/"))
    df.loc[timed, "value"] = df.loc[timed, "value"] / batch[timed]
    df.loc[timed, "unit"] = "s/video"
    df.loc[old & metric.isin(["sampling_time", "sampling_time_total"]), "std"] = np.nan
    df.loc[old & (metric == "time_per_step"), "unit"] = "s/step"
    memory = old & metric.isin(["peak_memory", "peak_memory_total"])
    df.loc[memory, "value"] = df.loc[memory, "value"] * GIB_PER_GB
    df.loc[memory, "unit"] = "GiB"
    labels = {"cpu_peak_rss": "cpu-rss", "cuda_max_memory_allocated": "cuda-allocated"}
    df.loc[memory, "protocol"] = df.loc[memory, "protocol"].map(lambda p: labels.get(p, p)).astype("string")
    renames = {"sampling_time": "sampling_time_excl_vae_decoder", "sampling_time_total": "sampling_time",
               "peak_memory": "peak_memory_excl_vae_decoder", "peak_memory_total": "peak_memory"}
    df.loc[old, "metric"] = metric[old].map(lambda m: renames.get(m, m)).astype("string")
    return df


def load_efficiency_records(records: Path) -> pd.DataFrame:
    """Newest measured row per quantity among ``efficiency-*`` runs (empty frame when none), legacy names
    upgraded (:func:`upgrade_legacy_names`)."""
    files = sorted(records.glob("efficiency-*.csv")) if records.is_dir() else []
    if not files:
        return _empty()
    df = upgrade_legacy_names(load_records(*files))
    df = df[df["source"] == "measured"].sort_values(["created_utc", "run_id"], kind="stable")
    return df.drop_duplicates(subset=KEY, keep="last").reset_index(drop=True)


def _empty() -> pd.DataFrame:
    from cmdbench.bench.results import COLUMNS, validate

    return validate(pd.DataFrame(columns=list(COLUMNS)))


def _get(df: pd.DataFrame, **where) -> pd.DataFrame:
    mask = pd.Series(True, index=df.index)
    for col, val in where.items():
        mask &= df[col] == val
    return df[mask.fillna(False)]


def _value(df: pd.DataFrame, **where) -> float | None:
    sel = _get(df, **where)
    return None if sel.empty else float(sel["value"].iloc[-1])


def _fmt(v: float | None, digits: int = 2) -> str:
    return DASH if v is None or pd.isna(v) else f"{v:.{digits}f}"


def _ratio(ours: float | None, paper: float | None) -> str:
    if ours is None or paper is None or pd.isna(ours) or pd.isna(paper) or paper == 0:
        return DASH
    return f"{ours / paper:.3f}"


def _paper(paper: pd.DataFrame, table: str, method: str, metric: str, **where) -> float | None:
    return _value(paper, protocol=table, generator=method, metric=metric, **where)


# --- tables ---------------------------------------------------------------------------------------------


def table9_flops(rec: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Paper-convention TMACs at 50/100 steps (paper vs ours), true TFLOPs, for every counted generator."""
    counted = _get(rec, metric="tmacs_paper", height=512, width=1024, num_frames=16, device_name="meta")
    refused = _get(rec, metric="unsupported", height=512, width=1024, num_frames=16, device_name="meta")
    gens = [g for _, g in MAIN] + sorted((set(counted["generator"]) | set(refused["generator"]))
                                         - {g for _, g in MAIN})
    rows = []
    for gen in gens:
        method = METHOD_OF.get(gen, gen)
        cells = {"Method": method, "Generator": gen}
        if _get(counted, generator=gen).empty and not _get(refused, generator=gen).empty:
            note = str(_get(refused, generator=gen)["notes"].iloc[-1])
            rows.append(cells | {"TMAC 50 paper": DASH, "TMAC 50 ours": f"unsupported: {note}"})
            continue
        for steps in (50, 100):
            p = _paper(paper, "Table 9", method, "tmacs_paper", steps=steps)
            o = _value(counted, generator=gen, steps=steps)
            cells |= {f"TMAC {steps} paper": _fmt(p, 1), f"TMAC {steps} ours": _fmt(o, 1),
                      f"ratio {steps}": _ratio(o, p)}
        true = _value(rec, generator=gen, metric="tflops_true", steps=50, batch_size=1, device_name="meta",
                      height=512, width=1024)
        cells["true TFLOP 50 (CFG, text enc., decoders)"] = _fmt(true, 1)
        rows.append(cells)
    return pd.DataFrame(rows)


def flops_ratios(rec: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """The Fig. 1 caption's '16.7x less computation': baseline / CMD TMAC ratios, paper vs ours."""
    rows = []
    cmd = _value(rec, generator="cmd-webvid-512x1024", metric="tmacs_paper", steps=50, device_name="meta")
    pcmd = _paper(paper, "Table 9", "CMD", "tmacs_paper", steps=50)
    for method, gen in MAIN[1:]:
        o = _value(rec, generator=gen, metric="tmacs_paper", steps=50, device_name="meta")
        p = _paper(paper, "Table 9", method, "tmacs_paper", steps=50)
        rows.append({"Ratio": f"{method} / CMD (TMAC, 50 steps)",
                     "paper": _fmt(p / pcmd if p and pcmd else None, 2),
                     "ours": _fmt(o / cmd if o and cmd else None, 2)})
    return pd.DataFrame(rows)


def measured_groups(rec: pd.DataFrame) -> list[tuple[str, str, int, int, int, int]]:
    """(device, dtype, frames, height, width, steps) of the newest measured sampling run per device."""
    m = rec[rec["metric"].isin(["sampling_time", "out_of_memory", "unsupported"]) & (rec["device_name"] != "meta")]
    out = []
    for dev, sub in m.groupby("device_name", sort=True):
        last = sub.sort_values("created_utc", kind="stable").iloc[-1]
        out.append((dev, last["dtype"], int(last["num_frames"]), int(last["height"]), int(last["width"]),
                    int(last["steps"])))
    return out


def _newest_run(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows of the newest run among ``rows`` (by created_utc, then run_id)."""
    if rows.empty:
        return rows
    newest = rows.sort_values(["created_utc", "run_id"], kind="stable")["run_id"].iloc[-1]
    return rows[rows["run_id"] == newest]


def table9_measured(rec: pd.DataFrame, paper: pd.DataFrame, group: tuple) -> pd.DataFrame:
    """Measured sampling time and peak memory at one (device, setting), with speed-ups vs CMD."""
    dev, dtype, t, h, w, steps = group
    sel = _get(rec, device_name=dev, dtype=dtype, num_frames=t, height=h, width=w, steps=steps)
    excl = "sampling_time_excl_vae_decoder"
    cmd_time = _value(_newest_run(_get(sel, generator="cmd-webvid-512x1024")), metric=excl, batch_size=1)
    rows = []
    for method, gen in MAIN:
        mine = _newest_run(_get(sel, generator=gen))  # an older run's "unsupported" flag must not mask a newer time

        def val(metric: str, b: int = 1, _rows: pd.DataFrame = mine) -> float | None:
            return _value(_rows, metric=metric, batch_size=b)

        status = ("unsupported setting" if val("unsupported") else "OOM" if val("out_of_memory") else "")
        time_b1 = val(excl)
        p_time = _paper(paper, "Table 9", method, "sampling_time", steps=50)
        p_cmd = _paper(paper, "Table 9", "CMD", "sampling_time", steps=50)
        rows.append({
            "Method": method, "time B=1 excl. SD dec. (s/video)": status or _fmt(time_b1, 2),
            "time/step (s/step)": status or _fmt(val("time_per_step"), 2),
            "whole call B=1 (s/video)": status or _fmt(val("sampling_time"), 2),
            "peak mem B=1 excl. SD dec. (GiB)": status or _fmt(val("peak_memory_excl_vae_decoder"), 2),
            "peak mem B=4 excl. SD dec. (GiB)": ("OOM" if val("out_of_memory", 4)
                                                 else _fmt(val("peak_memory_excl_vae_decoder", 4), 2)),
            "time / CMD time (ours)": _fmt(time_b1 / cmd_time if time_b1 and cmd_time else None, 2),
            "paper time 50 (s)": _fmt(p_time, 2),
            "time / CMD time (paper)": _fmt(p_time / p_cmd if p_time and p_cmd else None, 2),
            "paper mem B=1 / B=4 (GB)": f"{_fmt(_paper(paper, 'Table 9', method, 'peak_memory', batch_size=1))} / "
                                        f"{_fmt(_paper(paper, 'Table 9', method, 'peak_memory', batch_size=4))}",
        })
    return pd.DataFrame(rows)


# --- predictions (fake tensors) beside the paper and GPU measurements ------------------------------------


def _predicted(rec: pd.DataFrame, gen: str, **where) -> pd.DataFrame:
    """Predicted rows of ``gen`` at the paper setting in fp16 (not the scaling sweep's, not the
    mixed-precision variant's)."""
    sel = _get(rec, generator=gen, num_frames=16, height=512, width=1024, device_name="meta", **where)
    protocol = sel["protocol"].astype("string")
    return sel[~(protocol.str.endswith("scaling") | protocol.str.contains("amp=")).fillna(False)]


def predicted_memory(rec: pd.DataFrame, gen: str, batch_size: int, exclude: tuple[str, ...] = EXCLUDED) -> float | None:
    """Predicted peak (GiB) of ``gen`` at the paper setting without the ``exclude`` stages."""
    sel = _predicted(rec, gen, batch_size=batch_size)
    stages = sel[sel["metric"].astype("string").str.startswith("predicted_peak_memory/")]
    kept = [float(v) for m, v in zip(stages["metric"], stages["value"], strict=True)
            if m.split("/", 1)[1] not in exclude]
    return max(kept) if kept else None


def predicted_time(rec: pd.DataFrame, gen: str, gpu: str, exclude: tuple[str, ...] = EXCLUDED) -> float | None:
    """Predicted roofline seconds per video of ``gen`` on ``gpu`` (50 steps, batch 1) without ``exclude``."""
    sel = _predicted(rec, gen, batch_size=1, steps=50)
    prefix = f"predicted_time/{gpu}/"
    stages = sel[sel["metric"].astype("string").str.startswith(prefix)]
    kept = [float(v) for m, v in zip(stages["metric"], stages["value"], strict=True)
            if m[len(prefix):] not in exclude]
    return sum(kept) if kept else None


def gpu_measured(rec: pd.DataFrame, gen: str, metric: str, batch_size: int) -> tuple[float, str] | None:
    """Newest GPU measurement of ``metric`` for ``gen`` at the paper setting: (value, device)."""
    sel = _get(rec, generator=gen, metric=metric, batch_size=batch_size, num_frames=16, height=512, width=1024,
               steps=50)
    sel = sel[(sel["device_name"] != "meta") & ~sel["device_name"].astype("string").str.startswith("cpu").fillna(True)]
    if sel.empty:
        return None
    last = sel.sort_values(["created_utc", "run_id"], kind="stable").iloc[-1]
    return float(last["value"]), str(last["device_name"])


def table9_predicted(rec: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Table 9's time and memory: paper (A100 40GB) | predicted (fake tensors) | measured on a GPU, if any.

    Predicted times are the per-op roofline (a lower bound), memory the fake-tensor peak in GiB; both
    without the SD VAE decoder stage, as the paper reports. Paper memory is printed in "GB"; the ratio
    reads it as GiB (PyTorch's ``/ 2**30``, the usual reading) -- as decimal GB it would be 7.4% lower.
    """
    rows = []
    for method, gen in MAIN:
        cells: dict[str, str] = {"Method": method}
        p_time = _paper(paper, "Table 9", method, "sampling_time", steps=50)
        cells["paper A100 time (s)"] = _fmt(p_time, 2)
        for gpu in PREDICT_GPUS:
            cells[f"pred. {gpu} time (s/video)"] = _fmt(predicted_time(rec, gen, gpu), 2)
        a100 = predicted_time(rec, gen, "A100-40GB")
        cells["pred. A100 / paper"] = _ratio(a100, p_time)
        measured_t = gpu_measured(rec, gen, "sampling_time_excl_vae_decoder", 1)
        cells["measured time (s/video)"] = f"{measured_t[0]:.2f} ({measured_t[1]})" if measured_t else "no GPU run"
        for b in (1, 4):
            p_mem = _paper(paper, "Table 9", method, "peak_memory", batch_size=b)
            pred = predicted_memory(rec, gen, b)
            cells[f"paper mem B={b} (GB)"] = _fmt(p_mem, 2)
            cells[f"pred. mem B={b} (GiB)"] = _fmt(pred, 2)
            cells[f"pred./paper B={b}"] = _ratio(pred, p_mem)
            measured_m = gpu_measured(rec, gen, "peak_memory_excl_vae_decoder", b)
            cells[f"measured mem B={b} (GiB)"] = f"{measured_m[0]:.2f}" if measured_m else "no GPU run"
        rows.append(cells)
    return pd.DataFrame(rows)


def predicted_ratios(rec: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Predicted time ratios baseline / CMD per GPU beside the paper's measured A100 ratios (11.2x, 7.7x)."""
    rows = []
    p_cmd = _paper(paper, "Table 9", "CMD", "sampling_time", steps=50)
    for method, gen in MAIN[1:]:
        p = _paper(paper, "Table 9", method, "sampling_time", steps=50)
        cells = {"Ratio": f"{method} / CMD time", "paper (A100, measured)": _fmt(p / p_cmd if p and p_cmd else None)}
        for gpu in PREDICT_GPUS:
            o, c = predicted_time(rec, gen, gpu), predicted_time(rec, "cmd-webvid-512x1024", gpu)
            cells[f"predicted {gpu}"] = _fmt(o / c if o and c else None)
        rows.append(cells)
    return pd.DataFrame(rows)


_OPS = re.compile(r"(\d+) ops per call x (\d+) calls")


def prediction_breakdown(rec: pd.DataFrame) -> pd.DataFrame:
    """Per stage: predicted peak memory at batch 1 and 4 (GiB, weights of every network included) and A100
    roofline time (s/video), with ops per call x calls; the rows that explain a miss against Table 9."""
    rows = []
    for method, gen in MAIN:
        sel = _predicted(rec, gen)
        mem = sel[sel["metric"].astype("string").str.startswith("predicted_peak_memory/")]
        for stage in sorted({m.split("/", 1)[1] for m in mem["metric"]}):
            t = _get(sel, metric=f"predicted_time/A100-40GB/{stage}", batch_size=1, steps=50)
            ops = _OPS.search(str(t["notes"].iloc[-1])) if not t.empty else None
            rows.append({"Method": method, "stage": stage,
                         "pred. peak B=1 (GiB)": _fmt(_value(sel, metric=f"predicted_peak_memory/{stage}", batch_size=1)),
                         "pred. peak B=4 (GiB)": _fmt(_value(sel, metric=f"predicted_peak_memory/{stage}", batch_size=4)),
                         "pred. A100 time (s/video)": _fmt(float(t["value"].iloc[-1]) if not t.empty else None, 3),
                         "ops/call x calls": f"{ops.group(1)} x {ops.group(2)}" if ops else DASH})
        weights = _value(sel, metric="predicted_weights_memory", batch_size=1)
        if weights is not None:
            rows.append({"Method": method, "stage": "(weights of all networks)", "pred. peak B=1 (GiB)": _fmt(weights),
                         "pred. peak B=4 (GiB)": _fmt(_value(sel, metric="predicted_weights_memory", batch_size=4)),
                         "pred. A100 time (s/video)": DASH, "ops/call x calls": DASH})
    return pd.DataFrame(rows)


def table8(rec: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Training-step cost per component at 512x512x16, batch 1."""
    names = rec["metric"].astype("string")
    train = rec[names.str.startswith("train_") | names.str.startswith("predicted_train_")]
    rows = []
    for name, gen_prefix, stages in TRAINING_COMPONENTS:
        sub = train[train["generator"].astype("string").str.startswith(gen_prefix)]
        if not sub.empty:  # one generator per component: the one of the newest training rows
            newest = sub.sort_values(["created_utc", "run_id"], kind="stable")["generator"].iloc[-1]
            sub = sub[sub["generator"] == newest]
        stage = next((s for s in stages if not _get(sub, metric=f"train_tmacs_forward/{s}").empty), None)
        fwd = _value(sub, metric=f"train_tmacs_forward/{stage}") if stage else None
        both = _value(sub, metric=f"train_tflops_true/{stage}") if stage else None
        params = _value(sub, metric=f"train_params/{stage}") if stage else None
        pred_mem = _value(sub, metric=f"predicted_train_peak_memory/{stage}") if stage else None
        gen = _get(sub, metric=f"train_tmacs_forward/{stage}")["generator"].iloc[-1] if stage else DASH
        p = _paper(paper, "Table 8", name, "tmacs_paper")
        label = f"{name} (decoder only)" if stage == "decoder" else name
        rows.append({
            "Component": label, "Generator": gen, "TFLOPs paper": _fmt(p, 2),
            "fwd TMAC ours (paper conv.)": _fmt(fwd, 2) if stage else "not counted", "ratio": _ratio(fwd, p),
            "fwd+bwd TFLOP ours (true)": _fmt(both, 2), "params (M)": _fmt(params * 1e3 if params else None, 1),
            "paper s/step": _fmt(_paper(paper, "Table 8", name, "time_per_step"), 3),
            "paper mem (GB)": _fmt(_paper(paper, "Table 8", name, "peak_memory"), 2),
            "pred. mem (GiB)": _fmt(pred_mem, 2),
        })
    return pd.DataFrame(rows)


def table10(rec: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    rows = []
    counted = _get(rec, device_name="meta", height=512, width=1024, steps=50)
    for method, gen in MAIN:
        p = _paper(paper, "Table 10", method, "params")
        allp = _value(counted, generator=gen, metric="params")
        den = _value(counted, generator=gen, metric="params_denoiser")
        rows.append({"Method": method, "paper (B)": _fmt(p, 2), "ours: all networks (B)": _fmt(allp, 3),
                     "ratio all": _ratio(allp, p), "ours: paper-convention stages (B)": _fmt(den, 3),
                     "ratio stages": _ratio(den, p)})
    for method in ("VideoLDM", "Imagen-Video", "PYoCo", "CogVideo"):
        p = _paper(paper, "Table 10", method, "params")
        rows.append({"Method": method, "paper (B)": _fmt(p, 2), "ours: all networks (B)": "not built",
                     "ratio all": DASH, "ours: paper-convention stages (B)": DASH, "ratio stages": DASH})
    return pd.DataFrame(rows)


# --- figures --------------------------------------------------------------------------------------------


def _save(fig, figures: Path, stem: str) -> list[Path]:
    return save_figure(fig, figures / stem)


def figure1(rec: pd.DataFrame, paper: pd.DataFrame, figures: Path) -> list[Path]:
    """Bubble plot: WebVid FVD (paper, Table 3) vs sampling memory, bubble area ~ TMAC at 50 steps."""

    fig, ax = plt.subplots(figsize=(5.5, 4))
    gpu = [g for g in measured_groups(rec) if (g[3], g[4], g[2]) == (512, 1024, 16) and g[0] != "meta"
           and not g[0].startswith("cpu")]
    sources = set()
    xs = []
    for method, gen in MAIN:
        fvd = _value(paper, protocol="Table 3", generator=method, metric="fvd")
        mem_ours = _value(_get(rec, device_name=gpu[-1][0]), generator=gen, metric="peak_memory_excl_vae_decoder",
                          batch_size=1) if gpu else None
        mem, src = mem_ours, f"measured on {gpu[-1][0]}" if gpu else ""
        if mem is None:
            mem, src = predicted_memory(rec, gen, 1), "predicted, fake tensors, GiB"
        if mem is None:
            mem, src = _paper(paper, "Table 9", method, "peak_memory", batch_size=1), "paper Table 9"
        sources.add(src)
        tm = _value(rec, generator=gen, metric="tmacs_paper", steps=50, device_name="meta")
        tm_label = "ours" if tm is not None else "paper"
        tm = tm if tm is not None else _paper(paper, "Table 9", method, "tmacs_paper", steps=50)
        if fvd is None or mem is None or tm is None:
            continue
        ax.scatter([mem], [fvd], s=tm * 2.0, alpha=0.5)
        xs.append(mem)
        ax.annotate(f"{method}\n{tm:.0f} TMAC ({tm_label})", (mem, fvd), ha="center", va="center", fontsize=8)
    ax.set_xlabel(f"sampling memory, excl. SD decoder ({'; '.join(sorted(sources))})", fontsize=8)
    ax.set_ylabel("WebVid-10M FVD (paper, Table 3)")
    ax.set_title("Fig. 1: FVD vs memory; bubble area ~ TMAC (50 steps, counted)", fontsize=9)
    ax.set_xlim(min([4.5, *[x - 1.0 for x in xs]]), max([10.0, *[x + 1.5 for x in xs]]))
    ax.set_ylim(150, 550)
    return _save(fig, figures, "efficiency_fig1")


def _bars(ax, labels: list[str], paper_vals: list, ours_vals: list, ylabel: str) -> None:
    x = np.arange(len(labels))
    for dx, vals, label in ((-0.2, paper_vals, "paper"), (0.2, ours_vals, "ours (counted)")):
        bars = ax.bar(x + dx, [v if v is not None else 0 for v in vals], 0.4, label=label)
        ax.bar_label(bars, labels=["n/a" if v is None else f"{v:.4g}" for v in vals], fontsize=6)
    ax.set_xticks(x)
    ax.set_xticklabels([textwrap.fill(s, 12) for s in labels], fontsize=7)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)


def figure5(rec: pd.DataFrame, paper: pd.DataFrame, figures: Path) -> list[Path]:

    t8 = table8(rec, paper)
    num = lambda s: None if s in (DASH, "not counted") else float(s)  # noqa: E731
    fig, ax = plt.subplots(figsize=(8, 3.8))
    labels = list(t8["Component"])
    _bars(ax, labels, [num(v) for v in t8["TFLOPs paper"]], [num(v) for v in t8["fwd TMAC ours (paper conv.)"]],
          "TMAC per training forward (512x512x16)")
    ax.set_title("Fig. 5: training cost per component", fontsize=9)
    return _save(fig, figures, "efficiency_fig5")


def figure6(rec: pd.DataFrame, paper: pd.DataFrame, figures: Path) -> list[Path]:

    t9 = table9_flops(rec, paper).iloc[: len(MAIN)]
    num = lambda s: None if s == DASH else float(s)  # noqa: E731
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, steps in zip(axes, (50, 100), strict=True):
        _bars(ax, list(t9["Method"]), [num(v) for v in t9[f"TMAC {steps} paper"]],
              [num(v) for v in t9[f"TMAC {steps} ours"]], f"TMAC, {steps} DDIM steps")
    fig.suptitle("Fig. 6: sampling cost at 512x1024x16 (CMD convention)", fontsize=9)
    fig.tight_layout()
    return _save(fig, figures, "efficiency_fig6")


def figure_trend(rec_dir: Path, figures: Path) -> list[Path]:
    """Paper-convention TMAC (paper setting, 50 steps) and measured sampling time over commits."""
    files = sorted(rec_dir.glob("efficiency-*.csv")) if rec_dir.is_dir() else []
    if not files:
        return []
    df = upgrade_legacy_names(load_records(*files))
    out = []
    tm = _get(df, metric="tmacs_paper", steps=50, height=512, width=1024, device_name="meta")
    if not tm.empty:
        out += trend_plot(tm, "tmacs_paper", figures / "efficiency_trend_tmacs",
                          title="paper-convention TMAC at 512x1024x16, 50 steps, over commits")
    st = _get(df, metric="sampling_time_excl_vae_decoder", batch_size=1)
    if not st.empty:
        out += trend_plot(st, "sampling_time_excl_vae_decoder", figures / "efficiency_trend_time",
                          title="measured sampling time excl. SD decoder (batch 1) over commits")
    return out


# --- rendering ------------------------------------------------------------------------------------------


def _md(df: pd.DataFrame) -> str:
    return to_markdown(df).rstrip("\n")


def _tex(df: pd.DataFrame, caption: str) -> str:
    return to_latex(df, caption=caption)


NOTES = """\
Notes
- "TMAC" is CMD's "TFLOPs" unit: fvcore-style multiply-accumulates of one conditional denoiser pass per
  step, batch 1, attention-score products (QK^T, AV), text encoder and SD VAE decoder excluded; CMD's own
  autoencoder decoder is included (reference/baselines.md §4.1). Counted with torch FlopCounterMode on
  the meta device, attention by formula, from each generator's `cost_stages` (full published
  architecture). Never typed in.
- "true TFLOP" = 2*MAC of every op incl. attention, both classifier-free-guidance passes, text encoder
  and decoders, batch 1.
- Paper numbers: results/paper/cmd_arxiv_v1.csv (arXiv:2403.14148 v1, App. D). The paper measured on an
  A100 40GB (sampling) / 80GB (training) in fp16 with xformers.
- Measured rows: random weights, generator's own `sample()`, per-stage split through `stage_hook`; times
  in seconds per video, "excl. SD dec." subtracts the SD VAE decoder stage as in the paper. CPU memory is
  the process's peak resident set size (weights, runtime and activations), not GPU memory.
- Predicted rows (no GPU, no weights): every network of `cost_stages` runs once per stage on fake CUDA
  tensors (torch FakeTensorMode) in fp16 at the call's batch (batch x guidance passes); a live-storage
  tracker gives the peak `max_memory_allocated` would read (512-byte blocks, all networks' weights
  resident, cuBLAS/cuBLASLt workspaces of an A100 added; CUDA context and cuDNN workspaces not included).
  Attention runs through the kernel a GPU picks (FlashAttention / memory-efficient; no score matrix),
  hand-written attention (LVDM's temporal attention) as written. Time: per-op roofline
  max(FLOPs / peak, bytes / bandwidth) summed (datasheet peaks in cmdbench/metrics/gpu_specs.csv);
  kernel-launch overheads and achieved-vs-peak efficiency are not modelled, so it is a lower bound that
  flatters networks of many small kernels (CMD) the most.
"""


def render(results: Path) -> list[Path]:
    """Render every efficiency table and figure under ``results``; return the written paths."""
    rec = load_efficiency_records(results / "records")
    paper_path = results / PAPER_FILE
    if not paper_path.exists():  # a results root outside the checkout: use the committed transcription
        paper_path = DEFAULT_PAPER
    paper = read_csv(paper_path)
    tables = results / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    t9, ratios, t8, t10 = table9_flops(rec, paper), flops_ratios(rec, paper), table8(rec, paper), table10(rec, paper)
    parts = ["# CMD cost reproduction (Tables 8, 9, 10)", "",
             "## Table 9: sampling FLOPs at 512x1024x16 (counted on the meta device)", "", _md(t9), "",
             _md(ratios), ""]
    tex = {"efficiency_table9.tex": _tex(t9, "Table 9 (FLOPs): paper vs reproduced"),
           "efficiency_table8.tex": _tex(t8, "Table 8: training cost per component, 512x512x16, batch 1"),
           "efficiency_table10.tex": _tex(t10, "Table 10: parameters")}
    groups = measured_groups(rec)
    measured_tex = []
    for g in groups:
        dev, dtype, t, h, w, steps = g
        tm = table9_measured(rec, paper, g)
        parts += [f"## Table 9: measured sampling on {dev}, {dtype}, {h}x{w}x{t}, {steps} DDIM steps", "",
                  "Paper columns are at 512x1024x16, 50 steps, A100 40GB, fp16." if (h, w, steps) != (512, 1024, 50)
                  else "Same setting as the paper (A100 40GB there).", "", _md(tm), ""]
        measured_tex.append(_tex(tm, f"Table 9 (measured): {dev}, {dtype}, {h}x{w}x{t}, {steps} steps"))
        sel = _get(rec, device_name=dev, dtype=dtype, num_frames=t, height=h, width=w, steps=steps, batch_size=1)
        ms, lv = (_value(sel, generator=g, metric="sampling_time_excl_vae_decoder")
                  for g in ("modelscope-t2v", "lvdm-t2v"))
        pms, plv = (_paper(paper, "Table 9", m, "sampling_time", steps=50) for m in ("ModelScope", "LVDM"))
        if ms and lv and pms and plv:
            parts += [f"ModelScope / LVDM sampling time: ours {ms / lv:.2f}, paper {pms / plv:.2f} "
                      f"({pms} s / {plv} s).", ""]
    if not groups:
        parts += ["## Table 9: measured sampling", "", "No measured run recorded yet.", ""]
    tex["efficiency_table9_measured.tex"] = "\n".join(measured_tex) or "% no measured run recorded\n"
    t9p, pratios, breakdown = table9_predicted(rec, paper), predicted_ratios(rec, paper), prediction_breakdown(rec)
    parts += ["## Table 9: time and memory, paper vs predicted without a GPU vs measured on a GPU", "",
              "512x1024x16, 50 DDIM steps, fp16, SD VAE decoder excluded. Paper: A100 40GB. Predicted: fake "
              "tensors (memory, GiB) and per-op roofline (time, a lower bound); 'no GPU run': no GPU record at "
              "this setting yet. Paper memory is printed in GB; the ratio reads it as GiB (decimal GB would be "
              "7.4% lower).", "", _md(t9p), "", _md(pratios), "",
              "Per-stage breakdown of the predictions (peaks are absolute: the weights of every network the "
              "sampler keeps on the GPU are in each stage's peak):", "", _md(breakdown), ""]
    tex["efficiency_table9_predicted.tex"] = _tex(t9p, "Table 9: paper vs predicted (fake tensors, roofline) vs "
                                                       "measured time and memory")
    scaling_paths, scaling_md = render_scaling(rec, results)
    parts += [scaling_md, "![cost scaling](../figures/scaling.png)", ""] if len(scaling_paths) > 1 else [scaling_md]
    parts += ["## Table 8: training cost per component, 512x512x16, batch 1", "", _md(t8), "",
              "Paper 'TFLOPs' here match one forward pass in the same MAC unit (cmd-paper.md §7: 939.0/50/2 = 9.39 "
              "vs 9.41), so 'fwd TMAC ours' is compared; 'fwd+bwd' is the real training-step work. Networks come from "
              "a generator's `training_cost_stages` when it has one, else from its paper-convention sampling "
              "stages (then the CMD autoencoder row holds its decoder only: the encoder is not a sampling "
              "stage). CMD's autoencoder row is encoder + decoder on the 4x16x64x64 latent clip (SD VAE "
              "excluded).", "",
              "The paper's Table 8 setting is 512x512x16. CMD's rows use the cmd-webvid-512x1024 architecture "
              "(SD 2.1-base UNet; motion DiT-XL/2, content patch 8) at that size: 16/2 x (32+32)/2 = 256 motion "
              "tokens + (64/8)^2 = 64 content tokens = 320, which gives the paper's 0.14 for the motion model "
              "(the SD 1.5 variant's content patch 4 gives 256 + 256 = 512 tokens and 0.23).", "",
              "'pred. mem' is the fake-tensor peak of one steady-state training step of that network alone: "
              "float32 weights, gradients and Adam moments, CUDA-autocast fp16 activations, fused attention, "
              "no gradient checkpointing (as the paper), no EMA copy and no frozen networks (text encoder, "
              "VAE, CMD autoencoder) resident.", "",
              "## Table 10: parameters", "", _md(t10), "", NOTES]
    written = list(scaling_paths)
    written.append(write_text_atomic(tables / "efficiency.md", "\n".join(parts)))
    for name, text in tex.items():
        written.append(write_text_atomic(tables / name, text))
    figures = results / "figures"
    for fn in (figure1, figure5, figure6):
        written += fn(rec, paper, figures)
    written += figure_trend(results / "records", figures)
    return written


def render_efficiency(root: str | Path = ".") -> list[Path]:
    """Entry of :data:`cmdbench.bench.render.RENDERERS`: render from ``<root>/results``."""
    return render(Path(root) / "results")
