"""``cmdbench sensitivity``: how each judge responds to controlled distortions of real videos.

Real videos are split into a reference half and a test half; the test half is shuffled, frozen, reversed,
jittered in time, blurred or noised at several strengths, and every judge (FVD, KVD, JEDi, content-debiased
FVD, FVMD, motion magnitude, as available) is computed between the reference and each distorted test set.
The table shows which judge sees what: a judge whose value does not move under frame shuffling cannot rank
models by their motion. Judges whose weights are missing are named and skipped; ``--stand-in`` runs every
judge offline with random-weight extractors (labelled in every row, the table and the figure: the values
then show the harness, not the judges). Distortions and strengths: :mod:`cmdbench.bench.sensitivity`.

Writes records under ``--records`` (default ``<out-root>/results/records/sensitivity``), the table
``<out-root>/results/tables/sensitivity.md`` and the figure ``<out-root>/results/figures/sensitivity.{png,pdf}``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "tabulate how each judge responds to controlled distortions of real videos"
DEFAULT_JUDGES = ("fvd-videogpt", "kvd", "jedi", "fvd-videomae", "fvmd", "motion-farneback")

EPILOG = """examples:
  # every judge whose weights are present (cmdbench weights fetch i3d_pretrained_400 pips2_fvmd ...)
  cmdbench sensitivity --real ucf_real/
  # offline, random-weight stand-ins (the numbers only show that everything runs)
  cmdbench sensitivity --real real/ --stand-in --out-root /tmp/sens
  # chosen judges and distortions
  cmdbench sensitivity --real real/ --metric fvd-videogpt --metric fvmd --distortion shuffle=0.5,1 \\
      --distortion blur=1,2
distortions (strength): shuffle, freeze, reverse (fraction of frames), jitter (max offset, frames),
  blur (sigma, px), noise (sd, grey levels). Split: even-indexed videos are the reference, odd ones are
  distorted (--split same: all videos on both sides).
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("sensitivity", help=HELP, description=__doc__, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", required=True, help="folder of real videos")
    parser.add_argument("--metric", dest="metrics", action="append", default=None,
                        help=f"judge to tabulate, repeatable (default: {', '.join(DEFAULT_JUDGES)})")
    parser.add_argument("--distortion", dest="distortions", action="append", default=None, metavar="NAME[=S1,S2]",
                        help="distortion and strengths, repeatable (default: all six at their default levels)")
    parser.add_argument("--stand-in", action="store_true",
                        help="random-weight stand-in extractors for every judge (offline; labelled, values mean nothing)")
    parser.add_argument("--split", choices=("half", "same"), default="half",
                        help="half: even videos reference, odd videos distorted; same: all videos on both sides")
    parser.add_argument("--frames", type=int, default=16, help="frames read from each video (default 16)")
    parser.add_argument("--max-videos", type=int, default=None, help="use the first N usable videos only")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random distortion")
    parser.add_argument("--policy", choices=("strict", "skip"), default="strict",
                        help="unreadable files stop the run (strict) or are skipped and named (skip)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out-root", type=Path, default=Path("."), help="root of results/ (default .)")
    parser.add_argument("--records", type=Path, default=None,
                        help="records directory (default <out-root>/results/records/sensitivity)")
    parser.add_argument("--run-id", default=None)
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    parser.set_defaults(func=run)
    return parser


def parse_distortions(specs: list[str] | None) -> dict[str, tuple[float, ...]] | None:
    """``["shuffle=0.5,1", "blur"]`` -> ``{"shuffle": (0.5, 1.0), "blur": <default levels>}``."""
    from cmdbench.bench.sensitivity import DISTORTIONS

    if not specs:
        return None
    out: dict[str, tuple[float, ...]] = {}
    for spec in specs:
        name, _, levels = spec.partition("=")
        name = name.strip()
        if name not in DISTORTIONS:
            raise ValueError(f"--distortion {spec!r}: unknown distortion {name!r}; allowed {sorted(DISTORTIONS)}")
        try:
            values = tuple(float(x) for x in levels.split(",") if x.strip()) if levels else DISTORTIONS[name].levels
        except ValueError:
            raise ValueError(f"--distortion {spec!r}: strengths must be numbers, e.g. {name}=0.5,1") from None
        if any(v < 0 for v in values):
            raise ValueError(f"--distortion {spec!r}: strengths must be >= 0")
        out[name] = values
    return out


def run(args: argparse.Namespace) -> int:
    from cmdbench.bench import sensitivity as sens
    from cmdbench.bench.motion_strata import build_judges, folder_set
    from cmdbench.bench.results import load_records, new_run_id
    from cmdbench.interfaces import check_device

    check_device(args.device, what="--device")
    levels = parse_distortions(args.distortions)
    real = folder_set(args.real, args.frames, policy=args.policy)
    for s in real.skipped:
        print(f"skipped {s['source']}: {s['reason']} [{s['stage']}]")
    if args.max_videos is not None:
        if args.max_videos < 2:
            raise ValueError(f"--max-videos {args.max_videos}; allowed 2 or more")
        real.ids = real.ids[: args.max_videos]
    judges, skipped = build_judges(args.metrics or DEFAULT_JUDGES, stand_in=args.stand_in, device=args.device)
    for name, why in skipped.items():
        print(f"judge {name} skipped: {why}")
    if not judges:
        raise ValueError("no judge can run (see the reasons above); fetch weights with `cmdbench weights fetch` "
                         "or pass --stand-in for offline random-weight stand-ins")
    rows, failed = sens.sensitivity(real, judges, levels=levels, split=args.split, seed=args.seed,
                                    progress=args.progress)
    for cell, why in failed.items():
        print(f"no value for {cell}: {why}")
    run_id = args.run_id or new_run_id("sensitivity")
    records = args.records or args.out_root / sens.RECORDS
    context = {"stand_in": args.stand_in, "split": args.split, "seed": args.seed, "frames": args.frames}
    meta = {"command": "sensitivity", "argv": sys.argv[1:], "real": str(args.real), "n_videos": len(real),
            "skipped_inputs": real.skipped, "skipped_judges": skipped, "failed_cells": failed,
            "levels": levels or {d: list(v.levels) for d, v in sens.DISTORTIONS.items()}}
    csv = sens.write_sensitivity_records(rows, records, run_id, real_name=real.name, device=args.device,
                                         context=context, meta=meta)
    paths = sens.render_sensitivity(load_records(csv), args.out_root / sens.TABLE, args.out_root / sens.FIGURE)
    print(f"records: {csv}")
    print(f"table: {paths[0]}\nfigure: {', '.join(str(p) for p in paths[1:])}")
    if args.stand_in:
        print(f"note: {sens.RANDOM_LABEL}")
    return 0
