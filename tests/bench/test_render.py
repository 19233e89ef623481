"""render_all / stale_tables: the check that fails when committed tables are stale."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmdbench.bench import render


def fake_renderer(root: Path) -> list[Path]:
    """Writes results/tables/count.md = number of lines in results/records/data.txt."""
    n = len((root / "results" / "records" / "data.txt").read_text().splitlines())
    out = root / "results" / "tables" / "count.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"{n}\n")
    return [out]


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setattr(render, "RENDERERS", [("fake", fake_renderer)])
    (tmp_path / "results" / "records").mkdir(parents=True)
    (tmp_path / "results" / "records" / "data.txt").write_text("a\nb\n")
    return tmp_path


def test_fresh_tables_are_current(root):
    assert render.render_all(root) == [root / "results" / "tables" / "count.md"]
    assert render.stale_tables(root) == []


def test_stale_missing_and_orphan_tables_are_reported(root):
    assert render.stale_tables(root) == ["results/tables/count.md: produced by the renderers but not committed"]
    render.render_all(root)
    (root / "results" / "records" / "data.txt").write_text("a\nb\nc\n")  # records changed, table not
    (root / "results" / "tables" / "old.md").write_text("x")
    assert render.stale_tables(root) == [
        "results/tables/old.md: committed but no renderer produces it",
        "results/tables/count.md: stale (re-rendered content differs)",
    ]
    assert (root / "results" / "tables" / "count.md").read_text() == "2\n"  # the check never writes in place


def test_unknown_renderer_name(root):
    with pytest.raises(ValueError, match="unknown renderers \\['nope'\\]; known \\['fake'\\]"):
        render.render_all(root, only=["nope"])
