"""Pivots, paper-vs-measured joins, markdown and LaTeX rendering."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

from cmdbench.bench.tables import (
    TableError,
    format_number,
    latex_escape,
    paper_vs_measured,
    pivot,
    to_latex,
    to_markdown,
    write_table,
)

_spec = importlib.util.spec_from_file_location("records_factory", Path(__file__).with_name("records_factory.py"))
factory = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(factory)
record, frame = factory.record, factory.frame


def test_pivot_shapes_and_values():
    df = frame(record(generator="a", metric="sampling_time", value=1.5),
               record(generator="a", metric="peak_memory", value=2.0, unit="GiB"),
               record(generator="b", metric="sampling_time", value=3.0))
    t = pivot(df, "generator", "metric", units=False)
    assert list(t.columns) == ["generator", "peak_memory", "sampling_time"]
    assert t.set_index("generator").loc["a", "sampling_time"] == 1.5
    assert math.isnan(t.set_index("generator").loc["b", "peak_memory"])


def test_pivot_labels_metrics_with_units_and_separates_two_meanings():
    df = frame(record(generator="a", metric="sampling_time", value=1.5, unit="s/video"),
               record(generator="a", metric="peak_memory", value=2.0, unit="GiB"),
               record(generator="b", metric="peak_memory", value=9.0, unit="GB"))
    t = pivot(df, "generator", "metric")
    assert list(t.columns) == ["generator", "peak_memory [GB]", "peak_memory [GiB]", "sampling_time [s/video]"]
    assert t.set_index("generator").loc["b", "peak_memory [GB]"] == 9.0
    rows = pivot(df, "metric", "generator")  # metric as rows: labelled too
    assert list(rows["metric"]) == ["peak_memory [GB]", "peak_memory [GiB]", "sampling_time [s/video]"]
    assert list(pivot(df, ["metric", "unit"], "generator")["metric"]) == ["peak_memory", "peak_memory",
                                                                       "sampling_time"]


def test_pivot_refuses_silent_aggregation():
    df = frame(record(value=1.0, run_id="r1"), record(value=3.0, run_id="r2"))
    with pytest.raises(TableError, match="2 records share a cell"):
        pivot(df, "generator", "metric")
    assert pivot(df, "generator", "metric", aggfunc="mean")["sampling_time [s]"][0] == 2.0


def test_pivot_unknown_column_and_empty():
    df = frame(record())
    with pytest.raises(TableError, match="unknown columns \\['model'\\]"):
        pivot(df, "model", "metric")
    with pytest.raises(TableError, match="no records"):
        pivot(df.iloc[0:0], "generator", "metric")


def test_paper_vs_measured_joins_newest_measurement():
    df = frame(
        record(source="paper", generator="CMD", metric="fvd", value=200.0, unit="", protocol="Table 2"),
        record(source="paper", generator="CMD", metric="clipsim", value=0.3, unit="", protocol="Table 2"),
        record(generator="cmd-x", metric="fvd", value=150.0, created_utc="2026-01-01T00:00:00Z", run_id="old"),
        record(generator="cmd-x", metric="fvd", value=220.0, created_utc="2026-02-01T00:00:00Z", run_id="new"),
        record(generator="cmd-x", metric="fvd", value=1.0, height=128, run_id="other-setting"),
    )
    out = paper_vs_measured(df, generator_map={"cmd-x": "CMD"}).set_index("metric")
    assert out.loc["fvd", "measured"] == 220.0 and out.loc["fvd", "run_id"] == "new"
    assert out.loc["fvd", "ratio"] == pytest.approx(1.1)
    assert math.isnan(out.loc["clipsim", "measured"])  # no measurement: kept, not dropped
    assert out.loc["fvd", "paper_where"] == "Table 2"


def test_markdown_and_latex_rendering(tmp_path):
    t = pivot(frame(record(generator="cmd_x", value=0.123456), record(generator="b&c", value=12.0)),
              "generator", "metric")
    md = to_markdown(t)
    assert "| b&c" in md and "0.1235" in md and "| 12 " in md
    tex = to_latex(t, caption="Time 50%", label="tab:t")
    assert r"cmd\_x" in tex and r"b\&c" in tex and r"Time 50\%" in tex and r"\label{tab:t}" in tex
    assert tex.count(r"\\") == 3  # header + two rows
    paths = write_table(t, tmp_path / "out" / "demo")
    assert [p.name for p in paths] == ["demo.md", "demo.tex"]
    assert paths[0].read_text() == md
    assert write_table(t, tmp_path / "out" / "demo") and paths[0].read_text() == md  # deterministic


def test_format_number():
    assert [format_number(v) for v in (3.0, 0.000123456, float("nan"), None, "x", True)] == [
        "3", "0.0001235", "-", "-", "x", "true"]
    assert latex_escape("a_b^c~") == r"a\_b\textasciicircum{}c\textasciitilde{}"
