"""``cmdbench list [WHAT]``: registered generators, metrics, datasets and reproductions."""

from __future__ import annotations

import argparse

KINDS = ("generators", "metrics", "datasets", "reproductions")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "list", help="list registered generators, metrics, datasets and reproductions",
        description="List what is registered, with one-line descriptions.",
        epilog="examples:\n  cmdbench list\n  cmdbench list generators",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("what", nargs="?", choices=(*KINDS, "all"), default="all")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from cmdbench.bench.reproduce import load_reproductions
    from cmdbench.registry import DATASETS, GENERATORS, METRICS, load_plugins

    load_plugins()
    registries = {"generators": GENERATORS, "metrics": METRICS, "datasets": DATASETS,
                  "reproductions": load_reproductions()}
    for kind in KINDS if args.what == "all" else (args.what,):
        reg = registries[kind]
        print(f"{kind} ({len(reg)}):")
        entries = list(reg.entries())
        width = max((len(e.name) for e in entries), default=0)
        for e in entries:
            print(f"  {e.name.ljust(width)}  {e.description}")
        if not entries:
            print("  (none)")
    return 0
