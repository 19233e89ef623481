"""Regression verdicts: exact figures exactly, timings on raw repeats (band + separated bootstrap interval,
calibrated), quality metrics by tolerance, device keys, missing/new, accepting runs, the previous run."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import numpy as np
import pytest

from cmdbench.bench.regression import (
    Tolerance,
    accept_reference,
    compare,
    device_slug,
    exit_code,
    judge_timed,
    parse_tolerances,
    previous_run,
    ratio_interval,
    render,
    run_prefix,
    summary,
    tolerance_for,
)
from cmdbench.bench.results import config_hash, load_records

_spec = importlib.util.spec_from_file_location("records_factory", Path(__file__).with_name("records_factory.py"))
factory = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(factory)
record, frame = factory.record, factory.frame

CPU_A = "cpu: Xeon A (2 threads, mkl 2024.2, AVX512)"
CPU_B = "cpu: Epyc B (2 threads, openblas, AVX2)"


def timed(values, *, metric="sampling_time", run_id="r", device=CPU_A, config_hash="h-a", unit="s/video",
          **kw) -> dict:
    values = [float(v) for v in values]
    return record(metric=metric, value=float(np.median(values)), values=values, n=len(values), run_id=run_id,
                  device_name=device, torch_version="2.14.1", config_hash=config_hash, unit=unit, **kw)


def calibration(values, *, run_id="r", device=CPU_A) -> dict:
    return timed(values, metric="calibration_time", run_id=run_id, device=device, config_hash="h-cal",
                 generator="calibration")


def verdict_of(ref_rows, cur_rows, metric="sampling_time", config_hash="h-a", **kw) -> str:
    df = compare(frame(*ref_rows), frame(*cur_rows), **kw).set_index(["config_hash", "metric"])
    return df.loc[(config_hash, metric), "verdict"]


def noisy(rng, median, cv, n=9):
    return median * (1 + cv * rng.standard_normal(n))


# --- Timed figures ------------------------------------------------------------------------------------------


def test_identical_reruns_are_unchanged():
    """50 figures, each rerun from the same distribution (3% spread, 9 repeats): no alarm at all."""
    rng = np.random.default_rng(1)
    ref = [timed(noisy(rng, 1 + i / 10, 0.03), config_hash=f"h{i}") for i in range(50)]
    cur = [timed(noisy(rng, 1 + i / 10, 0.03), config_hash=f"h{i}", run_id="s") for i in range(50)]
    df = compare(frame(*ref), frame(*cur))
    assert set(df["verdict"]) <= {"unchanged", "not separated"}
    assert exit_code(df) == 0


def test_twenty_percent_slower_with_a_tight_spread_is_regressed():
    rng = np.random.default_rng(2)
    ref, cur = timed(noisy(rng, 1.0, 0.02)), timed(noisy(rng, 1.2, 0.02), run_id="s")
    df = compare(frame(ref), frame(cur))
    assert df.loc[0, "verdict"] == "regressed" and exit_code(df) == 1
    assert df.loc[0, "change_pct"] == pytest.approx(20, abs=3) and df.loc[0, "band_pct"] == pytest.approx(10)
    assert verdict_of([timed(noisy(rng, 1.2, 0.02))], [timed(noisy(rng, 1.0, 0.02), run_id="s")]) == "improved"


def test_twenty_percent_slower_with_a_huge_spread_is_not_separated():
    ref = timed([0.5, 0.7, 1.0, 1.4, 2.0, 0.6, 1.6, 0.8, 1.2])
    cur = timed([0.6, 0.85, 1.2, 1.7, 2.4, 0.7, 1.9, 0.95, 1.45], run_id="s")  # every value 20% up, cv ~45%
    df = compare(frame(ref), frame(cur))
    assert df.loc[0, "change_pct"] == pytest.approx(20, abs=1)
    assert df.loc[0, "verdict"] == "not separated" and exit_code(df) == 0


@pytest.mark.parametrize("n", [1, 2])
def test_fewer_than_three_repeats_is_shown_but_not_gated(n):
    ref, cur = timed([1.0] * n), timed([3.0] * n, run_id="s")
    df = compare(frame(ref), frame(cur))
    assert df.loc[0, "verdict"] == "not gated" and df.loc[0, "change_pct"] == pytest.approx(200)
    assert exit_code(df) == 0
    # A single value without raw repeats (rows from before the values column) is not gated either.
    old = record(value=1.0, n=5, std=0.01)
    assert verdict_of([old], [record(value=3.0, n=5, std=0.01, run_id="s")]) == "not gated"


def test_cpu_timings_are_normalised_by_the_runs_calibration():
    rng = np.random.default_rng(3)
    ref = [timed(noisy(rng, 1.0, 0.02)), calibration(noisy(rng, 0.01, 0.02))]
    slower_machine = [timed(noisy(rng, 1.5, 0.02), run_id="s"), calibration(noisy(rng, 0.015, 0.02), run_id="s")]
    df = compare(frame(*ref), frame(*slower_machine)).set_index("metric")
    assert df.loc["sampling_time", "verdict"] == "unchanged" and bool(df.loc["sampling_time", "normalised"])
    assert df.loc["calibration_time", "verdict"] == "not gated"  # the yardstick is shown, never fails
    # The same code change on the same machine: calibration unchanged, the figure 20% slower -> regressed.
    slower_code = [timed(noisy(rng, 1.2, 0.02), run_id="t"), calibration(noisy(rng, 0.01, 0.02), run_id="t")]
    assert verdict_of(ref, slower_code) == "regressed"
    # Without calibration rows the machine's slowdown reads as a regression (what calibration prevents).
    assert verdict_of(ref[:1], slower_machine[:1]) == "regressed"


def test_cpu_time_figures_use_the_cpu_calibration_and_a_busy_machine_stops_wall_clock_gating():
    rng = np.random.default_rng(6)

    def run(run_id, wall_cal_cv, cpu_factor, wall_factor):
        return [timed(noisy(rng, 1.0 * wall_factor, 0.02), run_id=run_id),
                timed(noisy(rng, 0.5 * cpu_factor, 0.02), metric="sampling_cpu_time", config_hash="h-c",
                      run_id=run_id, unit="CPU s/video"),
                calibration(noisy(rng, 0.01, wall_cal_cv), run_id=run_id),
                dict(calibration(noisy(rng, 0.004, 0.02), run_id=run_id), metric="calibration_cpu_time",
                     config_hash="h-ccal")]

    quiet, busy = run("r", 0.02, 1.0, 1.0), run("s", 0.40, 1.3, 1.3)
    df = compare(frame(*quiet), frame(*busy)).set_index("metric")
    assert df.loc["sampling_cpu_time", "verdict"] == "regressed"          # CPU time: still judged
    assert df.loc["sampling_time", "verdict"] == "not gated"              # wall clock: machine busy
    assert "machine busy" in df.loc["sampling_time", "note"]
    # The CPU-time figure is divided by the CPU calibration, not the wall one: a CPU calibration 30% slower
    # (a slower machine) cancels a 30% slower CPU time.
    slower = run("t", 0.02, 1.3, 1.0)
    slower[3] = dict(calibration(noisy(rng, 0.0052, 0.02), run_id="t"), metric="calibration_cpu_time",
                     config_hash="h-ccal")
    df = compare(frame(*quiet), frame(*slower)).set_index("metric")
    assert df.loc["sampling_cpu_time", "verdict"] == "unchanged"
    assert df.loc["sampling_time", "verdict"] == "unchanged"


def test_cpu_timings_under_two_milliseconds_are_not_gated():
    ref, cur = timed([1.0e-4, 1.01e-4, 0.99e-4]), timed([1.5e-4, 1.51e-4, 1.49e-4], run_id="s")
    df = compare(frame(ref), frame(cur))
    assert df.loc[0, "verdict"] == "not gated" and "2 ms" in df.loc[0, "note"]
    jumped = timed([0.05, 0.051, 0.049], run_id="s")  # a sub-millisecond stage that became 50 ms is judged
    assert verdict_of([ref], [jumped]) == "regressed"
    on_gpu = [dict(r, device_name="NVIDIA H100 80GB HBM3", cuda_version="12.8") for r in (ref, cur)]
    assert verdict_of([on_gpu[0]], [on_gpu[1]]) == "regressed"  # CUDA events time sub-millisecond calls


def test_another_device_is_incomparable_never_regressed():
    rng = np.random.default_rng(4)
    ref, cur = timed(noisy(rng, 1.0, 0.01)), timed(noisy(rng, 5.0, 0.01), run_id="s", device=CPU_B)
    df = compare(frame(ref), frame(cur))
    assert df.loc[0, "verdict"] == "incomparable" and exit_code(df) == 0
    assert "Xeon A" in df.loc[0, "device_key"] and "Epyc B" in df.loc[0, "device_key"]
    other_torch = dict(cur, device_name=CPU_A, torch_version="2.15.0")  # same CPU, another torch build
    assert verdict_of([ref], [other_torch]) == "incomparable"


def test_ratio_interval_matches_the_exact_bootstrap_distribution():
    """n = 3 + 3: all 27 x 27 equally likely resamples enumerated; percentiles of the ratio of medians."""
    ref, cur = [1.0, 1.1, 1.3], [1.5, 1.6, 2.0]
    med = lambda xs: [float(np.median(s)) for s in itertools.product(xs, repeat=3)]  # noqa: E731
    ratios = np.sort([c / r for c in med(cur) for r in med(ref)])
    low, high = ratio_interval(ref, cur, confidence=0.9, resamples=200_000)
    assert low == pytest.approx(np.quantile(ratios, 0.05), rel=0.02)
    assert high == pytest.approx(np.quantile(ratios, 0.95), rel=0.02)
    assert ratio_interval(ref, cur) == ratio_interval(ref, cur)  # fixed seed: verdicts repeat


def test_judge_timed_needs_both_the_band_and_separation():
    assert judge_timed([1.0, 1.01, 0.99], [1.08, 1.09, 1.07], 0.10).verdict == "unchanged"  # separated, in band
    j = judge_timed([1.0, 1.01, 0.99, 1.0, 1.02], [1.3, 1.31, 1.29, 1.3, 1.32], 0.10)
    assert j.verdict == "regressed" and j.interval[0] > 1.1


# --- Exact and quality figures ------------------------------------------------------------------------------


def test_exact_counts_off_by_one_are_changed_and_fail():
    ref = record(metric="params", value=1_312_730_244.0, unit="count", device_name="meta")
    for cur_value, verdict in ((1_312_730_245.0, "changed"), (1_312_730_243.0, "changed"), (1_312_730_244.0,
                                                                                             "unchanged")):
        cur = dict(ref, value=cur_value, run_id="s")
        df = compare(frame(ref), frame(cur))
        assert df.loc[0, "verdict"] == verdict and exit_code(df) == int(verdict == "changed")
    predicted = record(metric="predicted_peak_memory", value=5.56, unit="GiB", device_name="meta")
    df = compare(frame(predicted), frame(dict(predicted, value=5.56 * 1.05, run_id="s")))
    assert df.loc[0, "verdict"] == "changed" and df.loc[0, "change_pct"] == pytest.approx(5.0)
    # Counts do not depend on the machine that ran the counter: paired across device keys.
    on_cpu = dict(ref, device_name=CPU_B, value=1_312_730_245.0, run_id="s")
    assert verdict_of([ref], [on_cpu], metric="params") == "changed"


def test_fvd_tolerance_is_relative_so_small_values_are_judged():
    fvd = dict(metric="fvd2048_16f", unit="FVD", higher_is_better=False)
    assert verdict_of([record(value=0.05, **fvd)], [record(value=0.70, run_id="s", **fvd)],
                      metric="fvd2048_16f") == "regressed"          # 14x worse: the old 5% + 1 hid it
    assert verdict_of([record(value=300.0, **fvd)], [record(value=310.0, run_id="s", **fvd)],
                      metric="fvd2048_16f") == "unchanged"          # 3.3%, within 5%
    assert verdict_of([record(value=300.0, **fvd)], [record(value=270.0, run_id="s", **fvd)],
                      metric="fvd2048_16f") == "improved"


@pytest.mark.parametrize(
    ("metric", "hib", "ref", "cur", "expected"),
    [
        ("clipsim", True, 0.30, 0.31, "improved"),          # higher is better, beyond abs 0.002
        ("clipsim", True, 0.30, 0.29, "regressed"),
        ("clipsim", True, 0.300, 0.301, "unchanged"),
        ("test-score", None, 100.0, 106.0, "changed"),      # no direction: a move beyond 5% is a change
    ],
)
def test_quality_verdicts(metric, hib, ref, cur, expected):
    assert verdict_of([record(metric=metric, value=ref, higher_is_better=hib)],
                      [record(metric=metric, value=cur, higher_is_better=hib, run_id="s")], metric=metric) == expected


# --- Pairing, missing/new, output -----------------------------------------------------------------------------


def test_missing_and_new_fail_unless_allowed():
    ref = [timed([1.0] * 3, config_hash="h1"), timed([1.0] * 3, config_hash="h2")]
    cur = [timed([1.0] * 3, config_hash="h2", run_id="s"), timed([5.0] * 3, config_hash="h3", run_id="s")]
    df = compare(frame(*ref), frame(*cur)).set_index("config_hash")
    assert (df.loc["h1", "verdict"], df.loc["h2", "verdict"], df.loc["h3", "verdict"]) == ("missing", "unchanged", "new")
    df = compare(frame(*ref), frame(*cur))
    assert exit_code(df) == 1
    assert exit_code(df, allow_missing=True) == 1 and exit_code(df, allow_new=True) == 1
    assert exit_code(df, allow_missing=True, allow_new=True) == 0
    assert summary(df).startswith("0 regressed, 0 changed, 1 missing, 1 new")


def test_a_slowdown_is_found_when_only_the_seed_range_changed():
    """The issue's case: a 6x slowdown measured on other seeds must pair, not become missing + new."""
    env = {"device": "cpu", "tf32_matmul": False, "tf32_cudnn": True, "float32_matmul_precision": "highest"}

    def bench_row(seeds, values, run_id):
        row = timed(values, run_id=run_id, seeds=seeds)
        return dict(row, config_hash=config_hash(row, env))

    df = compare(frame(bench_row("0-7", [1.0, 1.01, 0.99, 1.0], "r")),
                 frame(bench_row("8-15", [6.0, 6.1, 5.9, 6.0], "s")))
    assert list(df["verdict"]) == ["regressed"]


def test_newest_row_per_side_and_failures_first():
    ref = [timed([1.0] * 3), timed([1.0] * 3, metric="stage_time/denoiser", config_hash="h-d")]
    cur = [timed([5.0] * 3, created_utc="2026-01-01T00:00:00Z", run_id="s"),
           timed([1.0] * 3, created_utc="2026-01-02T00:00:00Z", run_id="t"),
           timed([2.0] * 3, metric="stage_time/denoiser", config_hash="h-d", run_id="t")]
    df = compare(frame(*ref), frame(*cur))
    assert list(df["verdict"]) == ["regressed", "unchanged"]
    assert df.loc[0, "metric"] == "stage_time/denoiser"


def test_paper_rows_are_not_compared():
    assert verdict_of([record(source="paper", value=1.0)], [timed([9.0] * 3, run_id="s")]) == "new"


def test_verdict_table_shows_change_band_interval_and_spread():
    rng = np.random.default_rng(5)
    df = render(compare(frame(timed(noisy(rng, 1.0, 0.02))), frame(timed(noisy(rng, 1.3, 0.02), run_id="s"))))
    row = df.iloc[0]
    assert row["change"].startswith("+") and row["change"].endswith("%")
    assert row["band"] == "±10.0%" and row["interval"].startswith("[+") and "(n=9)" in row["spread ref / cur"]
    assert row["unit"] == "s/video" and row["verdict"] == "regressed"


def test_tolerance_overrides():
    tols = parse_tolerances(["sampling_time=0.5"])
    assert tolerance_for("sampling_time", tols) == Tolerance(rel=0.5)
    assert tolerance_for("peak_memory", tols) == Tolerance(rel=0.05)
    assert tolerance_for("anything", parse_tolerances(["0.2"])) == Tolerance(rel=0.2)
    assert tolerance_for("clipsim", parse_tolerances(["clipsim=abs:0.01"])) == Tolerance(abs=0.01)
    assert tolerance_for("fvd2048_16f") == Tolerance(rel=0.05)
    assert verdict_of([timed([1.0, 1.01, 0.99])], [timed([1.4, 1.41, 1.39], run_id="s")], tolerances=tols) == "unchanged"
    with pytest.raises(ValueError, match="not a number"):
        parse_tolerances(["sampling_time=fast"])
    with pytest.raises(ValueError, match="kind"):
        parse_tolerances(["x=pct:3"])


# --- Runs and the reference -----------------------------------------------------------------------------------


def test_previous_run_of_the_same_config():
    rows = frame(
        timed([1.0] * 3, run_id="regress-20260101T000000-aaaaaa", created_utc="2026-01-01T00:00:00Z"),
        timed([1.0] * 3, run_id="bench-20260102T000000-bbbbbb", created_utc="2026-01-02T00:00:00Z"),
        timed([1.0] * 3, run_id="regress-20260103T000000-cccccc", created_utc="2026-01-03T00:00:00Z",
              config_hash="h-other"),
        timed([1.0] * 3, run_id="regress-20260104T000000-dddddd", created_utc="2026-01-04T00:00:00Z"),
    )
    assert previous_run(rows) == ("regress-20260101T000000-aaaaaa", "regress-20260104T000000-dddddd")
    assert run_prefix("bench-20260102T000000-bbbbbb") == "bench" and run_prefix("my-run") == "my-run"
    with pytest.raises(ValueError, match="no earlier run of the same config"):
        previous_run(rows, "regress-20260103T000000-cccccc")


def test_device_slug():
    assert device_slug("cpu: Xeon A (2 threads, mkl 2024.2, AVX512); torch 2.14.1") == \
        "cpu-xeon-a-2-threads-mkl-2024-2-avx512-torch-2-14-1"
    assert device_slug("meta") == "meta"


def test_accept_promotes_whole_runs_per_device_and_producer(tmp_path):
    r1, r2 = "regress-20260101T000000-aaaaaa", "regress-20260102T000000-bbbbbb"
    records = frame(
        timed([1.0] * 3, run_id=r1, created_utc="2026-01-01T00:00:00Z"),
        timed([2.0] * 3, run_id=r1, metric="stage_time/denoiser", config_hash="h-d", created_utc="2026-01-01T00:00:00Z"),
        calibration([0.01] * 3, run_id=r1),
        record(metric="params", value=7.0, device_name="meta", run_id=r1, config_hash="h-p"),
        timed([1.1] * 3, run_id=r2, created_utc="2026-01-02T00:00:00Z"),
        calibration([0.02] * 3, run_id=r2),
    )
    (path,) = accept_reference(records, tmp_path, [r1])
    assert path.parent.name == device_slug(f"{CPU_A}; torch 2.14.1") and path.name == "regress.csv"
    assert len(load_records(path)) == 4  # the meta-device count travels with its run
    (path2,) = accept_reference(records, tmp_path)  # default: the newest run, r2
    ref = load_records(path2)
    assert path2 == path
    assert sorted(zip(ref["metric"], ref["run_id"], strict=True)) == sorted([
        ("calibration_time", r1), ("calibration_time", r2), ("params", r1), ("sampling_time", r2),
        ("stage_time/denoiser", r1)])  # r1's calibration stays: its stage_time row is still referenced
    with pytest.raises(ValueError, match="run ids \\['r9'\\] are not in the records"):
        accept_reference(records, tmp_path, ["r9"])
