"""nox sessions for cmdbench. They reuse the current environment (no virtualenv per session; the torch
wheel is large and pip finds the local build), and call ``sys.executable`` so the interpreter that runs
nox is the one that runs the work (``shared/reference/dependencies.md`` §8).

    nox -s install          pip install -c constraints.txt -e ".[dev]"
    nox -s tests            the CPU test suite (pytest; extra args after --)
    nox -s lint             ruff check
    nox -s reproduce        the main reproduction ("efficiency" when registered, else "demo"); -- NAME [ARGS]
    nox -s tables           re-render results/tables and results/figures from committed records
    nox -s check_tables     fail when committed results/tables are stale
    nox -s regress          compare results/reference/<device> against the newest records; fail on regression
    nox -s accept_reference promote measured rows (-- RUN_ID ... or the newest) into results/reference/<device>/
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


def _device_slug(session: nox.Session) -> str:
    return _python_output(session, "from cmdbench.env import device_name; "
                                   "from cmdbench.bench.regression import device_slug; print(device_slug(device_name()))")


@nox.session
def regress(session: nox.Session) -> None:
    """Compare this device's reference rows with the newest records; exit 1 on a regression."""
    slug = session.posargs[0] if session.posargs else _device_slug(session)
    reference = ROOT / "results" / "reference" / slug
    if not reference.is_dir():
        session.skip(f"no reference rows for device {slug!r} in {reference}; record a run and "
                     "`nox -s accept_reference` first")
    session.run(PY, "-m", "cmdbench", "compare", str(reference), str(ROOT / "results" / "records"),
                *session.posargs[1:], external=True)


@nox.session
def accept_reference(session: nox.Session) -> None:
    """Promote measured rows (``-- RUN_ID ...``, default the newest per config and metric) to the reference."""
    run_ids = repr(list(session.posargs))
    session.run(PY, "-c", "from cmdbench.bench.regression import accept_reference\n"
                          "from cmdbench.bench.results import load_records\n"
                          f"paths = accept_reference(load_records('results/records'), 'results/reference', {run_ids} or None)\n"
                          "print('\\n'.join(f'wrote {p}' for p in paths))", external=True)


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
