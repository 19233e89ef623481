"""The ``cmdbench`` command line. Each subcommand lives in ``cmdbench/commands/<module>.py`` and defines
``add_parser(subparsers)`` (returning its parser, with ``set_defaults(func=run)``) and ``run(args) -> int``.

Start-up is kept under a second: only the chosen subcommand's module is imported to build its parser (the
others appear in ``cmdbench --help`` through :data:`COMMANDS`' one-line help), and a subcommand imports its
heavy modules (torch, diffusers, the training stack) inside ``run``. ``benchmarks/test_bench_cli.py``
measures it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Iterable, Sequence

# command -> (module under cmdbench.commands, the one-line help of `cmdbench --help`), in --help order.
# The help text is the module's own `add_parser(..., help=...)` (tests/test_cli.py checks they agree).
COMMANDS: dict[str, tuple[str, str]] = {
    "list": ("list_cmd", "list registered generators, metrics, datasets and reproductions"),
    "sample": ("sample", "sample videos for seeds; write mp4s and a frame grid"),
    "bench": ("bench", "sample with seeds, measure (time, memory, metrics), write result records"),
    "evaluate": ("evaluate", "FVD/CLIPSIM/PSNR of a folder of videos or a generator, written as result rows"),
    "ref-stats": ("ref_stats", "compute and cache real-set FVD statistics of a folder of videos or a dataset"),
    "sensitivity": ("sensitivity", "tabulate how each judge responds to controlled distortions of real videos"),
    "efficiency": ("efficiency", "FLOPs/MACs, parameters, predicted and measured time and memory"),
    "reproduce": ("reproduce", "run a registered reproduction (records, tables, figures)"),
    "table": ("table", "pivot result records into markdown and LaTeX tables"),
    "plot": ("plot", "plot one metric from records (bar chart or trend over commits)"),
    "compare": ("compare", "compare current records against a reference; exit 1 on a regression"),
    "accept": ("accept", "promote a run's rows to the regression reference of its device"),
    "weights": ("weights", "list, download, verify or locate the weight files metrics need (I3D, CLIP)"),
    "train": ("train", "train a CMD stage (autoencoder, content model, motion model) with accelerate; "
                       "assemble the stages"),
}
# Kept for callers that list the modules.
COMMAND_MODULES = tuple(module for module, _ in COMMANDS.values())

EPILOG = """examples:
  cmdbench list
  cmdbench evaluate --real REAL_DIR --videos FAKE_DIR --metric fvd2048_16f --metric clipsim --metric psnr \\
      --extractor i3d-random-tiny --clip-weights clip-random-tiny --non-strict --allow-singular --records runs
  cmdbench sample tiny-unet3d --tiny --seeds 0-3 --out samples/
  cmdbench bench --generator tiny-unet3d --tiny --seeds 0-7 --records results/records
  cmdbench table results/records --out results/tables/demo.md
  cmdbench compare results/reference/cpu results/records
  cmdbench reproduce efficiency
`cmdbench COMMAND --help` shows each command's options and examples.
"""


def command_of(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv``: its first token that is not an option (top-level options take no
    values), or ``None``."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(commands: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The ``cmdbench`` parser with full subparsers for ``commands`` (``None``: every command) and a one-line
    placeholder for the others, so building it imports only the named commands' modules.

    ``parser.command_parsers`` maps each fully built command to its parser (for its usage on errors).
    """
    from cmdbench import __version__

    wanted = set(COMMANDS) if commands is None else set(commands)
    parser = argparse.ArgumentParser(
        prog="cmdbench",
        description="Benchmark and evaluate video diffusion models (CMD and baseline video LDMs).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cmdbench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    built: dict[str, argparse.ArgumentParser] = {}
    for name, (module_name, help_text) in COMMANDS.items():
        if name in wanted:
            module = importlib.import_module(f"cmdbench.commands.{module_name}")
            built[name] = module.add_parser(sub)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    parser.command_parsers = built  # type: ignore[attr-defined]
    return parser


def is_user_error(err: BaseException) -> bool:
    """Errors written to be read (bad input, missing files, unavailable devices or weights): printed in one
    line without a traceback. Anything else is a bug and keeps its traceback."""
    if isinstance(err, (ValueError, FileNotFoundError, PermissionError)):
        return True
    weights = sys.modules.get("cmdbench.weights")  # its errors can only come from code that imported it
    return weights is not None and isinstance(err, weights.WeightsError)


def main(argv: Sequence[str] | None = None) -> int:
    # clip-anytorch imports pkg_resources, which warns on every run; the message is not the user's concern.
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    argv = list(sys.argv[1:] if argv is None else argv)
    command = command_of(argv)
    parser = build_parser([command] if command in COMMANDS else [])
    args, extra = parser.parse_known_args(argv)
    if extra:  # argparse reports these at the top level; the subcommand's usage is the useful one
        target = parser.command_parsers.get(getattr(args, "command", None), parser)
        target.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if not is_user_error(err):
            raise
        print(f"cmdbench {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
