"""Figures: bar chart and trend over commits, PNG + PDF, atomic and deterministic."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from PIL import Image

from cmdbench.bench.plots import bar_chart, commit_order, trend_plot
from cmdbench.bench.tables import TableError

_spec = importlib.util.spec_from_file_location("records_factory", Path(__file__).with_name("records_factory.py"))
factory = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(factory)
record, frame = factory.record, factory.frame


def test_bar_chart_writes_png_and_pdf(tmp_path):
    df = frame(record(generator="a", value=1.0, std=0.1), record(generator="b", value=2.0))
    paths = bar_chart(df, "sampling_time", tmp_path / "figs" / "bar")
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    assert Image.open(paths[0]).size[0] > 100
    assert paths[1].read_bytes().startswith(b"%PDF")
    first = paths[1].read_bytes()
    bar_chart(df, "sampling_time", tmp_path / "figs" / "bar")
    assert paths[1].read_bytes() == first  # fixed metadata: re-rendering is byte-identical
    assert not list((tmp_path / "figs").glob("*.tmp"))


def test_trend_over_commits_orders_by_time(tmp_path):
    df = frame(
        record(git_sha="c2" * 20, created_utc="2026-01-03T00:00:00Z", value=1.2),
        record(git_sha="c1" * 20, created_utc="2026-01-01T00:00:00Z", value=1.0),
        record(git_sha="c3" * 20, created_utc="2026-01-05T00:00:00Z", value=0.9),
    )
    assert commit_order(df) == ["c1" * 20, "c2" * 20, "c3" * 20]
    paths = trend_plot(df, "sampling_time", tmp_path / "trend")
    assert all(p.exists() for p in paths)


def test_unknown_metric_or_mixed_units():
    df = frame(record(metric="a", unit="s"), record(metric="a", unit="ms", generator="b"))
    with pytest.raises(TableError, match="no records for metric 'fvd'; the records hold \\['a'\\]"):
        bar_chart(df, "fvd", "unused")
    with pytest.raises(TableError, match="several units"):
        bar_chart(df, "a", "unused")
