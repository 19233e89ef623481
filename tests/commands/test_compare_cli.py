"""``cmdbench compare`` and ``cmdbench accept`` end to end on synthetic records (no sampling)."""

from __future__ import annotations

import numpy as np
import pytest

from cmdbench.bench.regression import device_slug
from cmdbench.bench.results import RecordWriter, load_records, make_row
from cmdbench.cli import main

CPU = "cpu: Xeon A (2 threads, mkl 2024.2, AVX512)"


def run_rows(run_id: str, created: str, *, time_median: float, seeds: str = "0-7", params: float = 7.0,
             extra_metric: bool = False) -> list[dict]:
    """One run of a bench-like producer: a timed figure with 6 repeats (2% spread), a calibration row and an
    exact count."""
    rng = np.random.default_rng(sum(run_id.encode()))
    common = dict(run_id=run_id, created_utc=created, source="measured", generator="gen-a", device_name=CPU,
                  torch_version="2.14.1", seeds=seeds)
    values = list(time_median * (1 + 0.02 * rng.standard_normal(6)))
    cal = list(0.01 * (1 + 0.02 * rng.standard_normal(6)))
    rows = [make_row(**common, metric="sampling_time", value=float(np.median(values)), values=values, n=6,
                     unit="s/video", higher_is_better=False, config_hash="h-time"),
            make_row(**common, metric="calibration_time", value=float(np.median(cal)), values=cal, n=6,
                     unit="s/call", config_hash="h-cal"),
            make_row(**{**common, "device_name": "meta"}, metric="params", value=params, unit="count",
                     config_hash="h-params")]
    if extra_metric:
        rows.append(make_row(**common, metric="stage_time/denoiser", value=1.0, values=[1.0, 1.0, 1.0], n=3,
                             unit="s/video", config_hash="h-stage"))
    return rows


@pytest.fixture
def records(tmp_path):
    root = tmp_path / "records"
    for rid, created, t in (("bench-20260101T000000-aaaaaa", "2026-01-01T00:00:00Z", 1.0),
                            ("bench-20260102T000000-bbbbbb", "2026-01-02T00:00:00Z", 1.0)):
        RecordWriter(root, rid).append(run_rows(rid, created, time_median=t))
    return root


def test_against_last_unchanged_then_a_slowdown_on_other_seeds(records, capsys):
    assert main(["compare", "--against-last", str(records)]) == 0
    out = capsys.readouterr().out
    assert "comparing run bench-20260102T000000-bbbbbb with the previous run of its config, " \
           "bench-20260101T000000-aaaaaa" in out
    assert "| change" in out and "| band" in out and "spread ref / cur" in out
    rid = "bench-20260103T000000-cccccc"
    RecordWriter(records, rid).append(run_rows(rid, "2026-01-03T00:00:00Z", time_median=6.0, seeds="100-107"))
    assert main(["compare", "--against-last", str(records)]) == 1
    out = capsys.readouterr().out
    assert "regressed" in out and "FAILED: 1 rows (regressed)" in out
    # an explicit older run: judged against the run before it
    assert main(["compare", "--against-last", str(records), "--run-id", "bench-20260102T000000-bbbbbb"]) == 0


def test_exact_change_and_missing_new_exit_codes(records, tmp_path, capsys):
    ref = records / "bench-20260101T000000-aaaaaa.csv"
    rid = "bench-20260104T000000-dddddd"
    RecordWriter(tmp_path / "cur", rid).append(run_rows(rid, "2026-01-04T00:00:00Z", time_median=1.0, params=8.0))
    assert main(["compare", str(ref), str(tmp_path / "cur")]) == 1
    assert "changed" in capsys.readouterr().out
    rid = "bench-20260105T000000-eeeeee"
    RecordWriter(tmp_path / "new", rid).append(run_rows(rid, "2026-01-05T00:00:00Z", time_median=1.0,
                                                        extra_metric=True))
    assert main(["compare", str(ref), str(tmp_path / "new")]) == 1
    assert main(["compare", str(ref), str(tmp_path / "new"), "--allow-new"]) == 0
    assert main(["compare", str(tmp_path / "new"), str(ref)]) == 1  # the stage row is missing now
    assert main(["compare", str(tmp_path / "new"), str(ref), "--allow-missing", "--out",
                 str(tmp_path / "v.md")]) == 0
    assert "| verdict" in (tmp_path / "v.md").read_text()


def test_bad_invocations_name_the_problem(records, capsys):
    assert main(["compare", str(records)]) == 2
    assert "REFERENCE CURRENT (2 paths)" in capsys.readouterr().err
    assert main(["compare", "--against-last", str(records), str(records)]) == 2
    assert main(["compare", str(records), str(records), "--run-id", "x"]) == 2
    assert main(["compare", str(records), str(records), "--confidence", "2"]) == 2
    assert "--confidence 2.0" in capsys.readouterr().err


def test_accept_promotes_the_newest_run(records, tmp_path, capsys):
    root = tmp_path / "reference"
    assert main(["accept", str(records), "--reference-root", str(root)]) == 0
    path = root / device_slug(f"{CPU}; torch 2.14.1") / "bench.csv"
    assert f"wrote {path}" in capsys.readouterr().out
    assert set(load_records(path)["run_id"]) == {"bench-20260102T000000-bbbbbb"}
    assert main(["accept", str(records), "--reference-root", str(root), "--run-id", "nope"]) == 2
    assert main(["compare", str(path), str(records / "bench-20260101T000000-aaaaaa.csv")]) == 0
