"""Regression verdicts: pairing, direction-aware tolerances, exit codes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from cmdbench.bench.regression import Tolerance, compare, exit_code, parse_tolerances, summary, tolerance_for

_spec = importlib.util.spec_from_file_location("records_factory", Path(__file__).with_name("records_factory.py"))
factory = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(factory)
record, frame = factory.record, factory.frame


def verdicts(ref_rows, cur_rows, **kw):
    return compare(frame(*ref_rows), frame(*cur_rows), **kw).set_index(["config_hash", "metric"])["verdict"]


@pytest.mark.parametrize(
    ("metric", "hib", "ref", "cur", "expected"),
    [
        ("sampling_time", False, 1.0, 1.09, "unchanged"),   # within 10%
        ("sampling_time", False, 1.0, 1.11, "regressed"),   # slower beyond 10%
        ("sampling_time", False, 1.0, 0.80, "improved"),
        ("peak_memory", False, 10.0, 10.6, "regressed"),    # memory: 5%
        ("clipsim", True, 0.30, 0.31, "improved"),          # higher is better, beyond abs 0.002
        ("clipsim", True, 0.30, 0.29, "regressed"),
        ("clipsim", True, 0.300, 0.301, "unchanged"),
        ("tflops", None, 100.0, 100.5, "regressed"),       # counts must not move; no direction
    ],
)
def test_direction_aware_verdicts(metric, hib, ref, cur, expected):
    v = verdicts([record(metric=metric, value=ref, higher_is_better=hib)],
                 [record(metric=metric, value=cur, higher_is_better=hib)])
    assert v[("h-a", metric)] == expected


def test_new_missing_and_pairing_on_config_hash():
    ref = [record(config_hash="h1", value=1.0), record(config_hash="h2", value=1.0)]
    cur = [record(config_hash="h2", value=1.0), record(config_hash="h3", value=5.0)]
    v = verdicts(ref, cur)
    assert v[("h1", "sampling_time")] == "missing"
    assert v[("h2", "sampling_time")] == "unchanged"
    assert v[("h3", "sampling_time")] == "new"
    df = compare(frame(*ref), frame(*cur))
    assert exit_code(df) == 0 and exit_code(df, fail_on_missing=True) == 1
    assert summary(df) == "0 regressed, 1 missing, 1 new, 0 improved, 1 unchanged"


def test_newest_row_per_side_and_regressions_first():
    ref = [record(value=1.0)]
    cur = [record(value=5.0, created_utc="2026-01-01T00:00:00Z"), record(value=1.0, created_utc="2026-01-02T00:00:00Z"),
           record(metric="peak_memory", value=2.0, config_hash="h-m"), ]
    df = compare(frame(*ref, record(metric="peak_memory", value=1.0, config_hash="h-m")), frame(*cur))
    assert list(df["verdict"]) == ["regressed", "unchanged"]
    assert exit_code(df) == 1
    assert df.iloc[0]["change"] == pytest.approx(1.0)


def test_paper_rows_are_not_compared():
    v = verdicts([record(source="paper", value=1.0)], [record(value=9.0)])
    assert list(v) == ["new"]


def test_tolerance_overrides():
    tols = parse_tolerances(["sampling_time=0.5"])
    assert tolerance_for("sampling_time", tols) == Tolerance(rel=0.5)
    assert tolerance_for("peak_memory", tols) == Tolerance(rel=0.05)
    assert tolerance_for("anything", parse_tolerances(["0.2"])) == Tolerance(rel=0.2)
    assert tolerance_for("clipsim", parse_tolerances(["clipsim=abs:0.01"])) == Tolerance(abs=0.01)
    v = verdicts([record(value=1.0)], [record(value=1.4)], tolerances=tols)
    assert v[("h-a", "sampling_time")] == "unchanged"
    with pytest.raises(ValueError, match="not a number"):
        parse_tolerances(["sampling_time=fast"])
    with pytest.raises(ValueError, match="kind"):
        parse_tolerances(["x=pct:3"])


def test_device_slug_and_accept_reference(tmp_path):
    from cmdbench.bench.regression import accept_reference, device_slug
    from cmdbench.bench.results import load_records

    assert device_slug("cpu: x86_64 (2 threads)") == "cpu-x86-64-2-threads"
    assert device_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    records = frame(record(run_id="r1", value=1.0, device_name="cpu: a"),
                    record(run_id="r1", value=5.0, device_name="gpu b", config_hash="h-g"),
                    record(run_id="r2", value=2.0, device_name="cpu: a", created_utc="2026-02-01T00:00:00Z"))
    paths = accept_reference(records, tmp_path, ["r1"])
    assert sorted(p.parent.name for p in paths) == ["cpu-a", "gpu-b"]
    assert list(load_records(tmp_path / "cpu-a")["value"]) == [1.0]
    accept_reference(records, tmp_path)  # newest per (config_hash, metric): r2 replaces r1's row
    assert list(load_records(tmp_path / "cpu-a")["value"]) == [2.0]
    with pytest.raises(ValueError, match="run ids \\['r9'\\] are not in the records"):
        accept_reference(records, tmp_path, ["r9"])
