"""The ``cmdbench`` command line. Each subcommand lives in ``cmdbench/commands/<name>.py`` and defines
``add_parser(subparsers)`` (returning its parser, with ``set_defaults(func=run)``) and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

# The explicit list of subcommand modules, in --help order.
COMMAND_MODULES = (
    "list_cmd", "sample", "bench", "evaluate", "ref_stats", "efficiency", "reproduce",
    "table", "plot", "compare", "accept", "weights", "train",
)

EPILOG = """examples:
  cmdbench list
  cmdbench sample tiny-unet3d --tiny --seeds 0-3 --out samples/
  cmdbench bench --generator tiny-unet3d --tiny --seeds 0-7 --records results/records
  cmdbench table results/records --out results/tables/demo.md
  cmdbench compare results/reference/cpu results/records
  cmdbench reproduce efficiency
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cmdbench",
        description="Benchmark and evaluate video diffusion models (CMD and baseline video LDMs).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from cmdbench import __version__

    parser.add_argument("--version", action="version", version=f"cmdbench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"cmdbench.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"cmdbench.commands.{name}":
                continue  # subcommand not built yet
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # clip-anytorch imports pkg_resources, which warns on every run; the message is not the user's concern.
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, PermissionError) as err:
        # Our errors are written to be read: print them without a traceback.
        print(f"cmdbench {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
