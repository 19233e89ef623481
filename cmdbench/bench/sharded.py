"""Sharded, resumable feature statistics over many processes (torch.distributed / accelerate launch).

Work items ``0..N-1`` (clip indices or sample seeds' positions) are cut into fixed chunks of
``chunk_size``; rank ``r`` of ``W`` processes the chunks ``c`` with ``c % W == r``. Each finished chunk's
statistics are saved atomically as ``<work_dir>/<metric>/chunk_<c>.npz`` with a tag of everything
that defines them, so a preempted job resumes where it stopped (and refuses chunks of another
protocol). At the end every rank gathers the chunk statistics and merges them **in chunk order**, so
the result is bit-identical for any world size and any resume history (an all-reduce of per-rank sums
would add in a world-size-dependent order and differ in the last bits).

Features of one chunk are computed in fixed batches of its items, so they do not depend on the world
size either; generated samples depend only on their own seed (``cmdbench.seeding``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cmdbench.metrics.frechet import FeatureStats

# produce(indices) -> {metric name: float features (len(indices_done), D)}, plus the indices done
Producer = Callable[[Sequence[int]], tuple[Mapping[str, np.ndarray], Sequence[int]]]


class ShardMismatchError(ValueError):
    """A work directory holds partial statistics of a different protocol, extractor or dataset."""


@dataclass(frozen=True)
class Shard:
    """This process's place among ``world_size`` processes."""

    rank: int = 0
    world_size: int = 1

    @staticmethod
    def current() -> Shard:
        """From an initialised ``torch.distributed`` group, else a single process."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return Shard(dist.get_rank(), dist.get_world_size())
        return Shard()

    def owns(self, chunk: int) -> bool:
        return chunk % self.world_size == self.rank


def init_distributed_from_env(backend: str | None = None) -> Shard:
    """Initialise ``torch.distributed`` when launched by torchrun / ``accelerate launch`` (WORLD_SIZE > 1)."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return Shard.current()


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _gather(obj: Any) -> list[Any]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def chunk_items(num_items: int, chunk_size: int) -> list[range]:
    if num_items < 1 or chunk_size < 1:
        raise ValueError(f"need num_items >= 1 and chunk_size >= 1, got {num_items}, {chunk_size}")
    return [range(s, min(s + chunk_size, num_items)) for s in range(0, num_items, chunk_size)]


def _chunk_path(work_dir: Path, metric: str, c: int) -> Path:
    return work_dir / metric / f"chunk_{c:06d}.npz"


def _load_chunk(path: Path, tag: str) -> FeatureStats | None:
    if not path.is_file():
        return None
    stats = FeatureStats.load(path)
    if stats.metadata.get("tag") != tag:
        raise ShardMismatchError(
            f"{path} holds partial statistics of another run (tag {stats.metadata.get('tag')!r}, this run "
            f"{tag!r}: different protocol, extractor, dataset or settings); use a fresh --work-dir or delete it"
        )
    return stats


def sharded_stats(
    num_items: int,
    produce: Producer,
    dims: Mapping[str, int],
    *,
    tag: str,
    work_dir: str | Path | None = None,
    chunk_size: int = 256,
    shard: Shard | None = None,
    keep_features: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, FeatureStats], list[int]]:
    """Statistics of ``produce`` over items ``0..num_items-1``, sharded over processes and resumable.

    dims: metric name -> feature dimension (e.g. ``{"fvd": 400, "clipsim": 1}``).
    tag: a string naming everything that defines the features (protocol hash, extractor checksum,
        dataset manifest, generator and sampling settings); chunks with another tag are refused.
    work_dir: where chunk checkpoints go (``None``: no checkpoints, no resume).
    Returns the merged statistics per metric and the sorted item indices that entered them (items the
    producer skipped, e.g. undecodable clips, are absent: the caller records them).
    """
    shard = shard or Shard.current()
    chunks = chunk_items(num_items, chunk_size)
    wd = Path(work_dir) if work_dir is not None else None
    mine: dict[int, tuple[dict[str, FeatureStats], list[int]]] = {}
    for c, items in enumerate(chunks):
        if not shard.owns(c):
            continue
        loaded = None
        if wd is not None:
            parts = {m: _load_chunk(_chunk_path(wd, m, c), tag) for m in dims}
            if all(p is not None for p in parts.values()):
                done = [int(i) for i in next(iter(parts.values())).metadata["items"]]  # type: ignore[union-attr]
                loaded = ({m: p for m, p in parts.items() if p is not None}, done)
        if loaded is None:
            feats, done = produce(list(items))
            done = [int(i) for i in done]
            stats = {}
            for m, d in dims.items():
                s = FeatureStats(d, keep_features=keep_features, metadata={"tag": tag, "chunk": c, "items": done})
                x = np.asarray(feats[m], dtype=np.float64).reshape(len(done), d)
                if len(done):
                    s.update(x)
                stats[m] = s
                if wd is not None:
                    s.save(_chunk_path(wd, m, c))
            loaded = (stats, done)
        mine[c] = loaded
        if progress is not None:
            progress(c, len(chunks))
    _barrier()
    gathered = _gather({c: ({m: _to_plain(s) for m, s in st.items()}, done) for c, (st, done) in mine.items()})
    everything: dict[int, Any] = {}
    for part in gathered:
        everything.update(part)
    for c in sorted(set(range(len(chunks))) - set(everything)):  # another rank's chunks on a shared disk
        parts = {m: _load_chunk(_chunk_path(wd, m, c), tag) for m in dims} if wd is not None else {}
        if not parts or any(p is None for p in parts.values()):
            raise RuntimeError(f"chunk {c} of {len(chunks)} was computed by no rank (world size {shard.world_size})")
        done = [int(i) for i in next(iter(parts.values())).metadata["items"]]  # type: ignore[union-attr]
        everything[c] = ({m: _to_plain(p) for m, p in parts.items()}, done)  # type: ignore[arg-type]
    merged = {m: FeatureStats(d, keep_features=keep_features, metadata={"tag": tag}) for m, d in dims.items()}
    items_done: list[int] = []
    for c in range(len(chunks)):
        plain, done = everything[c]
        items_done.extend(done)
        for m in dims:
            merged[m].merge(_from_plain(plain[m], dims[m], keep_features))
    return merged, items_done


def _to_plain(s: FeatureStats) -> dict[str, Any]:
    return {"n": s.n, "sum": s.sum, "outer": s.outer, "features": s.bank.array() if s.bank is not None else None}


def _from_plain(p: Mapping[str, Any], dim: int, keep: bool) -> FeatureStats:
    s = FeatureStats(dim, keep_features=keep)
    s.n, s.sum, s.outer = int(p["n"]), np.asarray(p["sum"]), np.asarray(p["outer"])
    if keep and p["features"] is not None and len(p["features"]):
        s.bank.append(p["features"])  # type: ignore[union-attr]
    return s
