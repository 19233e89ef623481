"""Registry of paper-table reproductions run by ``cmdbench reproduce NAME`` and ``nox -s reproduce -- NAME``.

Each reproduction is a function ``run(argv: list[str]) -> int`` that parses its own options, writes
records under ``results/records``, tables under ``results/tables`` and figures under ``results/figures``.
Modules register with ``@REPRODUCTIONS.register("name", description=...)``; the explicit list of
reproduction modules is :data:`REPRODUCTION_MODULES`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from cmdbench.registry import Registry

REPRODUCTIONS: Registry[Callable[[list[str]], int]] = Registry("reproduction")

REPRODUCTION_MODULES = (
    "cmdbench.bench.repro_demo",
    "cmdbench.bench.repro_efficiency",
    "cmdbench.bench.repro_quality",
)


def load_reproductions() -> Registry[Callable[[list[str]], int]]:
    for module in REPRODUCTION_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise
    return REPRODUCTIONS
