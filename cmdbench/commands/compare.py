"""``cmdbench compare``: regression verdicts of current records against a reference; exit 1 on a failure."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """examples:
  cmdbench compare results/reference/<device-slug>/regress.csv results/regress/<run_id>.csv
  cmdbench compare --against-last results/records         # newest run vs the previous run of its config
  cmdbench compare ref.csv new.csv --tolerance sampling_time=0.25 --tolerance clipsim=abs:0.01
verdicts: regressed, changed (an exact figure moved), missing, new, not separated (median beyond the band,
  distributions overlapping), not gated (fewer than 3 raw repeats), incomparable (another device key),
  improved, unchanged. Rows pair on (config_hash, metric); seeds are not part of a timing's identity.
fails (exit 1) on regressed and changed, and on missing/new unless --allow-missing/--allow-new.
tolerances: time 10% and memory 5% (with separated bootstrap intervals), FLOPs/MACs/params/predictions
  exact, FVD 5% (relative), CLIPSIM 0.002 (absolute), others 5%. CPU timings are divided by the run's
  calibration workload first.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "compare", help="compare current records against a reference; exit 1 on a regression",
        description="Pair rows on (config_hash, metric) and judge each by its kind: exact figures exactly, "
                    "timings on their raw repeats (median beyond the band and a separated bootstrap "
                    "interval), quality metrics by a direction-aware tolerance.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                        help="REFERENCE CURRENT (files or directories), or with --against-last one RECORDS path")
    parser.add_argument("--against-last", action="store_true",
                        help="compare the newest run in RECORDS (or --run-id) with the previous run of the same "
                             "config (same producer, shared (config_hash, metric) pairs)")
    parser.add_argument("--run-id", help="with --against-last: the run to judge (default: the newest)")
    parser.add_argument("--tolerance", action="append", metavar="[PATTERN=][rel:|abs:]X",
                        help="override a tolerance, repeatable (PATTERN is a metric glob; default relative)")
    parser.add_argument("--allow-missing", action="store_true", help="do not fail on reference rows not measured now")
    parser.add_argument("--allow-new", action="store_true", help="do not fail on rows without a reference")
    parser.add_argument("--confidence", type=float, default=None,
                        help="confidence of the bootstrap interval of timing ratios (default 0.99)")
    parser.add_argument("--out", type=Path, help="also write the verdict table as markdown here")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from cmdbench.bench.regression import (
        CONFIDENCE,
        compare,
        exit_code,
        failing,
        parse_tolerances,
        previous_run,
        render,
        summary,
    )
    from cmdbench.bench.results import load_records
    from cmdbench.bench.tables import to_markdown, write_text_atomic

    if args.against_last:
        if len(args.paths) != 1:
            raise ValueError(f"--against-last takes one RECORDS path, got {len(args.paths)}: "
                             f"{[str(p) for p in args.paths]}")
        records = load_records(args.paths[0])
        previous, latest = previous_run(records, args.run_id)
        print(f"comparing run {latest} with the previous run of its config, {previous}")
        reference, current = records[records["run_id"] == previous], records[records["run_id"] == latest]
    else:
        if args.run_id:
            raise ValueError("--run-id goes with --against-last")
        if len(args.paths) != 2:
            raise ValueError(f"compare takes REFERENCE CURRENT (2 paths), got {len(args.paths)}; "
                             "or --against-last RECORDS")
        reference, current = load_records(args.paths[0]), load_records(args.paths[1])
    confidence = CONFIDENCE if args.confidence is None else args.confidence
    if not 0 < confidence < 1:
        raise ValueError(f"--confidence {confidence}; allowed: between 0 and 1, e.g. 0.99")
    verdicts = compare(reference, current, parse_tolerances(args.tolerance), confidence=confidence)
    text = to_markdown(render(verdicts)) if len(verdicts) else "(no measured rows on either side)\n"
    print(text, end="")
    print(f"verdicts: {summary(verdicts)}")
    bad = failing(verdicts, allow_missing=args.allow_missing, allow_new=args.allow_new)
    if len(bad):
        print(f"FAILED: {len(bad)} rows ({', '.join(sorted(set(bad['verdict'])))}); "
              "accept a deliberate change with `cmdbench accept`")
    if args.out:
        write_text_atomic(args.out, text)
    return exit_code(verdicts, allow_missing=args.allow_missing, allow_new=args.allow_new)
