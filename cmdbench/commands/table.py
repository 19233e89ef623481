"""``cmdbench table RECORDS...``: pivot records into a markdown / LaTeX table."""

from __future__ import annotations

import argparse
import re
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


NOT_CONFORMANT = re.compile(r"not conformant \(([^;)]*)")


def mark_caveats(df):
    """Metric labels carry what makes a value incomparable, so it never shares a column with comparable ones:
    ``fvd2048_16f (not conformant: 47 real / 47 fake)`` for FVD at other sample counts than its protocol's
    (``cmdbench evaluate --non-strict`` writes it in the row's protocol), ``(random weights)`` for values of
    the offline stand-ins (``"random_weights": true`` in the row's notes)."""
    import json

    labels = []
    for metric, protocol, notes in zip(df["metric"], df["protocol"], df["notes"], strict=True):
        label = str(metric)
        m = NOT_CONFORMANT.search(str(protocol)) if isinstance(protocol, str) else None
        if m:
            label += f" (not conformant: {m.group(1).strip()})"
        if isinstance(notes, str) and "{" in notes:
            try:
                extra = json.loads(notes[notes.index("{"):])
            except ValueError:
                extra = {}
            if isinstance(extra, dict) and extra.get("random_weights"):
                label += " (random weights)"
        labels.append(label)
    return df.assign(metric=labels)


def check_one_value_per_cell(df, index: list[str], columns: list[str]) -> None:
    """Several records in one table cell are an error naming the flags that resolve it (a metric's unit is
    part of its column, as the table labels it)."""
    keys = [*index, *columns]
    unknown = [k for k in keys if k not in df.columns]
    if unknown:
        raise ValueError(f"--index/--columns {unknown} are not record columns; allowed {list(df.columns)}")
    if "metric" in keys and "unit" not in keys and "unit" in df.columns:
        keys.append("unit")
    dup = df.duplicated(subset=keys, keep=False)
    if dup.any():
        example = {k: df.loc[dup, k].iloc[0] for k in keys}
        raise ValueError(
            f"{int(dup.sum())} records share a table cell, e.g. {example}: pass --aggfunc median|mean|min|max|first|"
            "last to combine them, keep fewer rows with --metric/--generator/--source, or tell them apart with "
            "--index/--columns (e.g. --index generator --index run_id)")


def run(args: argparse.Namespace) -> int:
    from cmdbench.bench.results import load_records
    from cmdbench.bench.tables import paper_vs_measured, pivot, to_latex, to_markdown, write_table

    df = mark_caveats(filter_records(load_records(*args.records), metrics=args.metrics, generators=args.generators,
                                     source=args.source))
    if args.paper_vs_measured:
        mapping = {}
        for item in args.map:
            measured, sep, paper = item.partition("=")
            if not sep:
                raise ValueError(f"--map {item!r}: write MEASURED=PAPER, e.g. cmd-ucf101-64=CMD")
            mapping[measured] = paper
        table = paper_vs_measured(df, generator_map=mapping)
    else:
        index, columns = args.index or ["generator"], args.columns or ["metric"]
        if args.aggfunc is None:
            check_one_value_per_cell(df, index, columns)
        table = pivot(df, index, columns, args.values, aggfunc=args.aggfunc)
    if args.out:
        for path in write_table(table, args.out, digits=args.digits):
            print(f"wrote {path}")
    else:
        print(to_latex(table, args.digits) if args.format == "latex" else to_markdown(table, args.digits), end="")
    return 0
