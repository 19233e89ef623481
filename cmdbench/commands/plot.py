"""``cmdbench plot RECORDS... --metric M``: bar chart or trend over commits, PNG and PDF."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """examples:
  cmdbench plot results/records --metric sampling_time --out results/figures/time
  cmdbench plot results/records --metric peak_memory --kind trend --out results/figures/memory_trend
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "plot", help="plot one metric from records (bar chart or trend over commits)",
        description="Plot one metric from records; writes <out>.png and <out>.pdf.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("records", nargs="+", type=Path, help="records CSV files or directories")
    parser.add_argument("--metric", required=True)
    parser.add_argument("--kind", choices=("bar", "trend"), default="bar")
    parser.add_argument("--by", default="generator", help="bar chart: one bar per value of this column")
    parser.add_argument("--generator", action="append", dest="generators", help="keep only these generators")
    parser.add_argument("--title")
    parser.add_argument("--out", required=True, type=Path, help="output path without extension")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from cmdbench.bench.plots import bar_chart, trend_plot
    from cmdbench.bench.results import load_records
    from cmdbench.commands.table import filter_records

    df = filter_records(load_records(*args.records), generators=args.generators)
    if args.kind == "bar":
        paths = bar_chart(df, args.metric, args.out, by=args.by, title=args.title)
    else:
        paths = trend_plot(df, args.metric, args.out, title=args.title)
    for p in paths:
        print(f"wrote {p}")
    return 0
