"""Dataset manifests: the list of files (relative path, size, mtime) behind a statistic -> sha256.

Reference statistics are content-addressed by this digest (plus protocol and extractor checksum), so
adding, removing, replacing or touching a file gives a new cache key. Sizes and mtimes stand in for
file contents: hashing terabytes of video on every run is not affordable.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ManifestEntry:
    path: str  # relative to the dataset root, POSIX separators
    size: int  # bytes (for a frame directory: sum over its files)
    mtime_ns: int  # for a frame directory: the newest file


@dataclass(frozen=True)
class Manifest:
    root: str
    entries: tuple[ManifestEntry, ...]

    @property
    def sha256(self) -> str:
        blob = json.dumps([[e.path, e.size, e.mtime_ns] for e in self.entries], separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def __len__(self) -> int:
        return len(self.entries)

    def to_dict(self) -> dict[str, object]:
        return {"root": self.root, "sha256": self.sha256, "num_files": len(self.entries),
                "total_bytes": sum(e.size for e in self.entries)}


def entry_for(path: Path, root: Path) -> ManifestEntry:
    """Size and mtime of a file, or summed over the files of a directory (one level)."""
    rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()
    if path.is_dir():
        stats = [p.stat() for p in sorted(path.iterdir()) if p.is_file()]
        return ManifestEntry(rel, sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0))
    st = path.stat()
    return ManifestEntry(rel, st.st_size, st.st_mtime_ns)


def build_manifest(paths: Iterable[Path], root: Path) -> Manifest:
    """Manifest of ``paths`` (sorted by relative path, duplicates collapsed) under ``root``."""
    root = Path(root)
    entries = {e.path: e for e in (entry_for(Path(p), root) for p in paths)}
    return Manifest(str(root), tuple(entries[k] for k in sorted(entries)))
