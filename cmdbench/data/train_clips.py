"""Training clips: a fresh random window of a video on every access, fed by a resumable DataLoader.

The evaluation datasets (:mod:`cmdbench.data.clips`) plan one fixed clip per video after probing every
file; training needs the opposite: many different windows of each video over the epochs, no probe
before step 0, and batches that are a pure function of ``(seed, step, rank)`` so a resumed run gets
exactly the batches it would have got.

* **Order.** An epoch has ``len(sources) * clips_per_video`` clips. The clip at global ``position``
  of ``epoch`` is slot ``EpochOrder(n, seed, epoch)(position)`` (an O(1) seeded bijection,
  :mod:`cmdbench.data.epoch_order`), i.e. video ``slot % num_videos``: every listed video is visited
  exactly ``clips_per_video`` times per epoch, in a fresh order each epoch.
* **Window.** The video is opened when the clip is read (its container gives the frame count and
  fps for free; nothing is probed at construction). The window start is uniform over the valid
  starts, drawn from ``numpy.random.SeedSequence([seed, epoch, position, rank, attempt])``, so two
  epochs see different windows of one video and the same key always gives the same clip, in any
  process and for any number of DataLoader workers.
* **Frame step.** ``stride`` takes every ``stride``-th frame; or ``fps`` asks for a target frame rate
  and the stride of each video is ``max(1, floor(video_fps / fps + 0.5))`` (nearest integer, halves
  up, never below 1: a video slower than the target is taken at stride 1, not up-sampled; e.g. 25 fps
  at a target of 8 gives stride 3, i.e. 8.33 fps).
* **Bad clips.** A clip that cannot be read (unreadable or corrupt file, too short for the window,
  no frame rate in ``fps`` mode) stops the run under ``strict`` with :class:`DatasetError` naming the
  file and the reason. Under ``skip`` it is replaced by a seeded re-draw (attempt ``a`` draws a video
  uniformly from ``SeedSequence([seed, epoch, position, rank, a])``), and every failed candidate is
  carried in :attr:`TrainClip.replaced` (and :attr:`TrainBatch.replaced`) for the run's log and
  records. After ``max_replacements`` failed re-draws the read stops with an error listing them.
* **Loader.** :func:`make_train_loader` is a ``torch.utils.data.DataLoader`` (worker processes,
  prefetch, pinned memory) over an infinite batch sampler that starts at ``start_step`` in O(1):
  batch ``s`` of rank ``r`` holds global positions ``(s * world_size + r) * batch_size + j``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from cmdbench.data.clips import VideoSource, centre_crop
from cmdbench.data.datasets import folder_sources, ucf101_sources, webvid_sources
from cmdbench.data.epoch_order import EpochOrder
from cmdbench.data.policy import DataReport, DatasetError, SkippedItem, check_policy
from cmdbench.data.readers import SourceInfo, UnreadableVideoError, read_chosen_frames
from cmdbench.data.source_table import SourceTable

ORDER_ALGORITHM = "feistel6-splitmix64-cyclewalk/v1"  # in describe(): a change of algorithm changes cache keys


@dataclass(frozen=True)
class TrainClipSpec:
    """How training clips are cut (see the module docstring).

    num_frames: frames per clip. size: ``(H, W)`` after a centre crop to that aspect and a resize
    (None keeps native frames; then every video must have one size to be batched). stride: frame
    step; or fps: a target frame rate (stride derived per video; then stride must stay 1).
    clips_per_video: visits of each video per epoch. seed: order and windows. policy: ``strict`` or
    ``skip``. max_replacements: re-draws tried for one clip under ``skip`` before stopping.
    """

    num_frames: int = 16
    size: tuple[int, int] | None = (64, 64)
    stride: int = 1
    fps: float | None = None
    clips_per_video: int = 1
    seed: int = 0
    policy: str = "strict"
    max_replacements: int = 32

    def __post_init__(self) -> None:
        if self.num_frames < 1 or self.stride < 1:
            raise ValueError(f"TrainClipSpec needs num_frames >= 1 and stride >= 1, got {self.num_frames}, "
                             f"{self.stride}")
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
            raise ValueError(f"TrainClipSpec.size={self.size!r}; allowed (height, width) with positive sides, or None")
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"TrainClipSpec.fps={self.fps!r}; allowed a positive frame rate or None")
        if self.fps is not None and self.stride != 1:
            raise ValueError(f"TrainClipSpec sets both stride={self.stride} and fps={self.fps}; set one "
                             "(with fps the stride of each video is derived from its own frame rate)")
        if self.clips_per_video < 1:
            raise ValueError(f"TrainClipSpec.clips_per_video={self.clips_per_video}; allowed a positive integer")
        if self.seed < 0:
            raise ValueError(f"TrainClipSpec.seed={self.seed}; allowed a non-negative integer")
        if self.max_replacements < 0:
            raise ValueError(f"TrainClipSpec.max_replacements={self.max_replacements}; allowed >= 0")
        check_policy(self.policy)

    def stride_for(self, info: SourceInfo, path: Path) -> int:
        """Frame step for a video with ``info`` (``stride``, or derived from its fps and ``fps``)."""
        if self.fps is None:
            return self.stride
        if info.fps is None:
            raise UnreadableVideoError(f"{path} has no frame rate (frame directory or GIF without frame "
                                       f"durations); a target fps={self.fps} needs one: use stride instead")
        return max(1, math.floor(info.fps / self.fps + 0.5))


@dataclass(frozen=True)
class ClipKey:
    """What the sampler yields and the dataset reads: ``position`` in epoch ``epoch``'s global order
    (``0 .. len(dataset) - 1``), read by process ``rank``."""

    epoch: int
    position: int
    rank: int


class TrainClip(NamedTuple):
    """One clip: uint8 ``video`` ``(T, 3, H, W)``, caption or 0-based label, video id, its key, and the
    clips that failed (``skip`` policy) and were replaced by this one."""

    video: torch.Tensor
    condition: str | int | None
    id: str
    key: ClipKey
    replaced: tuple[SkippedItem, ...]


@dataclass
class TrainBatch:
    """A collated batch: ``videos`` uint8 ``(B, T, 3, H, W)`` and, per clip, condition, id and key;
    ``replaced``: every failed clip behind this batch (source path, reason, stage ``"decode"``)."""

    videos: torch.Tensor
    conditions: list[str | int | None]
    ids: list[str]
    keys: list[ClipKey]
    replaced: list[SkippedItem]

    def pin_memory(self) -> TrainBatch:
        """Called by the DataLoader's pin-memory thread (``pin_memory=True``)."""
        self.videos = self.videos.pin_memory()
        return self


class TrainClips(Dataset):
    """Random windows of listed videos, one per access (see the module docstring).

    ``len()`` = clips per epoch = ``len(sources) * spec.clips_per_video``; ``dataset[ClipKey]`` ->
    :class:`TrainClip`. Construction only stores the listing: no file is opened before a read.
    ``report`` holds what the listing skipped (stage ``"index"``); clips replaced at read time travel
    with the clips (:attr:`TrainClip.replaced`), since they happen in worker processes.
    """

    def __init__(self, name: str, root: str | Path, sources: Sequence[VideoSource], spec: TrainClipSpec, *,
                 report: DataReport | None = None, index_files: Sequence[Path] = ()) -> None:
        self.name = name
        self.root = Path(root)
        self.sources = SourceTable(sources, self.root)  # packed: forked workers share it (see source_table)
        self.spec = spec
        self.index_files = tuple(Path(p) for p in index_files)
        self.report = report or DataReport(name, spec.policy)
        if not self.sources:
            raise DatasetError(f"{name}: no videos listed under {self.root} ({self.report.summary()})")
        self.report.listed = max(self.report.listed, len(self.sources))
        self.report.usable = len(self.sources)  # listed and indexable; decode failures are per clip
        self.report.clips_planned = len(self)
        self.report.clips_per_video_max = spec.clips_per_video
        self._order: EpochOrder | None = None
        self._bad: dict[int, str] = {}  # video index -> why it cannot give a clip (this process's memo)
        self._digest: str | None = None

    def __len__(self) -> int:
        return len(self.sources) * self.spec.clips_per_video

    def video_at(self, epoch: int, position: int) -> int:
        """Index into ``sources`` of the clip at ``position`` of ``epoch`` (before any replacement)."""
        if self._order is None or self._order.epoch != epoch:
            self._order = EpochOrder(len(self), self.spec.seed, epoch)
        return self._order(position) % len(self.sources)

    def __getitem__(self, key: ClipKey) -> TrainClip:
        if not isinstance(key, ClipKey):
            raise TypeError(f"TrainClips is indexed by ClipKey(epoch, position, rank), got {key!r}; "
                            "read it through make_train_loader")
        if not 0 <= key.position < len(self) or key.epoch < 0 or key.rank < 0:
            raise IndexError(f"{key} is outside this dataset (positions 0..{len(self) - 1}, epoch and rank >= 0)")
        spec = self.spec
        video_index = self.video_at(key.epoch, key.position)
        replaced: list[SkippedItem] = []
        for attempt in range(spec.max_replacements + 1):
            rng = np.random.default_rng(np.random.SeedSequence([spec.seed, key.epoch, key.position, key.rank,
                                                                attempt]))
            if attempt > 0:
                video_index = int(rng.integers(len(self.sources)))  # seeded re-draw of the video
            source = self.sources[video_index]
            try:
                video = self._read(video_index, rng)
            except UnreadableVideoError as err:
                reason = str(err)
                if spec.policy == "strict":
                    raise DatasetError(
                        f"{self.name}: bad input {source.path}: {reason} (clip {key}; policy 'strict'; the "
                        "'skip' policy replaces bad clips and names each one in the run's records)") from None
                replaced.append(SkippedItem(str(source.path), reason, "decode"))
                continue
            return TrainClip(video, source.condition, source.id, key, tuple(replaced))
        listed = "; ".join(f"{s.source}: {s.reason}" for s in replaced[:5])
        raise DatasetError(f"{self.name}: clip {key} and its {spec.max_replacements} seeded replacements all "
                           f"failed ({listed}{'; ...' if len(replaced) > 5 else ''}); the dataset looks mostly "
                           "unreadable: check the files, or raise max_replacements")

    def _read(self, video_index: int, rng: np.random.Generator) -> torch.Tensor:
        """Open video ``video_index`` once, draw the window from its frame count, decode, crop, resize."""
        if video_index in self._bad:  # already failed in this process: same outcome, no second open
            raise UnreadableVideoError(self._bad[video_index])
        source, spec = self.sources[video_index], self.spec

        def window(info: SourceInfo) -> range:
            stride = spec.stride_for(info, source.path)
            span = (spec.num_frames - 1) * stride + 1
            if info.num_frames < span:
                rate = f" (target {spec.fps} fps from {info.fps:g} fps)" if spec.fps is not None else ""
                raise UnreadableVideoError(f"{source.path} has {info.num_frames} frames; a clip of "
                                           f"{spec.num_frames} frames at stride {stride}{rate} needs {span}")
            start = int(rng.integers(0, info.num_frames - span + 1))
            return range(start, start + span, stride)

        try:
            video, _ = read_chosen_frames(source.path, window)  # (T, 3, H, W) uint8
        except UnreadableVideoError as err:
            self._bad[video_index] = str(err)
            raise
        if spec.size is not None:
            video = crop_resize_uint8(video, spec.size)
        return video.contiguous()

    def describe(self) -> dict[str, Any]:
        """JSON-able identity for cache keys and records: name, spec, order algorithm, listing digest
        (:meth:`SourceTable.digest`: ids, paths relative to the root, conditions) and the sha256 of each
        index file."""
        if self._digest is None:
            self._digest = self.sources.digest()
        spec = asdict(self.spec)
        spec["size"] = list(self.spec.size) if self.spec.size is not None else None
        return {"dataset": self.name, "spec": spec, "order": ORDER_ALGORITHM, "num_videos": len(self.sources),
                "clips_per_epoch": len(self), "index_sha256": self._digest,
                "index_files": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in self.index_files}}


def crop_resize_uint8(video: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """:func:`cmdbench.data.clips.crop_resize` (centre crop to the aspect of ``size``, bilinear antialiased
    resize) resampled on uint8 channels-last frames: torch's vectorised uint8 kernel, 3-7x faster than the
    float path on CPU, within 1 grey level of it (tested). uint8 ``(T, 3, H, W)`` -> ``(T, 3, *size)``."""
    th, tw = size
    cropped = centre_crop(video, size)  # the same box as crop_resize
    if tuple(cropped.shape[-2:]) == (th, tw):
        return cropped
    return F.interpolate(cropped.contiguous(memory_format=torch.channels_last), size=(th, tw), mode="bilinear",
                         align_corners=False, antialias=True)


def collate_train_clips(items: Sequence[TrainClip]) -> TrainBatch:
    """Stack :class:`TrainClip` s into a :class:`TrainBatch` (clips must share one shape)."""
    shapes = {tuple(it.video.shape) for it in items}
    if len(shapes) != 1:
        detail = ", ".join(f"{it.id}: {tuple(it.video.shape)}" for it in items[:4])
        raise DatasetError(f"clips of different sizes cannot be batched ({detail}); set TrainClipSpec.size")
    return TrainBatch(torch.stack([it.video for it in items]), [it.condition for it in items],
                      [it.id for it in items], [it.key for it in items],
                      [s for it in items for s in it.replaced])


class TrainBatchSampler(Sampler[list[ClipKey]]):
    """Infinite batches of :class:`ClipKey`, from ``start_step`` on (O(1) to start anywhere).

    Step ``s`` of ``rank`` holds global positions ``g = (s * world_size + rank) * batch_size + j``,
    ``j < batch_size``, read as ``ClipKey(g // clips_per_epoch, g % clips_per_epoch, rank)``: the ranks
    split every epoch without overlap, and a batch is a function of ``(step, rank)`` only.
    """

    def __init__(self, clips_per_epoch: int, *, batch_size: int, rank: int = 0, world_size: int = 1,
                 start_step: int = 0) -> None:
        if clips_per_epoch < 1 or batch_size < 1:
            raise ValueError(f"need clips_per_epoch >= 1 and batch_size >= 1, got {clips_per_epoch}, {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        if start_step < 0:
            raise ValueError(f"start_step={start_step}; allowed >= 0")
        self.clips_per_epoch, self.batch_size = clips_per_epoch, batch_size
        self.rank, self.world_size, self.start_step = rank, world_size, start_step

    def keys_for_step(self, step: int) -> list[ClipKey]:
        first = (step * self.world_size + self.rank) * self.batch_size
        return [ClipKey(*divmod(g, self.clips_per_epoch), self.rank) for g in range(first, first + self.batch_size)]

    def __iter__(self) -> Iterator[list[ClipKey]]:
        step = self.start_step
        while True:
            yield self.keys_for_step(step)
            step += 1


def make_train_loader(dataset: TrainClips, *, batch_size: int, seed: int, rank: int, world_size: int,
                      start_step: int = 0, num_workers: int = 2, prefetch_factor: int | None = 2,
                      pin_memory: bool = False) -> DataLoader:
    """An infinite DataLoader of :class:`TrainBatch` for ``rank`` of ``world_size``, from ``start_step``.

    The batch of ``(step, rank)`` is the same for any ``num_workers`` and across restarts (each clip is
    a pure function of its key). ``seed`` must be the dataset's ``spec.seed`` (it decides the order
    and the windows; checked so a run cannot believe it changed them). ``prefetch_factor``: batches
    each worker prepares ahead (ignored without workers).
    """
    if seed != dataset.spec.seed:
        raise ValueError(f"make_train_loader(seed={seed}) differs from the dataset's TrainClipSpec.seed="
                         f"{dataset.spec.seed}, which decides the order and the windows; build the dataset "
                         "with the run's seed")
    if num_workers < 0:
        raise ValueError(f"num_workers={num_workers}; allowed >= 0")
    sampler = TrainBatchSampler(len(dataset), batch_size=batch_size, rank=rank, world_size=world_size,
                                start_step=start_step)
    # its own generator: the DataLoader draws its workers' base seed from it, not from the global torch RNG,
    # so starting (or restarting) a loader leaves the training loop's random stream untouched
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate_train_clips,
                      pin_memory=pin_memory, prefetch_factor=prefetch_factor if num_workers > 0 else None,
                      generator=torch.Generator().manual_seed(seed))


class ClipBatchSource:
    """A training run's batch source over :class:`TrainClips`: ``source(start_step=, rank=, world_size=,
    batch_size=)`` -> :func:`make_train_loader` with this source's worker settings (the loop of
    ``cmdbench.cmd.training`` calls it at the resumed micro-step). ``len()`` and ``describe()`` are the
    dataset's: one epoch, and the identity a latent store built from it is keyed by."""

    def __init__(self, dataset: TrainClips, *, num_workers: int = 2, prefetch_factor: int | None = 2,
                 pin_memory: bool = False) -> None:
        self.dataset, self.num_workers = dataset, num_workers
        self.prefetch_factor, self.pin_memory = prefetch_factor, pin_memory

    def __len__(self) -> int:
        return len(self.dataset)

    def describe(self) -> dict[str, Any]:
        return self.dataset.describe()

    def __call__(self, *, start_step: int, rank: int, world_size: int, batch_size: int) -> DataLoader:
        return make_train_loader(self.dataset, batch_size=batch_size, seed=self.dataset.spec.seed, rank=rank,
                                 world_size=world_size, start_step=start_step, num_workers=self.num_workers,
                                 prefetch_factor=self.prefetch_factor, pin_memory=self.pin_memory)


# --- the listed datasets --------------------------------------------------------------------------------

LISTING_OPTIONS: dict[str, tuple[str, ...]] = {
    "folder": ("captions",),
    "ucf101": ("split", "fold"),
    "webvid": ("csv", "csv_path", "video_root", "limit", "check_files"),
}


def build_train_clips(dataset: str, root: str | Path, spec: TrainClipSpec, **options: Any) -> TrainClips:
    """Training clips of a listed dataset, without opening any video.

    ``dataset``: ``folder`` (options ``captions``), ``ucf101`` (``split``, ``fold``) or ``webvid``
    (``csv``/``csv_path``, ``video_root``, ``limit``, ``check_files``: False skips the existence check
    of every listed file). Unknown options raise ``ValueError`` listing the allowed ones.
    """
    if dataset not in LISTING_OPTIONS:
        raise ValueError(f"training dataset {dataset!r} is not known; allowed {sorted(LISTING_OPTIONS)}")
    allowed = LISTING_OPTIONS[dataset]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        spec_fields = sorted(set(unknown) & {f.name for f in fields(TrainClipSpec)})
        hint = (f"; {', '.join(spec_fields)} {'is a clip setting' if len(spec_fields) == 1 else 'are clip settings'}"
                " (TrainClipSpec), not a listing option") if spec_fields else ""
        raise ValueError(f"{dataset} training data: unknown option(s) {unknown}; allowed {list(allowed)}{hint}")
    if dataset == "folder":
        sources, report, index_files = folder_sources(root, policy=spec.policy, **options)
        return TrainClips("folder", root, sources, spec, report=report, index_files=index_files)
    if dataset == "ucf101":
        sources, report, index_files = ucf101_sources(root, policy=spec.policy, **options)
        return TrainClips("ucf101", root, sources, spec, report=report, index_files=index_files)
    if "csv" in options:
        if "csv_path" in options:
            raise ValueError("webvid training data: pass csv or csv_path, not both")
        options["csv_path"] = options.pop("csv")
    sources, report, index_files, video_root = webvid_sources(root, policy=spec.policy, **options)
    return TrainClips("webvid", video_root, sources, spec, report=report, index_files=index_files)
