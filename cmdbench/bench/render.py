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
