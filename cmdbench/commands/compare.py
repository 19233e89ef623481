"""``cmdbench compare REFERENCE CURRENT``: regression verdicts; exit 1 on a regression."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """examples:
  cmdbench compare results/reference/cpu results/records
  cmdbench compare ref.csv new.csv --tolerance sampling_time=0.25 --tolerance clipsim=abs:0.01
verdicts: improved, unchanged, regressed, new, missing; rows pair on (config_hash, metric).
default tolerances: time 10%, memory 5%, FLOPs/MACs/params exact, FVD 5% (+1), CLIPSIM 0.002, others 5%.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "compare", help="compare current records against a reference; exit 1 on regression",
        description="Pair rows on (config_hash, metric), newest row per side, and judge each change with "
                    "direction-aware tolerances.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("reference", type=Path, help="reference records (file or directory)")
    parser.add_argument("current", type=Path, help="current records (file or directory)")
    parser.add_argument("--tolerance", action="append", metavar="[PATTERN=][rel:|abs:]X",
                        help="override a tolerance, repeatable (PATTERN is a metric glob; default relative)")
    parser.add_argument("--fail-on-missing", action="store_true", help="also fail when a reference row is missing")
    parser.add_argument("--out", type=Path, help="also write the verdict table as markdown here")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from cmdbench.bench.regression import compare, exit_code, parse_tolerances, summary
    from cmdbench.bench.results import load_records
    from cmdbench.bench.tables import to_markdown, write_text_atomic

    verdicts = compare(load_records(args.reference), load_records(args.current), parse_tolerances(args.tolerance))
    text = to_markdown(verdicts) if len(verdicts) else "(no measured rows on either side)\n"
    print(text, end="")
    print(summary(verdicts))
    if args.out:
        write_text_atomic(args.out, text)
    return exit_code(verdicts, fail_on_missing=args.fail_on_missing)
