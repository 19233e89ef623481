"""Regression verdicts: pair reference and current rows on (config_hash, metric), judge each change.

Verdicts: ``improved`` / ``unchanged`` / ``regressed`` (beyond tolerance, in the metric's direction),
``new`` (only in current), ``missing`` (only in the reference). A change is within tolerance when
``|current - reference| <= max(abs, rel * |reference|)``. Direction comes from ``higher_is_better``;
a metric without a direction that changes beyond tolerance counts as regressed (it should not move).
Tolerances are per metric family, chosen for the noise each has: wall-clock time 10%, memory 5%,
counts (FLOPs, MACs, params) exact, quality metrics a few percent.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

VERDICTS = ("regressed", "missing", "new", "improved", "unchanged")


@dataclass(frozen=True)
class Tolerance:
    """Allowed change: ``max(abs, rel * |reference|)``."""

    rel: float = 0.0
    abs: float = 0.0

    def __post_init__(self) -> None:
        if self.rel < 0 or self.abs < 0:
            raise ValueError(f"tolerances must be >= 0, got rel={self.rel}, abs={self.abs}")

    def allowed(self, reference: float) -> float:
        return max(self.abs, self.rel * abs(reference))


# First matching pattern wins (fnmatch on the metric name).
DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "sampling_time*": Tolerance(rel=0.10),
    "stage_time_*": Tolerance(rel=0.10),
    "latency*": Tolerance(rel=0.10),
    "time_per_step*": Tolerance(rel=0.10),
    "peak_memory*": Tolerance(rel=0.05),
    "*flops*": Tolerance(rel=1e-6),
    "*macs*": Tolerance(rel=1e-6),
    "params*": Tolerance(rel=1e-6),
    "fvd*": Tolerance(rel=0.05, abs=1.0),
    "clipsim*": Tolerance(abs=0.002),
    "*": Tolerance(rel=0.05),
}


def tolerance_for(metric: str, tolerances: Mapping[str, Tolerance] = DEFAULT_TOLERANCES) -> Tolerance:
    for pattern, tol in tolerances.items():
        if fnmatch.fnmatchcase(metric, pattern):
            return tol
    return Tolerance()


def parse_tolerances(specs: list[str] | None) -> dict[str, Tolerance]:
    """``["0.2"]`` (relative, every metric) or ``["sampling_time=0.2", "clipsim=abs:0.01"]`` -> a table
    that takes precedence over :data:`DEFAULT_TOLERANCES`."""
    out: dict[str, Tolerance] = {}
    for spec in specs or []:
        pattern, _, value = spec.rpartition("=")
        pattern = pattern or "*"
        kind, _, number = value.rpartition(":")
        try:
            x = float(number)
        except ValueError:
            raise ValueError(f"tolerance {spec!r}: {number!r} is not a number; write e.g. 0.1, "
                             "sampling_time=0.2 or clipsim=abs:0.01") from None
        if kind not in ("", "rel", "abs"):
            raise ValueError(f"tolerance {spec!r}: kind {kind!r}; allowed rel: or abs:")
        out[pattern] = Tolerance(abs=x) if kind == "abs" else Tolerance(rel=x)
    return {**out, **{k: v for k, v in DEFAULT_TOLERANCES.items() if k not in out}}


def _latest(rows: pd.DataFrame) -> pd.DataFrame:
    rows = rows[rows["source"] == "measured"]
    return rows.sort_values("created_utc", kind="stable").drop_duplicates(["config_hash", "metric"], keep="last")


def compare(reference: pd.DataFrame, current: pd.DataFrame,
            tolerances: Mapping[str, Tolerance] = DEFAULT_TOLERANCES) -> pd.DataFrame:
    """One verdict row per (config_hash, metric) present on either side (the newest row of each side).

    Columns: generator, metric, config_hash, reference, current, change (relative), allowed, verdict,
    higher_is_better, unit. Sorted with regressions first.
    """
    ref, cur = _latest(reference), _latest(current)
    keys = ["config_hash", "metric"]
    cols = keys + ["generator", "value", "unit", "higher_is_better"]
    merged = ref[cols].merge(cur[cols], on=keys, how="outer", suffixes=("_ref", "_cur"), indicator="side")
    out = []
    for r in merged.itertuples(index=False):
        gen = r.generator_cur if pd.notna(r.generator_cur) else r.generator_ref
        unit = r.unit_cur if pd.notna(r.unit_cur) else r.unit_ref
        hib = r.higher_is_better_cur if pd.notna(r.higher_is_better_cur) else r.higher_is_better_ref
        tol = tolerance_for(r.metric, tolerances)
        row = {"generator": gen, "metric": r.metric, "config_hash": r.config_hash,
               "reference": r.value_ref, "current": r.value_cur, "change": math.nan, "allowed": math.nan,
               "verdict": "", "higher_is_better": hib, "unit": unit}
        if r.side == "left_only":
            row["verdict"] = "missing"
        elif r.side == "right_only":
            row["verdict"] = "new"
        else:
            ref_v, cur_v = float(r.value_ref), float(r.value_cur)
            allowed = tol.allowed(ref_v)
            delta = cur_v - ref_v
            row["change"] = delta / abs(ref_v) if ref_v else (0.0 if delta == 0 else math.inf)
            row["allowed"] = allowed
            if abs(delta) <= allowed:
                row["verdict"] = "unchanged"
            elif pd.isna(hib):
                row["verdict"] = "regressed"
            else:
                better = delta > 0 if bool(hib) else delta < 0
                row["verdict"] = "improved" if better else "regressed"
        out.append(row)
    df = pd.DataFrame(out, columns=["generator", "metric", "config_hash", "reference", "current", "change",
                                    "allowed", "verdict", "higher_is_better", "unit"])
    rank = {v: i for i, v in enumerate(VERDICTS)}
    df = df.assign(_rank=df["verdict"].map(rank)).sort_values(["_rank", "generator", "metric", "config_hash"])
    return df.drop(columns="_rank").reset_index(drop=True)


def exit_code(verdicts: pd.DataFrame, *, fail_on_missing: bool = False) -> int:
    """1 when any row regressed (or, with ``fail_on_missing``, went missing); else 0."""
    bad = {"regressed", "missing"} if fail_on_missing else {"regressed"}
    return int(verdicts["verdict"].isin(bad).any())


def summary(verdicts: pd.DataFrame) -> str:
    counts = verdicts["verdict"].value_counts()
    return ", ".join(f"{counts.get(v, 0)} {v}" for v in VERDICTS)


# --- Reference rows per device --------------------------------------------------------------------------


def device_slug(device_name: str) -> str:
    """A directory name for a device: ``"cpu: x86_64 (2 threads)"`` -> ``"cpu-x86-64-2-threads"``."""
    import re

    slug = re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-")
    return slug or "unknown-device"


def accept_reference(records: pd.DataFrame, reference_root: str | Path, run_ids: list[str] | None = None) -> list[Path]:
    """Promote measured rows (of ``run_ids``, default: the newest per config_hash and metric) into
    ``<reference_root>/<device-slug>/reference.csv``, replacing rows with the same (config_hash, metric)."""
    from cmdbench.bench.results import load_records, validate, write_table_csv

    rows = records[records["source"] == "measured"]
    if run_ids:
        unknown = sorted(set(run_ids) - set(rows["run_id"]))
        if unknown:
            raise ValueError(f"run ids {unknown} are not in the records; known {sorted(set(rows['run_id']))}")
        rows = rows[rows["run_id"].isin(run_ids)]
    rows = _latest(rows)
    if rows.empty:
        raise ValueError("no measured rows to accept as reference")
    written = []
    for device, group in rows.groupby("device_name", dropna=False):
        path = Path(reference_root) / device_slug(str(device)) / "reference.csv"
        old = load_records(path) if path.exists() else group.iloc[0:0]
        keep = old[~old.set_index(["config_hash", "metric"]).index.isin(group.set_index(["config_hash", "metric"]).index)]
        merged = validate(pd.concat([keep, group], ignore_index=True))
        written.append(write_table_csv(merged.sort_values(["generator", "metric", "config_hash"]), path))
    return written
