"""Sample-size curves: how a set judge's value moves with the number of generated samples.

FVD needs thousands of samples to settle (JEDi's authors report their judge settles with 16% of what FVD
needs: Luo et al., ICLR 2025); a value computed from too few samples is biased, not just noisy. For a judge
already evaluated on ``N`` generated clips (its per-clip features kept), the curve is

* **value at n**: the judge on the first ``n`` clips of one seeded permutation of the generated set, so the
  subsets are **nested** (n₁ < n₂ means subset₁ ⊂ subset₂) and the curve moves only by added samples;
* **band at n**: ``rounds`` resamples of ``n`` clips drawn **with replacement** from all ``N``
  (``resample="bootstrap"``, default) or without (``"subsample"``: the spread over which ``n`` clips one
  happens to have; zero at ``n = N``); the 2.5 / 97.5 % percentiles and the standard deviation;
* **n within 5%**: the smallest ``n`` of the grid from which the value stays within ``tolerance`` (5%) of
  the full-set value at every larger ``n`` of the grid (a curve that touches the band once and leaves
  again does not count).

The real side is the judge's full reference (``real="full"``, default: the question "how many generated
samples do I need against this reference?"), or a nested subset of the same size (``real="matched"``, both
sets shrink together; needs per-clip real features). Each value is the judge's own ``compute()`` on the
statistics of the chosen rows (strict counts and the singular-covariance guard lifted for the subsets, and
recorded as such), so the curve of FVD, KVD, JEDi, content-debiased FVD and FVMD is each judge's own maths.

Command line: ``cmdbench evaluate ... --curve`` (:func:`add_curve_arguments`, :func:`prepare_curve`,
:func:`run_curve`); records ``<metric>/curve`` (one row per n: ``n`` = generated samples, ``std`` = band std,
band in ``notes``) and ``<metric>/n_within_5pct``; a markdown table and a figure (:func:`render_curves`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REAL_MODES = ("full", "matched")
RESAMPLES = ("bootstrap", "subsample")


@dataclass
class SampleCurve:
    """One judge's curve (see the module doc); lists are aligned with ``sizes``."""

    metric: str
    protocol: str
    unit: str
    sizes: list[int]
    values: list[float]
    band_lo: list[float]
    band_hi: list[float]
    std: list[float]
    full_value: float
    full_n: int
    n_real: int
    tolerance: float
    n_within: int | None
    rounds: int
    seed: int
    resample: str
    real: str
    notes: dict[str, Any] = field(default_factory=dict)


def default_sizes(n: int, points: int = 8, smallest: int = 2) -> list[int]:
    """``n, n/2, n/4, ...`` (``points`` of them, at least ``smallest``), ascending and distinct."""
    if n < smallest:
        raise ValueError(f"a curve needs at least {smallest} samples; the judge saw {n}")
    return sorted({max(smallest, n >> k) for k in range(points)})


def within_tolerance(sizes: Sequence[int], values: Sequence[float], full_value: float, tolerance: float) -> int | None:
    """The smallest size from which every value (to the largest size) is within ``tolerance`` of ``full_value``
    (relative: ``|v − v_full| <= tolerance·|v_full|``); ``None`` when even the largest is not."""
    found = None
    for n, v in sorted(zip(sizes, values, strict=True), reverse=True):
        if abs(v - full_value) <= tolerance * abs(full_value):
            found = n
        else:
            break
    return found


def nested_subsets(order: np.ndarray, sizes: Sequence[int]) -> list[np.ndarray]:
    """The first ``n`` indices of ``order`` for every ``n`` in ``sizes``: each subset contains the smaller ones.
    The whole set is given in its original order (``0 .. N-1``), so an order-sensitive judge (KVD draws its
    subsets by position) gives exactly the value it reported."""
    return [np.arange(len(order)) if n == len(order) else np.asarray(order[:n]) for n in sizes]


# --- a judge's value on chosen rows ----------------------------------------------------------------------


class JudgeRows:
    """A set judge (FVD family) with its kept per-clip features, evaluated on any rows of them.

    ``value(fake_idx, real_idx)`` = the judge's ``compute()`` with the generated statistics built from
    ``fake rows[fake_idx]`` and the real side from ``real rows[real_idx]`` (``None``: the full reference).
    """

    def __init__(self, name: str, metric: Any) -> None:
        from cmdbench.metrics.fvd import FVD

        if not isinstance(metric, FVD):
            raise ValueError(f"{name}: sample-size curves need a set judge with per-clip features (FVD, KVD, JEDi, "
                             f"fvd-videomae, FVMD); {type(metric).__name__} has none")
        fake = metric.fake
        if fake.bank is None or len(fake.bank) != fake.n:
            raise ValueError(f"{name}: the generated per-clip features were not kept; call prepare_curve(metrics) "
                             "before scoring (cmdbench evaluate --curve does)")
        self.name, self.metric = name, metric
        self.real_stats = metric._real()
        self.fake_rows = fake.bank.array()
        self.real_rows = self.real_stats.bank.array() if self.real_stats.bank is not None and \
            len(self.real_stats.bank) == self.real_stats.n else None

    @contextlib.contextmanager
    def _lenient(self) -> Iterator[None]:
        m = self.metric
        saved = (m.reference, m.real_accum, m.fake, m.strict, m.allow_singular)
        m.strict, m.allow_singular = False, True
        try:
            yield
        finally:
            m.reference, m.real_accum, m.fake, m.strict, m.allow_singular = saved

    def value(self, fake_idx: np.ndarray, real_idx: np.ndarray | None = None) -> float:
        m = self.metric
        with self._lenient():
            fake = m.new_stats("fake")
            fake.update(self.fake_rows[fake_idx])
            if real_idx is None:
                real = self.real_stats
            else:
                if self.real_rows is None:
                    raise ValueError(f"{self.name}: real='matched' needs the per-clip real features; the reference "
                                     "keeps only statistics (use real='full', or a reference built with features)")
                real = m.new_stats("real")
                real.update(self.real_rows[real_idx])
            m.reference, m.real_accum, m.fake = None, real, fake
            return float(m.compute().value)


def sample_curve(judge: JudgeRows, *, sizes: Sequence[int] | None = None, rounds: int = 20, seed: int = 0,
                 tolerance: float = 0.05, resample: str = "bootstrap", real: str = "full") -> SampleCurve:
    """The curve of one judge (module doc). ``sizes``: generated-sample counts (default :func:`default_sizes`)."""
    if resample not in RESAMPLES:
        raise ValueError(f"resample={resample!r}; allowed {RESAMPLES}")
    if real not in REAL_MODES:
        raise ValueError(f"real={real!r}; allowed {REAL_MODES}")
    if rounds < 2:
        raise ValueError(f"rounds={rounds}; a band needs at least 2 resamples")
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance={tolerance}; allowed a fraction in (0, 1), e.g. 0.05")
    n_fake = len(judge.fake_rows)
    n_real = judge.real_stats.n if real == "full" else len(judge.real_rows) if judge.real_rows is not None else 0
    sizes = sorted(set(default_sizes(n_fake) if sizes is None else sizes))
    bad = [n for n in sizes if not 2 <= n <= n_fake]
    if bad:
        raise ValueError(f"curve sizes {bad} outside 2..{n_fake} (the generated samples the judge saw)")
    if real == "matched" and judge.real_rows is None:
        judge.value(np.arange(2), np.arange(2))  # raises the clear error
    rng = np.random.default_rng(seed)
    perm_f = rng.permutation(n_fake)
    perm_r = rng.permutation(n_real) if real == "matched" else None
    values, lo, hi, std = [], [], [], []
    for n, fake_idx in zip(sizes, nested_subsets(perm_f, sizes), strict=True):
        r_n = min(n, n_real)
        real_idx = None if perm_r is None else nested_subsets(perm_r, [r_n])[0]
        values.append(judge.value(fake_idx, real_idx))
        draws = []
        for _ in range(rounds):
            fi = rng.choice(n_fake, n, replace=resample == "bootstrap")
            ri = None if perm_r is None else rng.choice(n_real, r_n, replace=resample == "bootstrap")
            draws.append(judge.value(fi, ri))
        arr = np.asarray(draws)
        lo.append(float(np.percentile(arr, 2.5)))
        hi.append(float(np.percentile(arr, 97.5)))
        std.append(float(arr.std(ddof=1)))
    full = values[-1] if sizes[-1] == n_fake else judge.value(np.arange(n_fake),
                                                               None if perm_r is None else np.arange(n_real))
    m = judge.metric
    return SampleCurve(
        metric=judge.name, protocol=m.protocol.name, unit=getattr(m, "unit", ""), sizes=list(sizes), values=values,
        band_lo=lo, band_hi=hi, std=std, full_value=full, full_n=n_fake, n_real=n_real, tolerance=tolerance,
        n_within=within_tolerance(sizes, values, full, tolerance) if sizes[-1] == n_fake else None, rounds=rounds,
        seed=seed, resample=resample, real=real,
        notes={"extractor": getattr(m.extractor, "name", None), "strict_and_singular_guards": "lifted for subsets"},
    )


# --- records, table, figure ---------------------------------------------------------------------------------


def tolerance_name(tolerance: float) -> str:
    return f"n_within_{tolerance * 100:g}pct"


def curve_rows(curve: SampleCurve) -> list[dict[str, Any]]:
    """Result-schema fields (without run bookkeeping) of a curve: one ``<metric>/curve`` row per size and, when
    some size qualifies, the ``<metric>/n_within_<tol>pct`` row (``n_within`` is also in every curve row's notes,
    ``null`` when none qualifies)."""
    common = {"seed": curve.seed, "rounds": curve.rounds, "resample": curve.resample, "real": curve.real,
              "n_real": curve.n_real, "full_value": curve.full_value, "full_n": curve.full_n,
              "tolerance": curve.tolerance, "n_within": curve.n_within, **curve.notes}
    rows = [{"metric": f"{curve.metric}/curve", "value": v, "std": s, "n": n, "unit": curve.unit,
             "higher_is_better": False, "protocol": curve.protocol,
             "notes": {**common, "band_lo": lo, "band_hi": hi, "band": "2.5-97.5 percentile"}}
            for n, v, s, lo, hi in zip(curve.sizes, curve.values, curve.std, curve.band_lo, curve.band_hi, strict=True)]
    if curve.n_within is not None:
        rows.append({"metric": f"{curve.metric}/{tolerance_name(curve.tolerance)}", "value": float(curve.n_within),
                     "n": curve.full_n, "unit": "samples", "higher_is_better": False, "protocol": curve.protocol,
                     "notes": {**common, "sizes": curve.sizes}})
    return rows


def render_curves(records: Any, table: str | Path, figure: str | Path) -> list[Path]:
    """``<table>.md`` and ``<figure>.png/.pdf`` of every ``*/curve`` metric of the newest run in ``records``."""
    import pandas as pd

    from cmdbench.bench.plots import plt, save_figure
    from cmdbench.bench.tables import format_number, to_markdown, write_text_atomic

    curves = records[records["metric"].str.endswith("/curve")]
    if curves.empty:
        raise ValueError("no sample-size curve rows (<metric>/curve) in the records")
    newest = curves.sort_values("created_utc")["run_id"].iloc[-1]
    curves = curves[curves["run_id"] == newest].sort_values(["metric", "n"])
    names = list(dict.fromkeys(curves["metric"]))
    lines = [f"# Sample-size curves (run {newest})", ""]
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        rows = curves[curves["metric"] == name]
        notes = [json.loads(t) for t in rows["notes"]]
        judge = name.removesuffix("/curve")
        full, tol, within = notes[0]["full_value"], notes[0]["tolerance"], notes[0]["n_within"]
        random = "random" in str(notes[0].get("extractor") or "")
        label = f"{judge} [{rows['protocol'].iloc[0]}]" + (" [random weights]" if random else "")
        lines += [f"## {label}", "",
                  f"Full set: {format_number(full)} from {notes[0]['full_n']} generated vs {notes[0]['n_real']} real "
                  f"samples (real side: {notes[0]['real']}); band: {notes[0]['rounds']} {notes[0]['resample']} "
                  f"resamples, 2.5-97.5%; smallest n within {tol * 100:g}% from there on: "
                  f"**{within if within is not None else 'none (not even the largest subset)'}**.", ""]
        table_rows = [{"n": int(n), "value": format_number(v), "band": f"{format_number(nt['band_lo'])} .. "
                       f"{format_number(nt['band_hi'])}", "within": "yes" if abs(v - full) <= tol * abs(full) else "no"}
                      for n, v, nt in zip(rows["n"], rows["value"], notes, strict=True)]
        lines += [to_markdown(pd.DataFrame(table_rows)), ""]
        n = rows["n"].astype(float).to_numpy()
        ax.fill_between(n, [t["band_lo"] for t in notes], [t["band_hi"] for t in notes], alpha=0.25, label="band")
        ax.plot(n, rows["value"].to_numpy(dtype=float), "o-", label="nested subsets")
        ax.axhspan(full - tol * abs(full), full + tol * abs(full), color="0.85", zorder=0, label=f"±{tol * 100:g}%")
        if within is not None:
            ax.axvline(within, color="k", ls="--", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("generated samples n")
        unit = rows["unit"].iloc[0]
        ax.set_ylabel(judge + (f" [{unit}]" if isinstance(unit, str) and unit else ""))
        ax.set_title(label, fontsize=8)
        ax.legend(fontsize=7)
    if any("random" in str(json.loads(t).get("extractor") or "") for t in curves["notes"]):
        lines.insert(2, "**random-weight stand-in extractors: the curves show the harness, not model quality.**\n")
        fig.suptitle("random-weight stand-in extractors", fontsize=8, color="tab:red")
    fig.tight_layout()
    md = write_text_atomic(Path(table).with_suffix(".md"), "\n".join(lines) + "\n")
    return [md, *save_figure(fig, figure)]


# --- the `cmdbench evaluate --curve` hook ----------------------------------------------------------------


def add_curve_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--curve`` options (for ``cmdbench evaluate``)."""
    g = parser.add_argument_group("sample-size curves (--curve)")
    g.add_argument("--curve", action="store_true",
                   help="also record each set judge's value against the number of generated samples (nested "
                        "subsets, resampled bands) and the smallest n within --curve-tolerance of the full value")
    g.add_argument("--curve-sizes", default=None,
                   help="comma-separated sample counts (default: N, N/2, ..., N/128 of the N generated clips)")
    g.add_argument("--curve-rounds", type=int, default=20, help="resamples per size for the band (default 20)")
    g.add_argument("--curve-seed", type=int, default=0, help="seed of the subset order and the resamples")
    g.add_argument("--curve-tolerance", type=float, default=0.05, help="relative tolerance (default 0.05 = 5%%)")
    g.add_argument("--curve-resample", choices=RESAMPLES, default="bootstrap",
                   help="band resamples with (bootstrap) or without (subsample) replacement")
    g.add_argument("--curve-real", choices=REAL_MODES, default="full",
                   help="real side: the full reference (full) or a nested subset of the same size (matched)")
    g.add_argument("--curve-out", default=None,
                   help="folder for the curve table and figure (default: <records>/curves)")


def prepare_curve(metrics: dict[str, Any]) -> None:
    """Make every FVD-family judge keep its generated per-clip features (call before scoring)."""
    from cmdbench.metrics.frechet import FeatureBank
    from cmdbench.metrics.fvd import FVD

    for metric in metrics.values():
        if isinstance(metric, FVD) and metric.fake.bank is None:
            if metric.fake.n:
                raise ValueError(f"{metric.name}: prepare_curve must run before any generated clip is scored")
            metric.fake.bank = FeatureBank(metric.fake.dim)


def parse_sizes(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--curve-sizes {text!r}: allowed comma-separated integers, e.g. 64,128,256") from None


def run_curve(args: argparse.Namespace, metrics: dict[str, Any], *, run_id: str, generator: str,
              dataset: str = "") -> list[Path]:
    """After ``evaluate`` scored ``metrics``: one curve per set judge, appended to the run's records
    (``args.records``, ``run_id``) and rendered to ``args.curve_out``. Judges without per-clip features are
    named and skipped. Returns the table and figure paths (none when no judge had a curve)."""
    from cmdbench.bench.motion_strata import write_records
    from cmdbench.bench.results import load_records

    rows, skipped = [], {}
    for name, metric in metrics.items():
        try:
            curve = sample_curve(JudgeRows(name, metric), sizes=parse_sizes(args.curve_sizes),
                                 rounds=args.curve_rounds, seed=args.curve_seed, tolerance=args.curve_tolerance,
                                 resample=args.curve_resample, real=args.curve_real)
        except ValueError as err:
            skipped[name] = str(err)
            continue
        rows += curve_rows(curve)
        print(f"{name}: full {curve.full_value:.6g} at n={curve.full_n}; within {curve.tolerance * 100:g}% from "
              f"n={curve.n_within}")
    for name, why in skipped.items():
        print(f"curve skipped for {name}: {why}")
    if not rows:
        return []
    csv = write_records(rows, args.records, run_id, generator=generator, dataset=dataset,
                        device=getattr(args, "device", "cpu"),
                        context={"curve": {k: v for k, v in vars(args).items() if k.startswith("curve")}})
    out = Path(args.curve_out) if args.curve_out else Path(args.records) / "curves"
    paths = render_curves(load_records(csv), out / f"{run_id}_curves", out / f"{run_id}_curves")
    print(f"curves: {', '.join(str(p) for p in paths)}")
    return paths


def curve_dict(curve: SampleCurve) -> dict[str, Any]:
    """JSON-able form (for run metadata)."""
    return asdict(curve)
