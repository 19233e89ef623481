"""``cmdbench accept RECORDS``: promote a run to the regression reference (``nox -s accept_reference``)."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """examples:
  cmdbench accept results/regress                        # the newest run there
  cmdbench accept results/records --run-id bench-20260101T000000-abc123
rows go to <reference-root>/<device-slug>/<producer>.csv (producer = the run id's prefix: regress, bench,
efficiency, ...), replacing rows with the same (config_hash, metric); the device slug names the CPU model
or GPU, threads, torch and BLAS build of the machine the run measured on.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "accept", help="promote a run's rows to the regression reference of its device",
        description=__doc__.splitlines()[0].split(": ", 1)[1],
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("records", type=Path, help="records (file or directory) holding the run")
    parser.add_argument("--run-id", action="append", dest="run_ids", metavar="ID",
                        help="run to accept, repeatable (default: the newest run in RECORDS)")
    parser.add_argument("--reference-root", type=Path, default=Path("results/reference"),
                        help="reference directory (default: %(default)s)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from cmdbench.bench.regression import accept_reference
    from cmdbench.bench.results import load_records

    for path in accept_reference(load_records(args.records), args.reference_root, args.run_ids):
        print(f"wrote {path}")
    return 0
