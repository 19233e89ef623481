"""Re-render every committed table and figure from committed records (``nox -s tables``).

:data:`RENDERERS` is the explicit list: each entry is ``(name, function(root) -> list[Path])`` reading
``<root>/results/records`` / ``<root>/results/paper`` and writing under ``<root>/results/tables`` and
``<root>/results/figures``. Add a reproduction's renderer here (one import, one line).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cmdbench.bench.efficiency_report import render_efficiency
from cmdbench.bench.repro_demo import render_demo

Renderer = Callable[[Path], list[Path]]

RENDERERS: list[tuple[str, Renderer]] = [
    ("demo", render_demo),
    ("efficiency", render_efficiency),
]


def render_all(root: str | Path = ".", *, only: list[str] | None = None) -> list[Path]:
    """Run every renderer (or those named in ``only``) against ``root``; returns the files written."""
    root = Path(root)
    names = [n for n, _ in RENDERERS]
    unknown = sorted(set(only or []) - set(names))
    if unknown:
        raise ValueError(f"unknown renderers {unknown}; known {names}")
    written: list[Path] = []
    for name, fn in RENDERERS:
        if only and name not in only:
            continue
        written.extend(fn(root))
    return written


def stale_tables(root: str | Path = ".") -> list[str]:
    """Re-render into a temporary copy of ``<root>/results`` and list every table that differs.

    Compares ``results/tables`` only (figures carry renderer-version bytes). Returns messages naming
    each file that changed, appeared or is committed but no longer produced; empty when all are current.
    """
    import filecmp
    import shutil
    import tempfile

    root = Path(root)
    committed = root / "results" / "tables"
    with tempfile.TemporaryDirectory(prefix="cmdbench-tables-") as tmp:
        shutil.copytree(root / "results", Path(tmp) / "results",
                        ignore=shutil.ignore_patterns("tables", "figures"))
        render_all(tmp)
        fresh = Path(tmp) / "results" / "tables"
        old = {p.relative_to(committed) for p in committed.rglob("*") if p.is_file()} if committed.is_dir() else set()
        new = {p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file()} if fresh.is_dir() else set()
        problems = [f"results/tables/{p}: produced by the renderers but not committed" for p in sorted(new - old)]
        problems += [f"results/tables/{p}: committed but no renderer produces it" for p in sorted(old - new)
                     if p.name != ".gitkeep"]
        problems += [f"results/tables/{p}: stale (re-rendered content differs)" for p in sorted(old & new)
                     if not filecmp.cmp(committed / p, fresh / p, shallow=False)]
    return problems
