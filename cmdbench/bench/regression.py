"""Regression verdicts that read noise: pair reference and current rows, judge each change by its kind.

Pairing. Rows pair on ``(config_hash, metric)`` (:func:`cmdbench.bench.results.config_hash`: the setting
and protocol, not the seeds of a cost figure), newest row per side and device. The device key
(:func:`cmdbench.env.device_key`: CPU model or GPU, threads, torch and BLAS build) is compared apart: a
timing, memory or quality figure measured under another key is **incomparable**, never regressed.

How each kind of figure is judged (:func:`cmdbench.bench.results.metric_kind`):

* **exact** (FLOP/MAC counts, parameters, predicted memory and time): any difference is **changed**; the
  change is reported in percent and fails the gate until the new value is accepted.
* **timed** (``sampling_time``, ``stage_time/*``, ``kernel_time/*``, ...) and measured **memory**: gated only
  when both sides kept at least :data:`MIN_REPEATS` raw repeats (the ``values`` column); otherwise the pair
  is shown and marked **not gated**. A gated pair **regressed** (or **improved**) only when both

  1. the ratio of medians ``median(current) / median(reference)`` is beyond the band (10% for time, 5%
     for memory), and
  2. the distributions are separated: the bootstrap confidence interval of that ratio of medians lies
     entirely beyond the band (percentile interval, :data:`CONFIDENCE`, fixed seed so verdicts repeat).

  A median beyond the band whose interval still reaches into it is **not separated** (shown, not failing).
  On a CPU, a timing whose medians are both under :data:`MIN_GATED_SECONDS` (2 ms) is shown, not gated:
  10% of it is within the jitter a shared CPU adds to any call (a 0.14 ms label-embedding stage moved
  +49% with both intervals tight when the figure timed before it changed).
  Method: the percentile bootstrap of a ratio of two independent samples' statistics, as recommended for
  execution-time ratios by Kalibera & Jones, "Rigorous Benchmarking in Reasonable Time" (ISMM 2013, §5),
  after Efron & Tibshirani, *An Introduction to the Bootstrap* (1993, ch. 13); computed with
  ``scipy.stats.bootstrap``. Chosen over Mann-Whitney U (airspeed velocity's test) because it asks the
  question the gate needs -- "is the slowdown larger than the band?" -- not only "do they differ?", and
  because an exact U test cannot reach significance with 3 + 3 repeats.
* CPU timings are **normalised** by the calibration workload (:mod:`cmdbench.bench.calibration`) measured
  in the same run: each side's raw values are divided by the median of its run's ``calibration_time``
  (wall clock) or ``calibration_cpu_time`` (CPU-time figures, ``*cpu_time*``) before the ratio is taken,
  so a machine that is uniformly slower today does not read as a regression. The calibration is also the
  canary of a busy machine: when its wall-clock spread in either run exceeds
  :data:`MAX_CALIBRATION_SPREAD`, wall-clock figures of that pair are **not gated** (other jobs stretched
  calls unevenly; their CPU-time twins are still judged).
* **quality** (FVD, CLIPSIM, ...): beyond the tolerance in the metric's direction. FVD's tolerance is
  relative only (5%): an absolute floor (the former "+1") hid a 14x worse FVD at small magnitudes.
  CLIPSIM's is absolute (0.002 of a cosine, whose scale is fixed).

Missing (only in the reference) and new (only in the current rows) pairs fail unless allowed: a rename or
a changed identity must not let a slowdown through unseen.
"""

from __future__ import annotations

import fnmatch
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cmdbench.bench.results import decode_values, metric_kind
from cmdbench.env import device_key

# Display order: what fails first.
VERDICTS = ("regressed", "changed", "missing", "new", "not separated", "not gated", "incomparable", "improved",
            "unchanged")
ALWAYS_FAILING = ("regressed", "changed")
MIN_REPEATS = 3          # raw values each side needs before a timed figure is gated
CONFIDENCE = 0.99        # of the bootstrap interval of the ratio of medians
BOOTSTRAP_RESAMPLES = 4000
CALIBRATION_METRIC = "calibration_time"
CPU_CALIBRATION_METRIC = "calibration_cpu_time"
MAX_CALIBRATION_SPREAD = 0.10   # relative std of the calibration's wall-clock repeats: above it, "busy"
MIN_GATED_SECONDS = 0.002       # CPU timings whose medians are both below this are not gated


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


# First matching pattern wins (fnmatch on the metric name). Exact figures take no tolerance at all.
DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "sampling_time*": Tolerance(rel=0.10),
    "stage_time/*": Tolerance(rel=0.10),
    "time_per_step*": Tolerance(rel=0.10),
    "kernel_time/*": Tolerance(rel=0.10),
    "latency*": Tolerance(rel=0.10),
    "calibration_time*": Tolerance(rel=0.10),
    "*cpu_time*": Tolerance(rel=0.10),
    "throughput/*": Tolerance(rel=0.10),
    "peak_memory*": Tolerance(rel=0.05),
    "fvd*": Tolerance(rel=0.05),
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
    that takes precedence over :data:`DEFAULT_TOLERANCES`. Exact figures ignore tolerances."""
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


# --- The statistics of one timed pair ---------------------------------------------------------------------


def ratio_interval(reference: Sequence[float], current: Sequence[float], *, confidence: float = CONFIDENCE,
                   resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of ``median(current) / median(reference)`` (independent resamples of
    each side; Kalibera & Jones 2013). Deterministic for a given ``seed``."""
    from scipy import stats

    ref, cur = np.asarray(reference, dtype=float), np.asarray(current, dtype=float)
    if np.ptp(ref) == 0 and np.ptp(cur) == 0:  # no spread: the interval is the point
        r = float(np.median(cur) / np.median(ref))
        return r, r

    def ratio(c: np.ndarray, r: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.median(c, axis=axis) / np.median(r, axis=axis)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on small or tied samples; percentile is defined
        res = stats.bootstrap((cur, ref), ratio, n_resamples=resamples, confidence_level=confidence,
                              method="percentile", vectorized=True, rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


@dataclass(frozen=True)
class TimedJudgement:
    """Verdict of one timed/memory pair with its numbers (ratios are current / reference)."""

    verdict: str
    ratio: float
    interval: tuple[float, float] | None
    band: float


def judge_timed(reference: Sequence[float], current: Sequence[float], band: float, *,
                lower_is_better: bool = True, confidence: float = CONFIDENCE) -> TimedJudgement:
    """The two-part rule of the module docstring for raw repeats already on a common scale."""
    if len(reference) < MIN_REPEATS or len(current) < MIN_REPEATS:
        ratio = float(np.median(current) / np.median(reference)) if len(reference) and len(current) else math.nan
        return TimedJudgement("not gated", ratio, None, band)
    ratio = float(np.median(current) / np.median(reference))
    if abs(ratio - 1.0) <= band:
        return TimedJudgement("unchanged", ratio, None, band)
    low, high = ratio_interval(reference, current, confidence=confidence)
    if low > 1.0 + band:
        verdict = "regressed" if lower_is_better else "improved"
    elif high < 1.0 - band:
        verdict = "improved" if lower_is_better else "regressed"
    else:
        verdict = "not separated"
    return TimedJudgement(verdict, ratio, (low, high), band)


# --- Pairing and verdicts -----------------------------------------------------------------------------------


def with_device_key(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` plus a ``device_key`` column built from each row's device name and torch/CUDA versions."""
    keys = [device_key(d if pd.notna(d) else "", t if pd.notna(t) else None, c if pd.notna(c) else None)
            for d, t, c in zip(rows["device_name"], rows["torch_version"], rows["cuda_version"], strict=True)]
    return rows.assign(device_key=pd.Series(keys, index=rows.index, dtype="string"))


def _latest(rows: pd.DataFrame, keys: Sequence[str] = ("config_hash", "metric")) -> pd.DataFrame:
    rows = rows[rows["source"] == "measured"]
    return rows.sort_values("created_utc", kind="stable").drop_duplicates(list(keys), keep="last")


def calibrations(rows: pd.DataFrame) -> dict[tuple[str, str], tuple[float, float]]:
    """(run_id, calibration metric) -> (median, relative spread) of that run's calibration row."""
    out: dict[tuple[str, str], tuple[float, float]] = {}
    for r in rows[rows["metric"].isin((CALIBRATION_METRIC, CPU_CALIBRATION_METRIC))].itertuples(index=False):
        vals = decode_values(r.values)
        out[(str(r.run_id), str(r.metric))] = (float(np.median(vals)) if vals else float(r.value), _spread(vals))
    return out


def _raw(row: pd.Series | object) -> tuple[float, ...]:
    vals = decode_values(row.values)
    return vals if vals else (float(row.value),)


def _spread(vals: Sequence[float]) -> float:
    """Relative spread of raw repeats: sample standard deviation / median (NaN for fewer than 2)."""
    if len(vals) < 2:
        return math.nan
    return float(np.std(vals, ddof=1) / abs(np.median(vals))) if np.median(vals) else math.nan


COLUMNS_OUT = ("generator", "metric", "unit", "kind", "reference", "current", "change_pct", "band_pct",
               "interval_pct", "spread_ref_pct", "spread_cur_pct", "n_ref", "n_cur", "normalised", "verdict",
               "note", "config_hash", "device_key")


def compare(reference: pd.DataFrame, current: pd.DataFrame,
            tolerances: Mapping[str, Tolerance] = DEFAULT_TOLERANCES, *,
            confidence: float = CONFIDENCE) -> pd.DataFrame:
    """One verdict row per ``(config_hash, metric)`` on either side (newest row per side and device).

    Columns (:data:`COLUMNS_OUT`): reference/current are the medians (or values); change_pct the change in
    percent (of the calibrated ratio for timings); band_pct the allowed band (0 for exact figures);
    interval_pct the bootstrap interval of the change; spread_*_pct the relative sample standard deviation of
    each side's raw repeats; n_* their counts; normalised whether calibration was applied. Regressions first.
    """
    ref_all, cur_all = with_device_key(reference), with_device_key(current)
    ref_cal, cur_cal = calibrations(ref_all), calibrations(cur_all)
    ref = _latest(ref_all, ("config_hash", "metric", "device_key"))
    cur = _latest(cur_all, ("config_hash", "metric", "device_key"))
    by_pair: dict[tuple[str, str], list] = {}
    for r in ref.itertuples(index=False):
        by_pair.setdefault((r.config_hash, r.metric), []).append(r)
    out: list[dict] = []
    seen: set[tuple[str, str]] = set()
    for c in cur.itertuples(index=False):
        pair = (c.config_hash, c.metric)
        seen.add(pair)
        candidates = by_pair.get(pair, [])
        kind = metric_kind(str(c.metric))
        same = [r for r in candidates if r.device_key == c.device_key]
        if same or (kind == "exact" and candidates):
            r = (same or candidates)[-1]
            out.append(_judge(r, c, kind, tolerances, ref_cal, cur_cal, confidence))
        elif candidates:
            out.append(_row(candidates[-1], c, kind, "incomparable"))
        else:
            out.append(_row(None, c, kind, "new"))
    for pair, rows in by_pair.items():
        if pair not in seen:
            out.append(_row(rows[-1], None, metric_kind(pair[1]), "missing"))
    df = pd.DataFrame(out, columns=list(COLUMNS_OUT))
    rank = {v: i for i, v in enumerate(VERDICTS)}
    df = df.assign(_rank=df["verdict"].map(rank)).sort_values(["_rank", "generator", "metric", "config_hash"],
                                                                 kind="stable")
    return df.drop(columns="_rank").reset_index(drop=True)


def _row(r: object | None, c: object | None, kind: str, verdict: str) -> dict:
    any_row = c if c is not None else r
    return {
        "generator": any_row.generator, "metric": any_row.metric, "unit": any_row.unit, "kind": kind,
        "reference": float(r.value) if r is not None else math.nan,
        "current": float(c.value) if c is not None else math.nan,
        "change_pct": math.nan, "band_pct": math.nan, "interval_pct": "",
        "spread_ref_pct": 100 * _spread(decode_values(r.values)) if r is not None else math.nan,
        "spread_cur_pct": 100 * _spread(decode_values(c.values)) if c is not None else math.nan,
        "n_ref": len(decode_values(r.values)) if r is not None else 0,
        "n_cur": len(decode_values(c.values)) if c is not None else 0,
        "normalised": False, "verdict": verdict, "note": "", "config_hash": any_row.config_hash,
        "device_key": any_row.device_key if verdict != "incomparable" else f"{r.device_key} -> {c.device_key}",
    }


def _direction(r: object, c: object, kind: str) -> bool | None:
    """True when higher is better, False when lower is, None when the metric has no direction."""
    for h in (c.higher_is_better, r.higher_is_better):
        if pd.notna(h):
            return bool(h)
    return False if kind in ("timed", "memory") else None


Calibrations = Mapping[tuple[str, str], tuple[float, float]]


def _judge(r: object, c: object, kind: str, tolerances: Mapping[str, Tolerance], ref_cal: Calibrations,
           cur_cal: Calibrations, confidence: float) -> dict:
    row = _row(r, c, kind, "")
    ref_v, cur_v = float(r.value), float(c.value)
    if kind == "exact":
        row["band_pct"] = 0.0
        row["change_pct"] = _pct(ref_v, cur_v)
        row["verdict"] = "unchanged" if cur_v == ref_v else "changed"
        return row
    tol = tolerance_for(str(c.metric), tolerances)
    higher = _direction(r, c, kind)
    if kind in ("timed", "memory"):
        ref_raw, cur_raw = np.asarray(_raw(r)), np.asarray(_raw(c))
        metric = str(c.metric)
        cpu_time = "cpu_time" in metric
        cal_metric = CPU_CALIBRATION_METRIC if cpu_time else CALIBRATION_METRIC
        ref_key, cur_key = (str(r.run_id), cal_metric), (str(c.run_id), cal_metric)
        on_cpu = str(c.device_key).startswith("cpu")
        calibrate = (kind == "timed" and metric not in (CALIBRATION_METRIC, CPU_CALIBRATION_METRIC) and on_cpu
                     and ref_key in ref_cal and cur_key in cur_cal)
        if calibrate:
            ref_raw, cur_raw = ref_raw / ref_cal[ref_key][0], cur_raw / cur_cal[cur_key][0]
        med_ref = float(np.median(_raw(r)))
        band = max(tol.rel, tol.abs / abs(med_ref)) if med_ref else tol.rel
        j = judge_timed(ref_raw, cur_raw, band, lower_is_better=higher is not True, confidence=confidence)
        row.update(change_pct=100 * (j.ratio - 1), band_pct=100 * band, normalised=calibrate, verdict=j.verdict,
                   note="calibrated" if calibrate else "")
        if j.interval is not None:
            row["interval_pct"] = f"[{100 * (j.interval[0] - 1):+.1f}, {100 * (j.interval[1] - 1):+.1f}]"
        if j.verdict == "not gated":
            row["note"] = f"fewer than {MIN_REPEATS} raw repeats"
        seconds = str(c.unit or "").split(" ")[-1].startswith("s/")  # "s/video", "CPU s/step", ...
        tiny = max(float(np.median(_raw(r))), float(np.median(_raw(c)))) < MIN_GATED_SECONDS
        if metric in (CALIBRATION_METRIC, CPU_CALIBRATION_METRIC):
            row.update(verdict="not gated", note="calibration: the machine's drift (the yardstick)")
        elif kind == "timed" and on_cpu and seconds and tiny:
            row.update(verdict="not gated", note=f"under {1e3 * MIN_GATED_SECONDS:.0f} ms: below a shared CPU's "
                                                 "timing jitter")
        elif kind == "timed" and not cpu_time and on_cpu:
            busy = [s for s in (ref_cal.get((str(r.run_id), CALIBRATION_METRIC), (0, 0))[1],
                                cur_cal.get((str(c.run_id), CALIBRATION_METRIC), (0, 0))[1])
                    if s > MAX_CALIBRATION_SPREAD]
            if busy:
                row.update(verdict="not gated", note=f"machine busy: calibration spread {100 * max(busy):.0f}% > "
                                                     f"{100 * MAX_CALIBRATION_SPREAD:.0f}%")
        return row
    allowed = tol.allowed(ref_v)
    delta = cur_v - ref_v
    row["change_pct"] = _pct(ref_v, cur_v)
    row["band_pct"] = 100 * allowed / abs(ref_v) if ref_v else math.inf if allowed else 0.0
    if abs(delta) <= allowed:
        row["verdict"] = "unchanged"
    elif higher is None:
        row["verdict"] = "changed"
    else:
        row["verdict"] = "improved" if (delta > 0) == higher else "regressed"
    return row


def _pct(ref: float, cur: float) -> float:
    if ref == cur:
        return 0.0
    return 100 * (cur - ref) / abs(ref) if ref else math.copysign(math.inf, cur - ref)


def failing(verdicts: pd.DataFrame, *, allow_missing: bool = False, allow_new: bool = False) -> pd.DataFrame:
    """The verdict rows that fail the gate: regressed and changed always, missing and new unless allowed."""
    bad = set(ALWAYS_FAILING)
    if not allow_missing:
        bad.add("missing")
    if not allow_new:
        bad.add("new")
    return verdicts[verdicts["verdict"].isin(bad)]


def exit_code(verdicts: pd.DataFrame, *, allow_missing: bool = False, allow_new: bool = False) -> int:
    """1 when any row fails the gate (:func:`failing`); else 0."""
    return int(len(failing(verdicts, allow_missing=allow_missing, allow_new=allow_new)) > 0)


def summary(verdicts: pd.DataFrame) -> str:
    counts = verdicts["verdict"].value_counts()
    return ", ".join(f"{counts.get(v, 0)} {v}" for v in VERDICTS)


def render(verdicts: pd.DataFrame) -> pd.DataFrame:
    """The verdict table for people: value with unit, change beside the band and the spread."""
    def num(v: float) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"

    def pct(v: float, sign: bool = True) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        if math.isinf(v):
            return "inf"
        return f"{v:+.1f}%" if sign else f"{v:.1f}%"

    rows = []
    for v in verdicts.itertuples(index=False):
        band = "exact" if v.kind == "exact" else (f"±{v.band_pct:.1f}%" if not math.isnan(v.band_pct) else "-")
        spread = f"{pct(v.spread_ref_pct, False)} (n={v.n_ref}) / {pct(v.spread_cur_pct, False)} (n={v.n_cur})"
        rows.append({"generator": v.generator, "metric": v.metric, "unit": v.unit if pd.notna(v.unit) else "",
                     "reference": num(v.reference), "current": num(v.current),
                     "change": pct(v.change_pct), "band": band, "interval": v.interval_pct or "-",
                     "spread ref / cur": spread, "verdict": v.verdict, "note": v.note})
    return pd.DataFrame(rows, columns=["generator", "metric", "unit", "reference", "current", "change", "band",
                                       "interval", "spread ref / cur", "verdict", "note"])


# --- Runs: the previous run of the same config ------------------------------------------------------------


def run_prefix(run_id: str) -> str:
    """``"regress-20260101T000000-abc123"`` -> ``"regress"`` (the producer that named the run)."""
    m = re.match(r"^(.*?)-\d{8}T\d{6}-[0-9a-f]+$", str(run_id))
    return m.group(1) if m else str(run_id)


def runs_in_order(records: pd.DataFrame) -> list[str]:
    """Measured run ids, oldest first (by their first row's ``created_utc``, then id)."""
    measured = records[records["source"] == "measured"]
    first = measured.groupby("run_id")["created_utc"].min().fillna("")
    return sorted(first.index, key=lambda rid: (first[rid], rid))


def previous_run(records: pd.DataFrame, run_id: str | None = None) -> tuple[str, str]:
    """``(previous, latest)``: ``latest`` is ``run_id`` (default: the newest run); ``previous`` the newest
    earlier run from the same producer that measured at least one of the same ``(config_hash, metric)``
    pairs -- the same config, whatever seeds each drew. Raises ValueError naming what was found."""
    order = runs_in_order(records)
    if not order:
        raise ValueError("no measured runs in the records")
    latest = run_id or order[-1]
    if latest not in order:
        raise ValueError(f"run {latest!r} is not in the records; runs: {order}")
    pairs = {}
    for rid, group in records[records["source"] == "measured"].groupby("run_id"):
        pairs[rid] = set(zip(group["config_hash"], group["metric"], strict=True))
    for rid in reversed(order[: order.index(latest)]):
        if run_prefix(rid) == run_prefix(latest) and pairs[rid] & pairs[latest]:
            return rid, latest
    raise ValueError(f"no earlier run of the same config as {latest!r} in the records "
                     f"({len(order) - 1} other runs)")


# --- Reference rows per device ------------------------------------------------------------------------------


def device_slug(key: str) -> str:
    """A directory name for a device key (:func:`cmdbench.env.device_key`), e.g.
    ``"cpu: Intel Xeon Processor (family 6 model 167) (2 threads, mkl 2024.2, AVX512); torch 2.14.1+cu130"``
    -> ``"cpu-intel-xeon-processor-family-6-model-167-2-threads-mkl-2024-2-avx512-torch-2-14-1-cu130"``."""
    slug = re.sub(r"[^a-z0-9]+", "-", str(key).lower()).strip("-")
    return slug or "unknown-device"


def run_device_key(rows: pd.DataFrame) -> str:
    """The machine a run measured on: the device key of its rows that are not meta-device counts
    (``"meta"`` when it holds only those). Raises when one run names several machines."""
    keys = set(with_device_key(rows)["device_key"]) - {"meta"}
    if len(keys) > 1:
        raise ValueError(f"run(s) {sorted(set(rows['run_id']))} hold rows from several devices {sorted(keys)}; "
                         "accept them one device at a time")
    return keys.pop() if keys else "meta"


def accept_reference(records: pd.DataFrame, reference_root: str | Path,
                     run_ids: list[str] | None = None) -> list[Path]:
    """Promote whole runs into ``<reference_root>/<device-slug>/<producer>.csv`` (default: the newest run).

    A run's rows replace the reference rows with the same ``(config_hash, metric)``; other rows stay. The
    calibration row of every run still referenced is kept beside its rows (timings are normalised by it).
    The device directory is the run's machine (:func:`run_device_key`); the file is named after the run's
    producer (:func:`run_prefix`: ``regress``, ``bench``, ``efficiency``, ...), so each producer's gate
    compares against its own rows.
    """
    from cmdbench.bench.results import load_records, validate, write_table_csv

    rows = records[records["source"] == "measured"]
    order = runs_in_order(rows)
    if run_ids:
        unknown = sorted(set(run_ids) - set(order))
        if unknown:
            raise ValueError(f"run ids {unknown} are not in the records; known {order}")
    elif order:
        run_ids = [order[-1]]
    if rows.empty or not run_ids:
        raise ValueError("no measured rows to accept as reference")
    written = []
    for rid in run_ids:
        run = rows[rows["run_id"] == rid]
        run = run.sort_values("created_utc", kind="stable").drop_duplicates(["config_hash", "metric"], keep="last")
        path = Path(reference_root) / device_slug(run_device_key(run)) / f"{run_prefix(rid)}.csv"
        old = load_records(path) if path.exists() else run.iloc[0:0]
        replaced = old.set_index(["config_hash", "metric"]).index.isin(run.set_index(["config_hash", "metric"]).index)
        keep = old[~replaced]
        still = set(keep["run_id"])
        is_cal = old["metric"].isin((CALIBRATION_METRIC, CPU_CALIBRATION_METRIC)).to_numpy()
        calib = old[replaced & is_cal & old["run_id"].isin(still).to_numpy()]
        merged = validate(pd.concat([keep, calib, run], ignore_index=True))
        written.append(write_table_csv(merged.sort_values(["generator", "metric", "config_hash", "run_id"]), path))
    return written
