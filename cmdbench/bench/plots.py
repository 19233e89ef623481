"""Figures from records with matplotlib (Agg): bar charts of one metric and trends over commits.

Every figure is written as PNG and PDF, atomically (temporary file, then rename), with fixed metadata
so re-rendering the same records gives the same PDF bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from cmdbench.bench.tables import TableError  # noqa: E402

FORMATS = ("png", "pdf")
_METADATA = {"png": {"Software": None}, "pdf": {"CreationDate": None, "Producer": None, "Creator": None}}


def save_figure(fig: plt.Figure, stem: str | Path, formats: Sequence[str] = FORMATS, dpi: int = 150) -> list[Path]:
    """Save ``fig`` as ``<stem>.png`` and ``<stem>.pdf`` atomically; closes the figure."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    try:
        for fmt in formats:
            path = stem.with_suffix(f".{fmt}")
            tmp = path.with_name(path.name + ".tmp")
            fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight", metadata=_METADATA.get(fmt))
            tmp.replace(path)
            paths.append(path)
    finally:
        plt.close(fig)
    return paths


def _one_metric(records: pd.DataFrame, metric: str) -> pd.DataFrame:
    rows = records[records["metric"] == metric]
    if rows.empty:
        known = sorted(records["metric"].dropna().unique())
        raise TableError(f"no records for metric {metric!r}; the records hold {known}")
    units = sorted(rows["unit"].dropna().unique())
    if len(units) > 1:
        raise TableError(f"metric {metric!r} comes in several units {units}; filter the records first")
    return rows


def bar_chart(records: pd.DataFrame, metric: str, stem: str | Path, *, by: str = "generator",
              title: str | None = None) -> list[Path]:
    """One bar per ``by`` value (newest row of each), error bars from ``std``; log-free, labelled units."""
    rows = _one_metric(records, metric).sort_values("created_utc").drop_duplicates(subset=[by], keep="last")
    rows = rows.sort_values(by)
    unit = rows["unit"].dropna().iloc[0] if rows["unit"].notna().any() else ""
    fig, ax = plt.subplots(figsize=(max(3.0, 0.9 * len(rows) + 1.5), 3.0))
    labels = rows[by].astype(str).tolist()
    err = rows["std"].astype("float64").fillna(0.0).to_numpy()
    ax.bar(labels, rows["value"].astype("float64").to_numpy(), yerr=err, capsize=3, color="#4C72B0")
    ax.set_ylabel(f"{metric} [{unit}]" if unit else metric)
    ax.set_title(title or metric)
    ax.tick_params(axis="x", labelrotation=30)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
    fig.tight_layout()
    return save_figure(fig, stem)


def commit_order(records: pd.DataFrame) -> list[str]:
    """git shas ordered by their first record's time."""
    first = records.groupby("git_sha", dropna=False)["created_utc"].min().sort_values()
    return [str(s) for s in first.index]


def trend_plot(records: pd.DataFrame, metric: str, stem: str | Path, *, title: str | None = None) -> list[Path]:
    """``metric`` over commits, one line per comparable configuration (``generator`` + ``config_hash``)."""
    rows = _one_metric(records[records["source"] == "measured"], metric).copy()
    rows["git_sha"] = rows["git_sha"].fillna("unknown")
    order = commit_order(rows)
    pos = {sha: i for i, sha in enumerate(order)}
    unit = rows["unit"].dropna().iloc[0] if rows["unit"].notna().any() else ""
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(order) + 2.0), 3.0))
    for (gen, h), g in rows.groupby(["generator", "config_hash"], sort=True, dropna=False):
        g = g.sort_values("created_utc").drop_duplicates(subset=["git_sha"], keep="last")
        g = g.assign(x=g["git_sha"].map(pos)).sort_values("x")
        ax.errorbar(g["x"], g["value"].astype("float64"), yerr=g["std"].astype("float64").fillna(0.0),
                    marker="o", capsize=3, label=f"{gen} ({str(h)[:6]})")
    ax.set_xticks(range(len(order)), [s[:7] for s in order], rotation=30, ha="right")
    ax.set_xlabel("commit")
    ax.set_ylabel(f"{metric} [{unit}]" if unit else metric)
    ax.set_title(title or f"{metric} over commits")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, stem)
