"""``cmdbench table RECORDS...``: pivot records into a markdown / LaTeX table."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """examples:
  cmdbench table results/records                                  # generators x metrics, markdown
  cmdbench table results/records --metric sampling_time --index generator --columns steps
  cmdbench table results/records --out results/tables/demo        # writes demo.md and demo.tex
  cmdbench table results/paper results/records --paper-vs-measured --map cmd-ucf101-64=CMD
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "table", help="pivot result records into markdown and LaTeX tables",
        description="Load records (CSV files or directories), filter, pivot, print or write a table.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("records", nargs="+", type=Path, help="records CSV files or directories")
    parser.add_argument("--index", action="append", help="row column(s) (default: generator)")
    parser.add_argument("--columns", action="append", help="column field(s) (default: metric)")
    parser.add_argument("--values", default="value")
    parser.add_argument("--aggfunc", help="combine duplicate cells: median, mean, min, max, first, last")
    parser.add_argument("--metric", action="append", dest="metrics", help="keep only these metrics")
    parser.add_argument("--generator", action="append", dest="generators", help="keep only these generators")
    parser.add_argument("--source", choices=("measured", "paper"), help="keep only this source")
    parser.add_argument("--paper-vs-measured", action="store_true", help="paper numbers beside measured ones")
    parser.add_argument("--map", action="append", default=[], metavar="MEASURED=PAPER",
                        help="generator name -> paper method name, for --paper-vs-measured")
    parser.add_argument("--digits", type=int, default=4, help="significant digits")
    parser.add_argument("--format", choices=("markdown", "latex"), default="markdown", help="stdout format")
    parser.add_argument("--out", type=Path, help="write <out>.md and <out>.tex instead of printing")
    parser.set_defaults(func=run)
    return parser


def filter_records(df, *, metrics=None, generators=None, source=None):
    """Keep the requested metrics/generators/source; an unknown name is an error, not an empty table."""
    for column, wanted in (("metric", metrics), ("generator", generators)):
        if wanted:
            known = set(df[column].dropna())
            unknown = sorted(set(wanted) - known)
            if unknown:
                raise ValueError(f"unknown {column} {unknown} in the records; they hold {sorted(known)}")
            df = df[df[column].isin(wanted)]
    if source:
        df = df[df["source"] == source]
    return df


def run(args: argparse.Namespace) -> int:
    from cmdbench.bench.results import load_records
    from cmdbench.bench.tables import paper_vs_measured, pivot, to_latex, to_markdown, write_table

    df = filter_records(load_records(*args.records), metrics=args.metrics, generators=args.generators,
                        source=args.source)
    if args.paper_vs_measured:
        mapping = {}
        for item in args.map:
            measured, sep, paper = item.partition("=")
            if not sep:
                raise ValueError(f"--map {item!r}: write MEASURED=PAPER, e.g. cmd-ucf101-64=CMD")
            mapping[measured] = paper
        table = paper_vs_measured(df, generator_map=mapping)
    else:
        table = pivot(df, args.index or ["generator"], args.columns or ["metric"], args.values, aggfunc=args.aggfunc)
    if args.out:
        for path in write_table(table, args.out, digits=args.digits):
            print(f"wrote {path}")
    else:
        print(to_latex(table, args.digits) if args.format == "latex" else to_markdown(table, args.digits), end="")
    return 0
