"""Sharded, resumable feature statistics over many processes (torch.distributed / accelerate launch).

Work items ``0..N-1`` (clip indices or sample seeds' positions) are cut into chunks of ``chunk_size``;
rank ``r`` of ``W`` processes the chunks ``c`` with ``c % W == r``. Each finished piece of work is saved
atomically as a *unit* ``<work_dir>/<metric>/unit_<first>_<last>_<count>.npz`` holding its statistics,
the items it attempted and the items that entered (skipped ones are recorded by the producer), with a tag
of everything that defines them, so a preempted job resumes where it stopped and refuses units of another
protocol.

Resume keys on **item indices, not chunk numbers**: a rerun scans the units on disk (every rank's view,
gathered, so shared and per-node disks both work), treats their items as done, and computes only the
items no unit covers, cut by the *current* chunk grid. A rerun with another ``chunk_size`` (or world
size) therefore neither repeats nor loses an item; the final check refuses statistics in which an item
would count twice or not at all.

At the end every rank gathers the units and merges them in item order. With ``keep_features`` (the
default) the merged statistics are rebuilt from the per-item features sorted by item index, in fixed
blocks, so they are bit-identical for any world size, chunk size and resume history (sums accumulated
in another grouping would differ in the last bits). Without kept features, units are merged in order of
their first item (identical for an identical unit layout; equal up to rounding otherwise).

Features of one chunk are computed in fixed batches of its items, so they do not depend on the world
size; generated samples depend only on their own seed (``cmdbench.seeding``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cmdbench.metrics.frechet import FeatureStats

# produce(indices) -> ({metric name: float features (len(indices_done), D)}, the indices done) or, to name
# why the others were skipped, ({...}, done, {skipped index: reason}); reasons are kept with the unit.
Producer = Callable[[Sequence[int]], tuple[Any, ...]]


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


# Rows per block when merged statistics are rebuilt from kept features (any fixed value gives results
# independent of the chunking; 256 keeps each block's Σxxᵀ update a single BLAS call).
MERGE_BLOCK = 256


@dataclass
class _Unit:
    """Finished work: statistics per metric over ``done`` (a subset of the ``planned`` items, in order);
    ``skipped``: every planned item not done, with the producer's reason."""

    planned: tuple[int, ...]
    done: tuple[int, ...]
    stats: dict[str, Any]  # metric -> FeatureStats, or its plain form when gathered
    skipped: dict[int, str]

    @property
    def name(self) -> str:
        return unit_name(self.planned)


def unit_name(planned: Sequence[int]) -> str:
    return f"unit_{planned[0]:09d}_{planned[-1]:09d}_{len(planned)}.npz"


def _unit_path(work_dir: Path, metric: str, name: str) -> Path:
    return work_dir / metric / name


def _load_stats(path: Path, tag: str) -> FeatureStats:
    stats = FeatureStats.load(path)
    if stats.metadata.get("tag") != tag:
        raise ShardMismatchError(
            f"{path} holds partial statistics of another run (tag {stats.metadata.get('tag')!r}, this run "
            f"{tag!r}: different protocol, extractor, dataset or settings); use a fresh --work-dir or delete it"
        )
    return stats


def _scan_units(work_dir: Path | None, metrics: Sequence[str], tag: str) -> dict[str, tuple[int, ...]]:
    """Names -> planned items of the units complete on this process's disk (a file for every metric).

    A unit written for some metrics only (the job died between two saves) is not complete and is ignored;
    the items it planned are computed again and its files are overwritten or left unused.
    """
    if work_dir is None:
        return {}
    names = None
    for m in metrics:
        found = {p.name for p in (work_dir / m).glob("unit_*.npz")} if (work_dir / m).is_dir() else set()
        names = found if names is None else names & found
    units = {}
    for name in sorted(names or ()):
        meta = _load_stats(_unit_path(work_dir, metrics[0], name), tag).metadata
        units[name] = tuple(int(i) for i in meta["planned"])
    return units


def _load_unit(work_dir: Path, dims: Mapping[str, int], name: str, tag: str) -> _Unit:
    stats = {m: _load_stats(_unit_path(work_dir, m, name), tag) for m in dims}
    meta = stats[next(iter(dims))].metadata
    return _Unit(tuple(int(i) for i in meta["planned"]), tuple(int(i) for i in meta["items"]), stats,
                 {int(i): str(r) for i, r in meta.get("skipped", {}).items()})


def _check_disjoint(units: Mapping[str, Sequence[int]], num_items: int) -> dict[int, str]:
    """Item -> the unit that planned it; overlapping units or items out of range raise."""
    owner: dict[int, str] = {}
    for name, planned in sorted(units.items()):
        for i in planned:
            if not 0 <= i < num_items:
                raise ShardMismatchError(f"unit {name} plans item {i}, outside 0..{num_items - 1}; wrong work dir?")
            if i in owner:
                raise ShardMismatchError(
                    f"units {owner[i]} and {name} both hold item {i}: merging them would count it twice. The work "
                    "dir holds two inconsistent runs; delete one of the units (or use a fresh --work-dir)"
                )
            owner[i] = name
    return owner


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
        dataset manifest, generator and sampling settings); units with another tag are refused.
    work_dir: where unit checkpoints go (``None``: no checkpoints, no resume). Any ``chunk_size`` may
        resume the units of any other: work is keyed by item index.
    Returns the merged statistics per metric and the sorted item indices that entered them. Items the
    producer skipped (e.g. undecodable clips) are absent, and named with their reason in each statistic's
    ``metadata["skipped"]`` (``{str(index): reason}``), resumed units included. Every item is attempted
    exactly once; an item counted twice or missing raises.
    """
    shard = shard or Shard.current()
    chunks = chunk_items(num_items, chunk_size)
    metrics = list(dims)
    wd = Path(work_dir) if work_dir is not None else None
    # 1. What is done already: every rank's view of the disk, gathered (shared or per-node disks).
    views = _gather(_scan_units(wd, metrics, tag))
    _barrier()  # nobody writes before every rank has scanned
    known: dict[str, tuple[int, ...]] = {}
    loader_rank: dict[str, int] = {}  # a unit is loaded by the lowest rank that sees it
    for rank, view in enumerate(views):
        for name, planned in view.items():
            known.setdefault(name, planned)
            loader_rank.setdefault(name, rank)
    covered = _check_disjoint(known, num_items)
    distributed = len(views) > 1  # else this process's view is the only one: it loads all it sees
    mine = [_load_unit(wd, dims, name, tag) for name in sorted(known)
            if wd is not None and (not distributed or loader_rank[name] == shard.rank)]
    # 2. The rest, cut by the current chunk grid; this rank's chunks only.
    for c, items in enumerate(chunks):
        if not shard.owns(c):
            continue
        todo = [i for i in items if i not in covered]
        if todo:
            feats, done, *why = produce(todo)
            done = [int(i) for i in done]
            extra = sorted(set(done) - set(todo))
            if extra or len(set(done)) != len(done):
                raise RuntimeError(f"producer returned items {extra or done} it was not asked for, or twice")
            reasons = {int(i): str(r) for i, r in (why[0] if why else {}).items()}
            skipped = {i: reasons.get(i, "skipped by the producer (no reason given)") for i in todo if i not in done}
            unit = _Unit(tuple(todo), tuple(done), {}, skipped)
            for m, d in dims.items():
                s = FeatureStats(d, keep_features=keep_features, metadata={
                    "tag": tag, "planned": list(todo), "items": done, "skipped": {str(i): r for i, r in skipped.items()}})
                x = np.asarray(feats[m], dtype=np.float64).reshape(len(done), d)
                if len(done):
                    s.update(x)
                unit.stats[m] = s
                if wd is not None:
                    s.save(_unit_path(wd, m, unit.name))
            mine.append(unit)
        if progress is not None:
            progress(c, len(chunks))
    _barrier()
    # 3. Everything, from every rank (and from a shared disk for ranks that ran as separate jobs).
    everything: dict[str, _Unit] = {}
    for part in _gather([_plain_unit(u) for u in mine]):
        for u in part:
            everything.setdefault(u.name, u)
    missing = sorted(set(range(num_items)) - {i for u in everything.values() for i in u.planned})
    if missing and wd is not None:  # another rank's units on a shared disk (ranks run as separate jobs)
        for name, planned in _scan_units(wd, metrics, tag).items():
            if name not in everything and set(planned) & set(missing):
                everything[name] = _plain_unit(_load_unit(wd, dims, name, tag))
        missing = sorted(set(range(num_items)) - {i for u in everything.values() for i in u.planned})
    if missing:
        lost = sorted({c for c, items in enumerate(chunks) if set(items) & set(missing)})
        raise RuntimeError(f"chunks {lost[:8]} of {len(chunks)} (items {missing[:8]}...) were computed by no rank "
                           f"(world size {shard.world_size})")
    _check_disjoint({n: u.planned for n, u in everything.items()}, num_items)  # nothing counted twice
    return _merge(list(everything.values()), dims, tag, keep_features)


def _plain_unit(u: _Unit) -> _Unit:
    return _Unit(u.planned, u.done, {m: _to_plain(s) for m, s in u.stats.items()}, u.skipped)


def _merge(units: list[_Unit], dims: Mapping[str, int], tag: str, keep: bool) -> tuple[dict[str, FeatureStats], list[int]]:
    """Merge units in item order; with kept features, rebuilt from the rows sorted by item (see module doc).

    Each merged statistic's ``metadata["skipped"]`` maps every skipped item (str index) to its reason.
    """
    units = sorted(units, key=lambda u: u.planned[0])
    skipped = {str(i): r for u in units for i, r in sorted(u.skipped.items())}
    done = [i for u in units for i in u.done]
    order = np.argsort(np.asarray(done, dtype=np.int64), kind="stable")
    merged = {}
    for m, d in dims.items():
        plain = [(u.stats[m], len(u.done)) for u in units]
        for p, k in plain:
            if int(p["n"]) != k:
                raise RuntimeError(f"a unit of {m} holds n={p['n']} for {k} items: corrupt checkpoint")
        out = FeatureStats(d, keep_features=keep, metadata={"tag": tag, "skipped": skipped})
        if keep:
            rows = np.concatenate([np.asarray(p["features"]).reshape(-1, d) if p["features"] is not None
                                   else np.zeros((0, d)) for p, _ in plain])
            if len(rows) != len(done):
                raise RuntimeError(f"kept features of {m}: {len(rows)} rows for {len(done)} items")
            rows = rows[order]
            for start in range(0, len(rows), MERGE_BLOCK):
                out.update(rows[start : start + MERGE_BLOCK])
        else:
            for p, _ in plain:
                out.merge(_from_plain(p, d, False))
        merged[m] = out
    return merged, sorted(done)


def _to_plain(s: Any) -> dict[str, Any]:
    if isinstance(s, dict):
        return s
    return {"n": s.n, "sum": s.sum, "outer": s.outer, "features": s.bank.array() if s.bank is not None else None}


def _from_plain(p: Mapping[str, Any], dim: int, keep: bool) -> FeatureStats:
    s = FeatureStats(dim, keep_features=keep)
    s.n, s.sum, s.outer = int(p["n"]), np.asarray(p["sum"]), np.asarray(p["outer"])
    if keep and p["features"] is not None and len(p["features"]):
        s.bank.append(p["features"])  # type: ignore[union-attr]
    return s
