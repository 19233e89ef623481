"""A video listing packed into numpy buffers, for datasets that DataLoader workers fork.

A list of 10.7M :class:`VideoSource` objects (WebVid-10M) takes ~7 GB of Python objects, and every
forked DataLoader worker that reads an item writes that object's reference count, so the pages holding
the list get copied into each worker, one by one, until every worker owns a full copy (the problem of
pytorch/pytorch#13246). Packed as a few numpy arrays (UTF-8 bytes + offsets), the listing has no
per-item objects: the workers share its pages, and ``table[i]`` builds the ``VideoSource`` on demand.
Hand-written because the listing is small and flat; pyarrow would do it too but is not a dependency.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from cmdbench.data.clips import VideoSource

_NONE, _LABEL, _CAPTION = 0, 1, 2  # kinds of condition


def _pack(strings: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 strings -> (uint8 buffer, int64 offsets of length n + 1)."""
    encoded = [s.encode() for s in strings]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets


class SourceTable(Sequence[VideoSource]):
    """``VideoSource`` s of one listing, packed; paths are kept relative to ``root`` where they lie under it.

    ``table[i]`` -> :class:`VideoSource` (label conditions come back as ``int``, captions as ``str``);
    ``len(table)``; iteration; :meth:`digest` (sha256 of ids, root-relative paths and conditions).
    """

    def __init__(self, sources: Sequence[VideoSource], root: str | Path) -> None:
        self.root = Path(root)
        prefix = os.path.join(os.fspath(self.root), "")  # root + separator
        paths = [os.fspath(s.path) for s in sources]
        conditions = [s.condition for s in sources]
        for s, c in zip(sources, conditions, strict=True):
            if isinstance(c, bool) or not (c is None or isinstance(c, (int, str))):
                raise TypeError(f"{s.path}: condition {c!r} is neither a caption (str), a label (int) nor None")
        # a string prefix test instead of Path.relative_to: ~20x faster, which counts at millions of sources
        self._paths = _pack([p[len(prefix):] if p.startswith(prefix) else p for p in paths])
        self._ids = _pack([s.id for s in sources])
        self._captions = _pack([c if isinstance(c, str) else "" for c in conditions])
        self._kinds = np.array([_NONE if c is None else _LABEL if isinstance(c, int) else _CAPTION
                                for c in conditions], dtype=np.int8)
        self._labels = np.array([c if isinstance(c, int) else 0 for c in conditions], dtype=np.int64)

    def __len__(self) -> int:
        return len(self._kinds)

    @staticmethod
    def _get(packed: tuple[np.ndarray, np.ndarray], i: int) -> str:
        buffer, offsets = packed
        return buffer[offsets[i] : offsets[i + 1]].tobytes().decode()

    def __getitem__(self, i: int) -> VideoSource:  # type: ignore[override]
        if not -len(self) <= i < len(self):
            raise IndexError(f"source {i} is outside 0..{len(self) - 1}")
        i %= len(self)
        kind = self._kinds[i]
        condition: str | int | None = (None if kind == _NONE else int(self._labels[i]) if kind == _LABEL
                                       else self._get(self._captions, i))
        return VideoSource(self.root / self._get(self._paths, i), self._get(self._ids, i), condition)

    def __iter__(self) -> Iterator[VideoSource]:
        return (self[i] for i in range(len(self)))

    def digest(self) -> str:
        """sha256 of the packed listing (ids, root-relative paths, condition kinds, labels, captions)."""
        h = hashlib.sha256()
        for arr in (*self._ids, *self._paths, self._kinds, self._labels, *self._captions):
            h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()
