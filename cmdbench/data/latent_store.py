"""A sharded on-disk store of precomputed CMD latents: fp16 (content, motion) + condition + id per sample.

Engine: **WebDataset** (``webdataset`` 1.0.2). Shards are plain POSIX tar files written by
``wds.ShardWriter`` and parsed back by WebDataset's tar iterators (``tar_file_expander`` +
``group_by_keys``), so any WebDataset tool can read them. MosaicML Streaming was the other candidate;
its 0.13.0 release pins ``numpy<2.2``, which cmdbench's working set cannot take.

Layout of a store folder (one builder process per rank, no rank waits for another)::

    index-rank00000.json                  # rank 0's manifest, rewritten atomically after every shard
    shard-rank00000-000000.tar            # samples 0 .. S-1 of rank 0 (S = samples_per_shard)
    shard-rank00000-000001.tar            # ...
    index-rank00001.json, shard-rank00001-000000.tar, ...

A sample in a shard is three tar members sharing the key ``r<rank>-<n>`` (the n-th sample that rank
stored): ``content.npy`` (float16 ``(C, h, w)``), ``motion.npy`` (float16 ``(D, L, W_m)``) and
``meta.json`` (``{"condition": str | int | None, "id": str, "clip_key": dict | None}``).

The index lists the **complete** shards with their sample count, byte size and sha256, and says
whether the rank finished (``complete``). A shard is written to ``<name>.tmp``, fsynced, renamed,
and only then entered in the index (itself written to a temporary file and renamed), so a kill at
any moment leaves complete shards that the index vouches for plus at most one stray partial file.
Resuming keeps the listed shards, deletes the stray file and rewrites that shard from its first
sample: no sample is lost or stored twice (each shard holds exactly S samples except the last).

Reading (:func:`open_latent_loader`) streams shards back with shuffling and memory O(shard):
epoch ``e``'s global order visits the shards in a seeded order and each shard's samples in a seeded
order (both :class:`cmdbench.data.epoch_order.EpochOrder` bijections); rank ``r`` of ``W`` takes the
contiguous slice ``[r N / W, (r + 1) N / W)`` of that order, so within an epoch every sample is read
exactly once across ranks, and each rank opens about ``1 / W`` of the shards. Batch ``s`` of rank
``r`` is positions ``[s B, (s + 1) B)`` of that rank's stream of epochs: a pure function of
``(seed, s, r)`` (and the store, ``W``, ``B``), whatever the number of DataLoader workers, so a
resumed run gets exactly the same batches. ``start_step`` skips whole shards arithmetically from the
per-shard counts, without opening them. The builder consumes the training loader's already shuffled
order, so each shard is a random subset of the data and a batch drawn from one shard is as random as
one drawn from the whole set (true for ``cmdbench.data.train_clips``; a caller feeding a sorted
stream gets shard-correlated batches).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import count, islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from webdataset.tariterators import group_by_keys, tar_file_expander

from cmdbench.data.epoch_order import EpochOrder

FORMAT = "cmdbench-latent-store/1"
DEFAULT_SAMPLES_PER_SHARD = 1000  # ~47 MB at UCF-101's 3x64x64 + 8x16x64 fp16, ~92 MB at WebVid 512x1024
STORE_DTYPE = np.float16
_CACHED_SHARDS = 2  # a batch spans at most two consecutive shards of a rank's stream


class LatentStoreError(ValueError):
    """A latent store that cannot be used: missing, corrupt, unfinished or mismatched (the message names the
    file and what to do)."""


def index_name(rank: int) -> str:
    return f"index-rank{rank:05d}.json"


def shard_name(rank: int, shard: int) -> str:
    return f"shard-rank{rank:05d}-{shard:06d}.tar"


def _shard_pattern(rank: int) -> str:
    return f"shard-rank{rank:05d}-%06d.tar"  # ShardWriter's pattern


def _atomic_write_json(path: Path, obj: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, indent=1, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LatentStoreError(f"latent store index {path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LatentStoreError(f"latent store index {path} is not valid JSON ({err}); rebuild that rank") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise LatentStoreError(f"{path} is not a latent store index (format {FORMAT!r} expected)")
    return data


@dataclass(frozen=True)
class LatentStoreInfo:
    """What one rank's build left on disk. ``num_samples`` counts every sample the rank stored;
    ``resumed_samples`` those kept from an earlier, interrupted build."""

    root: Path
    rank: int
    world_size: int
    num_samples: int
    shards: tuple[str, ...]
    resumed_samples: int
    complete: bool


# --- Writing ------------------------------------------------------------------------------------------


class _HashingFile:
    """The file a shard is written to: counts and sha256-hashes the bytes on their way to disk."""

    def __init__(self, path: Path):
        self.name = str(path)
        self._file = open(path, "wb")  # noqa: SIM115 - closed by close(), called from the commit hook
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        if self._file.closed:  # a build abandoned mid-shard, being garbage collected: its .tmp is never used
            return 0
        self.sha256.update(data)
        self.size += len(data)
        return self._file.write(data)

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()


def _fp16(array: torch.Tensor | np.ndarray, what: str, sample_id: str) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().to("cpu", torch.float32).numpy()
    array = np.ascontiguousarray(array)
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"sample {sample_id!r}: {what} must be a float array, got {array.dtype}")
    if not np.isfinite(array).all():
        raise ValueError(f"sample {sample_id!r}: {what} has non-finite values")
    if array.size and np.abs(array).max() > np.finfo(STORE_DTYPE).max:
        raise ValueError(f"sample {sample_id!r}: {what} overflows float16 (|x| > 65504)")
    return array.astype(STORE_DTYPE)


def _json_condition(condition: Any, sample_id: str) -> str | int | None:
    if condition is None or isinstance(condition, str):
        return condition
    if isinstance(condition, (int, np.integer)) and not isinstance(condition, bool):
        return int(condition)
    if isinstance(condition, torch.Tensor) and condition.numel() == 1 and not condition.is_floating_point():
        return int(condition.item())
    raise TypeError(f"sample {sample_id!r}: condition {condition!r} is not a caption (str), class index (int) or None")


class LatentStoreWriter:
    """Appends one rank's samples to a store folder as WebDataset shards, resumable after a kill.

    ``identity``: JSON-able facts that define the store (key, seed, ...), the same for every rank; a resumed
    build must pass the same. ``target``: how many samples this rank is to store (``None``: not fixed), checked
    on resume; the ranks' targets may differ (an epoch rarely splits evenly). ``resume=False`` deletes this rank's earlier files first. Samples already stored by an earlier
    build are :attr:`stored`; the caller skips that many samples of its (deterministic) input, writes the
    rest with :meth:`write`, then calls :meth:`finish`. Nothing is committed on an exception: the partial
    shard stays a ``.tmp`` file that the next build deletes and rewrites.
    """

    def __init__(self, root: str | Path, *, rank: int, world_size: int,
                 samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD, identity: dict[str, Any] | None = None,
                 target: int | None = None, resume: bool = True):
        if not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size={world_size!r}: use a positive integer")
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank={rank!r}: use an integer in 0..{world_size - 1}")
        if not isinstance(samples_per_shard, int) or samples_per_shard < 1:
            raise ValueError(f"samples_per_shard={samples_per_shard!r}: use a positive integer")
        self.root = Path(root)
        self.rank, self.world_size, self.samples_per_shard = rank, world_size, samples_per_shard
        self.identity = json.loads(json.dumps(identity or {}, sort_keys=True, default=str))
        self.target = target
        self.root.mkdir(parents=True, exist_ok=True)
        self.index_path = self.root / index_name(rank)
        self.shards: list[dict[str, Any]] = []
        self.shapes: dict[str, list[int] | None] = {"content": None, "motion": None}
        self.complete = False
        if resume and self.index_path.is_file():
            self._resume(_read_json(self.index_path))
        keep = {s["file"] for s in self.shards}
        for stray in self.root.glob(f"shard-rank{rank:05d}-*"):  # partial shard (.tmp) or never indexed
            if stray.name not in keep:
                stray.unlink()
        if not resume:
            self.index_path.unlink(missing_ok=True)
        self.resumed_samples = self.stored
        self._written = 0
        self._writer: wds.ShardWriter | None = None
        self._open_files: dict[str, _HashingFile] = {}
        self._pending_replaced: list[Any] = []
        self._write_index()  # from the start, a reader sees "unfinished" rather than "missing"

    @property
    def stored(self) -> int:
        """Samples in complete (committed) shards."""
        return sum(s["count"] for s in self.shards)

    @property
    def num_samples(self) -> int:
        """Samples stored so far, including the open shard."""
        return self.resumed_samples + self._written

    def _resume(self, index: dict[str, Any]) -> None:
        mine = {"rank": self.rank, "world_size": self.world_size, "samples_per_shard": self.samples_per_shard,
                "identity": self.identity, "target_samples": self.target}
        diffs = [f"{k}={index.get(k)!r} (this build: {v!r})" for k, v in mine.items() if index.get(k) != v]
        if diffs:
            raise LatentStoreError(
                f"{self.index_path} belongs to a different build: {'; '.join(diffs)}. Resume with the same "
                "settings, build into a new folder, or pass resume=False to rebuild this rank"
            )
        for entry in index["shards"]:
            path = self.root / entry["file"]
            size = path.stat().st_size if path.is_file() else None
            if size != entry["bytes"]:
                found = "missing" if size is None else f"{size} bytes"
                raise LatentStoreError(
                    f"shard {path} is listed as complete in {self.index_path} with {entry['bytes']} bytes but is "
                    f"{found}; delete {self.index_path} (or pass resume=False) to rebuild rank {self.rank}"
                )
        self.shards = list(index["shards"])
        self.shapes = dict(index["shapes"])
        self.complete = bool(index["complete"])

    def _write_index(self) -> None:
        _atomic_write_json(self.index_path, {
            "format": FORMAT, "rank": self.rank, "world_size": self.world_size,
            "samples_per_shard": self.samples_per_shard, "identity": self.identity, "target_samples": self.target,
            "dtype": np.dtype(STORE_DTYPE).name, "shapes": self.shapes, "complete": self.complete,
            "num_samples": self.stored, "shards": self.shards,
        })

    # ShardWriter hooks: open a shard as <name>.tmp; after it closes, commit it under its name
    def _open(self, fname: str) -> _HashingFile:
        self._open_files[fname] = handle = _HashingFile(Path(fname + ".tmp"))
        return handle

    def _commit(self, fname: str) -> None:
        handle = self._open_files.pop(fname)
        handle.close()
        n = self._writer.count
        if n == 0:  # nothing was written to it
            Path(handle.name).unlink()
            return
        os.replace(handle.name, fname)
        self.shards.append({"file": Path(fname).name, "count": n, "bytes": handle.size,
                            "sha256": handle.sha256.hexdigest(), "replaced": self._pending_replaced})
        self._pending_replaced = []
        self._write_index()

    def note_replaced(self, items: Sequence[Any]) -> None:
        """Record inputs that failed and were replaced (e.g. ``SkippedItem``) with the shard being written."""
        for item in items:
            self._pending_replaced.append(dataclasses.asdict(item) if dataclasses.is_dataclass(item) else str(item))

    def write(self, *, content: torch.Tensor | np.ndarray, motion: torch.Tensor | np.ndarray,
              condition: str | int | None, sample_id: str, clip_key: dict[str, Any] | None = None) -> str:
        """Append one sample (content ``(C, h, w)``, motion ``(D, L, W_m)``, any float dtype; stored fp16).
        Returns its key in the store."""
        if self.complete:
            raise LatentStoreError(f"rank {self.rank} of {self.root} is already complete; build into a new folder")
        sample = {"content.npy": _fp16(content, "content", sample_id), "motion.npy": _fp16(motion, "motion", sample_id)}
        for name in ("content", "motion"):
            shape = list(sample[f"{name}.npy"].shape)
            if self.shapes[name] is None:
                self.shapes[name] = shape
            elif self.shapes[name] != shape:
                raise ValueError(f"sample {sample_id!r}: {name} shape {shape} differs from the store's {self.shapes[name]}")
        key = f"r{self.rank:05d}-{self.num_samples:010d}"
        sample["__key__"] = key
        sample["meta.json"] = {"condition": _json_condition(condition, sample_id), "id": str(sample_id),
                               "clip_key": clip_key}
        if self._writer is None:
            self._writer = wds.ShardWriter(
                str(self.root / _shard_pattern(self.rank)), maxcount=self.samples_per_shard, maxsize=float("inf"),
                start_shard=len(self.shards), opener=self._open, post=self._commit, verbose=0, mtime=0.0,
            )
        self._writer.write(sample)
        self._written += 1
        if self._writer.count == self.samples_per_shard:
            self._writer.finish()  # commit a full shard now, not when the next sample arrives
        return key

    def finish(self) -> LatentStoreInfo:
        """Commit the last (partial) shard and mark the rank complete."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.complete = True
        self._write_index()
        return self.info()

    def info(self) -> LatentStoreInfo:
        return LatentStoreInfo(self.root, self.rank, self.world_size, self.stored,
                               tuple(s["file"] for s in self.shards), self.resumed_samples, self.complete)


def stored_samples(root: str | Path, rank: int) -> int:
    """Samples rank ``rank`` has in complete shards of ``root`` (0 if it has no index yet): where a resumed
    build's input may start (e.g. a loader made with ``start_step = stored // batch_size``)."""
    path = Path(root) / index_name(rank)
    return sum(s["count"] for s in _read_json(path)["shards"]) if path.is_file() else 0


# --- Reading ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardEntry:
    path: Path
    count: int
    bytes: int
    sha256: str


@dataclass
class LatentBatch:
    """One training batch of stored latents (decoded to float32)."""

    content: torch.Tensor  # float32 (B, C, h, w)
    motion: torch.Tensor  # float32 (B, D, L, W_m)
    conditions: list[str | int | None]
    ids: list[str]  # the clip's source id (a video appears once per stored window)
    sample_keys: list[str]  # the sample's key in the store, unique: "r<rank>-<n>"
    clip_keys: list[dict[str, Any] | None]  # the key the clip was read with at build time (e.g. a ClipKey's fields)

    def pin_memory(self) -> LatentBatch:
        return dataclasses.replace(self, content=self.content.pin_memory(), motion=self.motion.pin_memory())


class LatentStore:
    """A finished store: every rank's index read and checked, every shard present with its indexed size."""

    def __init__(self, root: Path, shards: tuple[ShardEntry, ...], shapes: dict[str, list[int]],
                 identity: dict[str, Any], replaced: Sequence[dict[str, Any]] = ()):
        self.root, self.shards, self.shapes, self.identity = root, shards, shapes, identity
        self.replaced = list(replaced)  # every input clip the builds replaced (SkippedItem fields), rank by rank
        self.counts = [s.count for s in shards]
        self.num_samples = sum(self.counts)

    @classmethod
    def open(cls, root: str | Path, *, identity: dict[str, Any] | None = None) -> LatentStore:
        """Read and check ``root``'s indices. ``identity``: entries the build must have recorded (e.g. the key)."""
        root = Path(root)
        if not root.is_dir():
            raise LatentStoreError(f"latent store folder {root} does not exist")
        found = sorted(root.glob("index-rank*.json"))
        if not found:
            raise LatentStoreError(f"{root} has no index-rank*.json: not a latent store (build one with "
                                   "cmdbench.cmd.latents.build_latent_store)")
        first = _read_json(found[0])
        world = first["world_size"]
        expected = {root / index_name(r) for r in range(world)}
        stale = sorted(str(p) for p in set(found) - expected)
        if stale:
            raise LatentStoreError(f"{root} mixes builds: {stale} are not ranks 0..{world - 1} of the "
                                   f"world_size={world} build in {found[0]}; build into a clean folder")
        indices = [_read_json(root / index_name(r)) for r in range(world)]  # a missing rank names its file
        shards: list[ShardEntry] = []
        replaced: list[dict[str, Any]] = []
        shapes: dict[str, list[int]] | None = None
        for r, index in enumerate(indices):
            path = root / index_name(r)
            for k in ("world_size", "identity", "dtype"):
                if index[k] != first[k]:
                    raise LatentStoreError(f"{path}: {k}={index[k]!r} differs from {found[0]} ({first[k]!r}); "
                                           "the ranks come from different builds")
            if not index["complete"]:
                raise LatentStoreError(f"{path}: rank {r} did not finish its build ({index['num_samples']} samples "
                                       "in complete shards); run the build for that rank again to resume it")
            if index["shards"]:
                if shapes is None:
                    shapes = index["shapes"]
                elif index["shapes"] != shapes:
                    raise LatentStoreError(f"{path}: latent shapes {index['shapes']} differ from {shapes}")
            for entry in index["shards"]:
                shard = root / entry["file"]
                size = shard.stat().st_size if shard.is_file() else None
                if size != entry["bytes"]:
                    found_size = "missing" if size is None else f"{size} bytes (truncated or overwritten)"
                    raise LatentStoreError(f"shard {shard} listed in {path} with {entry['bytes']} bytes is "
                                           f"{found_size}; rebuild rank {r} (resume=False)")
                shards.append(ShardEntry(shard, entry["count"], entry["bytes"], entry["sha256"]))
                replaced += entry.get("replaced", [])
        for k, v in (identity or {}).items():
            have = first["identity"].get(k)
            if json.loads(json.dumps(v, default=str)) != have:
                raise LatentStoreError(f"{root} was built with {k}={have!r}, not {v!r}; build a store for it")
        if not shards:
            raise LatentStoreError(f"latent store {root} holds no samples")
        return cls(root, tuple(shards), shapes, first["identity"], replaced)

    def read_shard(self, shard: int) -> list[dict[str, Any]]:
        """Shard ``shard``'s raw samples in stored order (bytes, not decoded), checked against the index."""
        entry = self.shards[shard]
        try:
            data = entry.path.read_bytes()
        except OSError as err:
            raise LatentStoreError(f"cannot read shard {entry.path}: {err}") from err
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            raise LatentStoreError(f"shard {entry.path} is corrupt: its sha256 differs from its index's; "
                                   "rebuild that rank (resume=False)")
        try:
            files = tar_file_expander([{"url": str(entry.path), "stream": io.BytesIO(data)}])
            samples = list(group_by_keys(files))
        except Exception as err:  # tarfile / grouping errors, whatever their class
            raise LatentStoreError(f"shard {entry.path} is not a readable tar: {err}") from err
        if len(samples) != entry.count:
            raise LatentStoreError(f"shard {entry.path} holds {len(samples)} samples, its index says {entry.count}")
        return samples

    # -- the read order ----------------------------------------------------------------------------------
    def rank_range(self, rank: int, world_size: int) -> tuple[int, int]:
        """Rank ``rank``'s slice ``[lo, hi)`` of every epoch's global order."""
        return rank * self.num_samples // world_size, (rank + 1) * self.num_samples // world_size

    def _segments(self, seed: int, epoch: int, lo: int, hi: int) -> Iterator[tuple[int, int, int]]:
        """``(shard, start, stop)``: the part of epoch ``epoch``'s order inside ``[lo, hi)``, shard by shard
        (``start:stop`` indexes the shard's own seeded order)."""
        shard_order = EpochOrder(len(self.shards), seed, epoch)
        offset = 0
        for j in range(len(self.shards)):
            shard = shard_order(j)
            n = self.counts[shard]
            start, stop = max(lo - offset, 0), min(hi - offset, n)
            if start < stop:
                yield shard, start, stop
            offset += n
            if offset >= hi:
                return

    def _in_shard_order(self, seed: int, epoch: int, shard: int) -> EpochOrder:
        shard_seed = int(np.random.SeedSequence([seed, shard]).generate_state(1, np.uint64)[0])
        return EpochOrder(self.counts[shard], shard_seed, epoch)

    def positions(self, *, seed: int, rank: int, world_size: int, start: int = 0) -> Iterator[tuple[int, int]]:
        """``(shard, sample in shard)`` of rank ``rank``'s endless stream of epochs, from position ``start``.

        Whole shards before ``start`` are skipped from their counts, without being opened."""
        lo, hi = self.rank_range(rank, world_size)
        per_epoch = hi - lo
        epoch, skip = divmod(start, per_epoch)
        for e in count(epoch):
            for shard, a, b in self._segments(seed, e, lo, hi):
                if skip >= b - a:
                    skip -= b - a
                    continue
                order = self._in_shard_order(seed, e, shard)
                for j in range(a + skip, b):
                    yield shard, order(j)
                skip = 0


def wait_for_store(root: str | Path, *, world_size: int, poll_s: float = 5.0, timeout_s: float | None = None,
                   identity: dict[str, Any] | None = None) -> LatentStore:
    """Wait until every rank ``0 .. world_size - 1`` has finished its part of ``root``, by polling the index
    files (no collective: a long build cannot hit a process-group timeout), then open the store.
    ``timeout_s=None`` waits as long as it takes; on a timeout the error names the unfinished ranks."""
    root = Path(root)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        unfinished = [r for r in range(world_size) if not (root / index_name(r)).is_file()
                      or not _read_json(root / index_name(r)).get("complete")]
        if not unfinished:
            return LatentStore.open(root, identity=identity)
        if deadline is not None and time.monotonic() >= deadline:
            raise LatentStoreError(f"{root}: ranks {unfinished} did not finish their part within {timeout_s} s")
        time.sleep(poll_s)


def _decode(sample: dict[str, Any], path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    try:
        content = np.lib.format.read_array(io.BytesIO(sample["content.npy"]), allow_pickle=False)
        motion = np.lib.format.read_array(io.BytesIO(sample["motion.npy"]), allow_pickle=False)
        meta = json.loads(sample["meta.json"])
    except Exception as err:
        raise LatentStoreError(f"shard {path}: sample {sample.get('__key__')!r} cannot be decoded ({err!r})") from err
    return content, motion, meta


class LatentBatches(torch.utils.data.IterableDataset):
    """The endless batch stream of one rank (see the module docstring). Under a DataLoader with ``k``
    workers, worker ``w`` yields batches ``start_step + w, start_step + w + k, ...``, which the DataLoader
    returns in order, so the stream is the same for any number of workers."""

    def __init__(self, store: LatentStore, *, batch_size: int, seed: int, rank: int, world_size: int,
                 start_step: int = 0):
        for name, value, low in (("batch_size", batch_size, 1), ("world_size", world_size, 1),
                                 ("start_step", start_step, 0), ("seed", seed, 0)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name}={value!r}: use an integer >= {low}")
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank={rank!r}: use an integer in 0..{world_size - 1}")
        if store.num_samples < world_size:
            raise LatentStoreError(f"latent store {store.root} holds {store.num_samples} samples, fewer than "
                                   f"world_size={world_size}: some ranks would read nothing")
        self.store, self.batch_size, self.seed = store, batch_size, seed
        self.rank, self.world_size, self.start_step = rank, world_size, start_step

    def __iter__(self) -> Iterator[LatentBatch]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        stream = self.store.positions(seed=self.seed, rank=self.rank, world_size=self.world_size,
                                      start=self.start_step * self.batch_size)
        cache: OrderedDict[int, list[dict[str, Any]]] = OrderedDict()
        for k in count():
            picks = list(islice(stream, self.batch_size))
            if k % workers == worker:
                yield self._batch(picks, cache)

    def _batch(self, picks: list[tuple[int, int]], cache: OrderedDict[int, list[dict[str, Any]]]) -> LatentBatch:
        contents, motions, conditions, ids, keys, clip_keys = [], [], [], [], [], []
        for shard, i in picks:
            if shard not in cache:
                cache[shard] = self.store.read_shard(shard)
                while len(cache) > _CACHED_SHARDS:
                    cache.popitem(last=False)
            sample = cache[shard][i]
            content, motion, meta = _decode(sample, self.store.shards[shard].path)
            contents.append(torch.from_numpy(content))
            motions.append(torch.from_numpy(motion))
            conditions.append(meta["condition"])
            ids.append(meta["id"])
            keys.append(sample["__key__"])
            clip_keys.append(meta.get("clip_key"))
        return LatentBatch(torch.stack(contents).float(), torch.stack(motions).float(), conditions, ids, keys,
                           clip_keys)


def open_latent_loader(store_dir: str | Path, *, batch_size: int, seed: int, rank: int, world_size: int,
                       start_step: int = 0, num_workers: int = 0, pin_memory: bool = False,
                       identity: dict[str, Any] | None = None) -> Iterator[LatentBatch]:
    """Endless iterator of :class:`LatentBatch` for rank ``rank``; batch ``s`` is the same for a given
    ``(store, seed, s, rank, world_size, batch_size)`` whatever ``num_workers`` or restarts.

    ``identity``: entries the store must have been built with (e.g. ``{"key": latent_store_key(...)}``).
    """
    store = LatentStore.open(store_dir, identity=identity)
    batches = LatentBatches(store, batch_size=batch_size, seed=seed, rank=rank, world_size=world_size,
                            start_step=start_step)
    if num_workers == 0:
        return iter(batches)
    # its own generator: the DataLoader draws its workers' base seed from it, not from the global torch RNG, so
    # starting (or restarting) a loader leaves the training loop's random stream untouched (exact resume)
    loader = torch.utils.data.DataLoader(batches, batch_size=None, num_workers=num_workers,
                                         pin_memory=pin_memory, persistent_workers=False,
                                         generator=torch.Generator().manual_seed(seed))
    return iter(loader)


__all__ = [
    "DEFAULT_SAMPLES_PER_SHARD", "LatentBatch", "LatentBatches", "LatentStore", "LatentStoreError",
    "LatentStoreInfo", "LatentStoreWriter", "ShardEntry", "index_name", "open_latent_loader", "shard_name",
    "stored_samples", "wait_for_store",
]
