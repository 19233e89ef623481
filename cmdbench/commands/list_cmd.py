"""``cmdbench list [WHAT]``: registered generators, metrics, datasets and reproductions.

Registering imports every generator module (torch, diffusers: seconds). The listing (names, descriptions,
and the lines of plugins that failed to load) is therefore cached, keyed on everything it can depend on
without importing anything: the size and modification time of every file of the registering packages
(``cmdbench``, ``baselines`` and each third-party entry point's top-level package), the entry points of the
``cmdbench.generators`` group with their distributions' versions, ``sys.path``, the Python and cmdbench
versions and the ``CMDBENCH_*`` environment. Any edit, install or removal changes the key, so a cached
listing is always the one a fresh import would print; ``--refresh`` rebuilds it anyway. The cache lives in
``$CMDBENCH_CACHE/listing/`` (default ``~/.cache/cmdbench``) and is used only when nothing has been
registered in this process yet (a library caller that registered its own names gets a live listing).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

KINDS = ("generators", "metrics", "datasets", "reproductions")
LISTING_FORMAT = "cmdbench-listing-v2"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "list", help="list registered generators, metrics, datasets and reproductions",
        description="List what is registered, with one-line descriptions (cached; see --refresh).",
        epilog="examples:\n  cmdbench list\n  cmdbench list generators\n  cmdbench list metrics --refresh",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("what", nargs="?", choices=(*KINDS, "all"), default="all")
    parser.add_argument("--refresh", action="store_true",
                        help="import every registering module again instead of reading the cached listing")
    parser.set_defaults(func=run)
    return parser


# --- the cache key ----------------------------------------------------------------------------------------
def _tree_state(location: str | os.PathLike[str]) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime_ns) of every file under a package folder (or of one module file)."""
    root = Path(location)
    if root.is_file():
        st = root.stat()
        return [(root.name, st.st_size, st.st_mtime_ns)]
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
        for f in sorted(filenames):
            p = Path(dirpath) / f
            try:
                st = p.stat()
            except OSError:
                continue
            out.append((p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    return out


def _package_state(top_level: str) -> Any:
    """File states of a top-level package or module, found without importing it (``find_spec`` of a
    top-level name only searches ``sys.path``)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(top_level)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    locations = list(spec.submodule_search_locations or []) or ([spec.origin] if spec.origin else [])
    return [(str(loc), _tree_state(loc)) for loc in locations if loc and os.path.exists(loc)]


def listing_key() -> str:
    """sha256 of everything the listing depends on (module docstring); computed without importing plugins."""
    from importlib import metadata

    from cmdbench import __version__
    from cmdbench.bench.reproduce import REPRODUCTION_MODULES
    from cmdbench.registry import ENTRY_POINT_GROUP, PLUGIN_MODULES

    tops = {m.split(".")[0] for m in (*PLUGIN_MODULES, *REPRODUCTION_MODULES)}
    eps = []
    for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.name, e.value)):
        dist = (ep.dist.metadata["Name"], ep.dist.version) if ep.dist is not None else None
        eps.append((ep.name, ep.value, dist))
        tops.add(ep.value.split(":")[0].split(".")[0].strip())
    state = {
        "format": LISTING_FORMAT, "cmdbench": __version__, "python": sys.version, "executable": sys.executable,
        "sys_path": sys.path, "entry_points": eps, "packages": {t: _package_state(t) for t in sorted(tops)},
        "env": sorted((k, v) for k, v in os.environ.items() if k.startswith("CMDBENCH_")),
    }
    return hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()


def cache_path(key: str) -> Path:
    from cmdbench.weights import cache_dir

    return cache_dir() / "listing" / f"{key[:32]}.json"


# --- the listing ------------------------------------------------------------------------------------------
class _Tee(io.TextIOBase):
    """Writes to a stream and keeps a copy (the plugin-failure lines, replayed from the cache)."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.copy = stream, io.StringIO()

    def write(self, text: str) -> int:
        self.copy.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()


def live_listing() -> dict[str, Any]:
    """Import every registering module (and entry point) and return names, descriptions and what was printed
    on stderr while loading (skipped plugins)."""
    from cmdbench.bench.reproduce import load_reproductions
    from cmdbench.registry import DATASETS, GENERATORS, METRICS, load_plugins

    tee = _Tee(sys.stderr)
    with contextlib.redirect_stderr(tee):
        load_plugins()
        reproductions = load_reproductions()
    registries = {"generators": GENERATORS, "metrics": METRICS, "datasets": DATASETS, "reproductions": reproductions}
    kinds = {kind: {"count": len(reg), "entries": [[e.name, e.description] for e in reg.entries()]}
             for kind, reg in registries.items()}
    return {"format": LISTING_FORMAT, "kinds": kinds, "stderr": tee.copy.getvalue()}


def nothing_registered_yet() -> bool:
    from cmdbench import registry
    from cmdbench.bench.reproduce import REPRODUCTIONS

    return not registry._loaded and not any(len(r) or r.schemes() for r in (*registry.REGISTRIES, REPRODUCTIONS))


def cached_listing(refresh: bool = False) -> tuple[dict[str, Any], bool]:
    """The listing and whether it came from the cache (written atomically after a live listing)."""
    if not nothing_registered_yet():
        return live_listing(), False
    path = cache_path(listing_key())
    if not refresh and path.is_file():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = None
        if isinstance(data, dict) and data.get("format") == LISTING_FORMAT:
            sys.stderr.write(data.get("stderr", ""))
            return data, True
    data = live_listing()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(path)
    except OSError:
        pass  # a read-only cache only costs speed
    return data, False


def run(args: argparse.Namespace) -> int:
    data, _ = cached_listing(refresh=args.refresh)
    for kind in KINDS if args.what == "all" else (args.what,):
        entries = data["kinds"][kind]["entries"]
        print(f"{kind} ({data['kinds'][kind]['count']}):")
        width = max((len(name) for name, _ in entries), default=0)
        for name, description in entries:
            print(f"  {name.ljust(width)}  {description}")
        if not entries:
            print("  (none)")
    return 0
