"""``cmdbench reproduce NAME [ARGS...]``: run a registered paper-table reproduction."""

from __future__ import annotations

import argparse

EPILOG = """examples:
  cmdbench reproduce demo
  cmdbench reproduce demo --out-root /tmp/demo
  cmdbench list reproductions
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "reproduce", help="run a registered reproduction (records, tables, figures)",
        description="Run a reproduction by name; arguments after the name go to the reproduction "
                    "(`cmdbench reproduce NAME --help`).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", help="reproduction name (see `cmdbench list reproductions`)")
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for the reproduction")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from cmdbench.bench.reproduce import load_reproductions

    return int(load_reproductions().get(args.name)(list(args.rest)) or 0)
