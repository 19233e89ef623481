"""``cmdbench weights {list,fetch,verify,path} [NAME...]``: the known weight files and their checksums."""

from __future__ import annotations

import argparse
import sys

from cmdbench import weights


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "weights",
        help="list, download, verify or locate the weight files metrics need (I3D, CLIP)",
        description=(
            "Known weight files. Cache: $CMDBENCH_CACHE or ~/.cache/cmdbench; a local copy can be named "
            "with CMDBENCH_WEIGHTS_<NAME>=path (e.g. CMDBENCH_WEIGHTS_CLIP_VIT_B32)."
        ),
    )
    parser.add_argument("action", choices=("list", "fetch", "verify", "path"))
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"default: all ({', '.join(weights.KNOWN)})")
    parser.add_argument("--url", action="append", dest="urls", metavar="URL",
                        help="fetch: download from this URL instead of the known ones (repeatable, tried in order)")
    parser.add_argument("--force", action="store_true", help="fetch: download even when a valid file is present")
    parser.add_argument("--trust", action="store_true",
                        help="verify: accept the file's current sha256 for this name (recorded in the cache)")
    parser.add_argument("--check", action="store_true", help="list: hash present files (slow for large files)")
    parser.add_argument("--no-progress", action="store_true", help="fetch: no progress bar")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    names = args.names or list(weights.KNOWN)
    try:
        for name in names:
            weights.entry(name)
        if args.action == "list":
            return _list(names, check=args.check)
        if args.action == "path":
            for name in names:
                print(weights.path(name))
            return 0
        if args.action == "fetch":
            for name in names:
                dest = weights.fetch(name, args.urls, progress=not args.no_progress, force=args.force)
                print(f"{name}: {dest}")
            return 0
        return _verify(names, trust=args.trust)
    except weights.WeightsError as err:
        print(f"cmdbench weights {args.action}: error: {err}", file=sys.stderr)
        return 1


def _verify(names: list[str], *, trust: bool) -> int:
    failed = 0
    for name in names:
        if trust:
            digest = weights.trust(name)
            print(f"{name}: trusted {weights.path(name)} sha256 {digest}")
            continue
        try:
            result = weights.verify(name)
        except weights.WeightsError as err:
            print(f"{name}: FAILED\n{err}", file=sys.stderr)
            failed += 1
            continue
        print(f"{name}: {result.status} {result.path} sha256 {result.sha256}")
    return 1 if failed else 0


def _list(names: list[str], *, check: bool) -> int:
    from tabulate import tabulate

    rows = []
    for name in names:
        wf = weights.entry(name)
        p = weights.path(name)
        rows.append({
            "name": name,
            "present": "present" if p.is_file() else "missing",
            "path": str(p),
            "sha256": weights.status(name, compute=check) if p.is_file() else
            ("pinned" if wf.sha256 else "unknown"),
            "url": wf.urls[0] if wf.urls else "(manual)",
        })
    print(tabulate(rows, headers="keys"))
    print(f"\ncache: {weights.cache_dir()}  (set ${weights.CACHE_ENV} to move it)")
    return 0
