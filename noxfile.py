"""nox sessions for cmdbench. They reuse the current environment (no virtualenv per session; the torch
wheel is large and pip finds the local build), and call ``sys.executable`` so the interpreter that runs
nox is the one that runs the work (``shared/reference/dependencies.md`` §8).

    nox -s install          pip install -c constraints.txt -e ".[dev]"
    nox -s tests            the CPU test suite (pytest; extra args after --)
    nox -s lint             ruff check
    nox -s reproduce        the main reproduction ("efficiency" when registered, else "demo"); -- NAME [ARGS]
    nox -s tables           re-render results/tables and results/figures from committed records
    nox -s check_tables     fail when committed results/tables are stale
    nox -s regress          the CI-sized regression suite (<= 3 min on 2 cores), gated against
                            results/reference/<device-slug>/regress.csv; exit 1 on a failing verdict
    nox -s accept_reference promote a suite run (-- RUN_ID ..., default the newest) to that reference
    nox -s gpu_check        Table 9 at the paper setting + I3D/CLIP throughput on a CUDA device, with records
                            (uses the wheels carried in .gpu_wheels/; `-- --device cpu --tiny` rehearses)
    nox -s benchmark        pytest-benchmark timings in benchmarks/, saved and compared with the last saved run
"""

from __future__ import annotations

import sys
from pathlib import Path

import nox

nox.options.default_venv_backend = "none"
nox.options.sessions = ["lint", "tests"]

ROOT = Path(__file__).resolve().parent
PY = sys.executable


def _python_output(session: nox.Session, code: str) -> str:
    return str(session.run(PY, "-c", code, silent=True, external=True)).strip()


@nox.session
def install(session: nox.Session) -> None:
    """Install cmdbench (editable) with the dev extra, pinned by constraints.txt."""
    session.run(PY, "-m", "pip", "install", "-c", "constraints.txt", "-e", ".[dev]", external=True)


@nox.session
def tests(session: nox.Session) -> None:
    """The CPU test suite (GPU and real-weight tests skip themselves)."""
    session.env.setdefault("HF_HUB_OFFLINE", "1")
    session.run(PY, "-m", "pytest", "-q", *session.posargs, external=True)


@nox.session
def lint(session: nox.Session) -> None:
    session.run(PY, "-m", "ruff", "check", ".", *session.posargs, external=True)


@nox.session
def reproduce(session: nox.Session) -> None:
    """Run a reproduction: ``nox -s reproduce -- NAME [ARGS...]`` (default: efficiency, else demo)."""
    args = list(session.posargs)
    if not args:
        names = _python_output(session, "from cmdbench.bench.reproduce import load_reproductions as l; "
                                        "print(' '.join(l().names()))").split()
        args = ["efficiency" if "efficiency" in names else "demo"]
    session.run(PY, "-m", "cmdbench", "reproduce", *args, external=True)


@nox.session
def tables(session: nox.Session) -> None:
    """Re-render every table and figure from the committed records (cmdbench.bench.render.RENDERERS)."""
    session.run(PY, "-c", "from cmdbench.bench.render import render_all\n"
                          "for p in render_all('.'): print('wrote', p)", external=True)


@nox.session
def check_tables(session: nox.Session) -> None:
    """Fail when a committed table differs from what the committed records render to."""
    session.run(PY, "-c", "import sys\nfrom cmdbench.bench.render import stale_tables\n"
                          "problems = stale_tables('.')\nprint('\\n'.join(problems) or 'tables are current')\n"
                          "sys.exit(1 if problems else 0)", external=True)


@nox.session
def regress(session: nox.Session) -> None:
    """Run the regression suite (cmdbench/bench/regress_suite.py: tiny sampling of every generator, metric
    kernels, exact counts and predicted memory) and gate it against this device's reference; extra args
    after -- go to the suite (e.g. ``--rounds 15``, ``--allow-new``)."""
    session.env.setdefault("HF_HUB_OFFLINE", "1")
    session.env.setdefault("OMP_NUM_THREADS", "1")
    session.run(PY, "-m", "cmdbench.bench.regress_suite", *session.posargs, external=True)


@nox.session
def accept_reference(session: nox.Session) -> None:
    """Promote a regression-suite run (``-- RUN_ID ...``, default the newest in results/regress) into
    ``results/reference/<device-slug>/regress.csv`` via ``cmdbench accept``."""
    ids = [a for rid in session.posargs for a in ("--run-id", rid)]
    session.run(PY, "-m", "cmdbench", "accept", str(ROOT / "results" / "regress"), *ids, external=True)


@nox.session
def gpu_check(session: nox.Session) -> None:
    """Table 9 at the paper setting (CMD, ModelScope, LVDM; fp16; batch 1 and 4) and I3D/CLIP throughput on
    2,048 clips, measured beside predicted memory and time (cmdbench/bench/gpu_check.py; its docstring says
    how to fetch the wheels a machine without a package index needs into .gpu_wheels/). Args after -- go
    to the script; ``-- --device cpu --tiny`` rehearses on a CPU."""
    session.env.setdefault("HF_HUB_OFFLINE", "1")
    wheels = ["--wheels", str(ROOT / ".gpu_wheels")] if any((ROOT / ".gpu_wheels").glob("*.whl")) else []
    session.run(PY, "-m", "cmdbench.bench.gpu_check", *wheels, *session.posargs, external=True)


@nox.session
def benchmark(session: nox.Session) -> None:
    """pytest-benchmark timings (benchmarks/); saved under .benchmarks and compared with the last saved run
    (fails when the median is 25% slower). Extra pytest args after --."""
    compare: list[str] = []
    if any((ROOT / ".benchmarks").rglob("*.json")):
        compare = ["--benchmark-compare", "--benchmark-compare-fail=median:25%"]
    session.run(PY, "-m", "pytest", "benchmarks", "-o", "addopts=-ra --strict-markers --import-mode=importlib",
                "--benchmark-enable", "--benchmark-only", "--benchmark-autosave", *compare, *session.posargs,
                external=True)
