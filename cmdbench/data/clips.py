"""Seeded clip datasets over a list of video sources, and their DataLoader.

A dataset is built from an index (a list of :class:`VideoSource`: path, id, caption or label) in
three steps:

1. **probe** every source (open it, count frames; no decoding), applying the bad-input policy to
   unreadable and too-short sources;
2. **plan** the clips: usable videos ordered by a seeded hash of their id (or in listed order), then
   ``num_clips`` clips taken round-robin over that order (one per video when ``num_clips`` is None);
3. **read** clip ``i`` on demand: its window start is drawn from a numpy ``Generator`` seeded with
   ``(seed, digest(id), k)`` where ``k`` counts earlier clips of the same video. The same seed gives
   the same clips on any machine, any number of workers and any world size; removing one video does
   not move the clips of the others.

Frames are centre-cropped to the target aspect ratio and resized (bilinear, antialiased): for a
square target this is the centre square crop then resize that the CMD release uses for UCF-101.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from cmdbench.data.manifest import Manifest, build_manifest
from cmdbench.data.policy import DataReport, DatasetError, handle_bad
from cmdbench.data.readers import UnreadableVideoError, count_frames, read_frames
from cmdbench.video import resize_video

ORDERS = ("hashed", "listed")


@dataclass(frozen=True)
class ClipSpec:
    """How clips are cut from videos.

    num_frames: frames per clip (the paper: 16). stride: step between taken frames (1 = consecutive).
    size: ``(height, width)`` after a centre crop to that aspect ratio and a resize; ``None`` keeps the
        native frames (then every video must have the same size to be batched).
    seed: seeds the video order and every window start. num_clips: clips to draw (None: one per usable
        video; more than the usable videos reuses videos round-robin, counted in the report).
    order: ``"hashed"`` (seeded hash of the id: a class-balanced-in-expectation subset) or ``"listed"``
        (the index order, as StyleGAN-V takes "the first N videos").
    """

    num_frames: int = 16
    stride: int = 1
    size: tuple[int, int] | None = (64, 64)
    seed: int = 0
    num_clips: int | None = None
    order: str = "hashed"

    def __post_init__(self) -> None:
        if self.num_frames < 1 or self.stride < 1:
            raise ValueError(f"ClipSpec needs num_frames >= 1 and stride >= 1, got {self.num_frames}, {self.stride}")
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
            raise ValueError(f"ClipSpec.size={self.size!r}; allowed (height, width) with positive sides, or None")
        if self.num_clips is not None and self.num_clips < 1:
            raise ValueError(f"ClipSpec.num_clips={self.num_clips}; allowed a positive integer or None")
        if self.order not in ORDERS:
            raise ValueError(f"ClipSpec.order={self.order!r}; allowed {ORDERS}")
        if self.seed < 0:
            raise ValueError(f"ClipSpec.seed={self.seed}; allowed a non-negative integer")

    @property
    def span(self) -> int:
        """Frames a window covers in the source video."""
        return (self.num_frames - 1) * self.stride + 1


@dataclass(frozen=True)
class VideoSource:
    """One listed video: where it is, its stable id, and its caption (str) or class index (int)."""

    path: Path
    id: str
    condition: str | int | None = None


class ClipItem(NamedTuple):
    """One clip: uint8 video ``(T, 3, H, W)``, caption or label, id, and its position in the plan."""

    video: torch.Tensor
    condition: str | int | None
    id: str
    index: int


class SkippedClip(NamedTuple):
    """A planned clip whose frames could not be decoded (``skip`` policy only)."""

    source: str
    reason: str
    index: int


@dataclass(frozen=True)
class PlannedClip:
    source: VideoSource
    num_source_frames: int
    k: int  # earlier clips of the same video
    start: int  # first frame of the window


def id_digest(video_id: str) -> int:
    """A stable 63-bit integer of an id (sha256), the same on every machine and Python run."""
    return int.from_bytes(hashlib.sha256(video_id.encode()).digest()[:8], "big") >> 1


def window_start(seed: int, video_id: str, k: int, num_source_frames: int, span: int) -> int:
    """Seeded start frame of the ``k``-th clip of ``video_id``: uniform in ``[0, frames - span]``."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, id_digest(video_id), k]))
    return int(rng.integers(0, num_source_frames - span + 1))


def centre_crop(video: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The centre crop of ``(..., H, W)`` frames to the aspect ratio of ``size`` = (height, width) (a view)."""
    th, tw = size
    h, w = video.shape[-2:]
    if h * tw > w * th:  # too tall: crop rows
        ch, cw = max(1, round(w * th / tw)), w
    else:  # too wide: crop columns
        ch, cw = h, max(1, round(h * tw / th))
    top, left = (h - ch) // 2, (w - cw) // 2
    return video[..., top : top + ch, left : left + cw]


def crop_resize(video: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Centre-crop uint8 ``(T, 3, H, W)`` to the aspect ratio of ``size`` and resize to it (bilinear, AA)."""
    return resize_video(centre_crop(video, size).unsqueeze(0), tuple(size), antialias=True)[0]


class ClipDataset(Dataset):
    """Seeded clips of a list of video sources (see the module docstring).

    Items are :class:`ClipItem` (or :class:`SkippedClip` under ``skip`` when decoding fails).
    ``report`` holds the counts and every skipped source; ``manifest`` the files behind the clips.
    """

    def __init__(
        self,
        name: str,
        root: Path,
        sources: Sequence[VideoSource],
        clip: ClipSpec,
        report: DataReport,
        *,
        index_files: Sequence[Path] = (),
        probe_workers: int = 4,
    ) -> None:
        self.name = name
        self.root = Path(root)
        self.clip = clip
        self.report = report
        self.index_files = tuple(Path(p) for p in index_files)
        self.report.listed = max(self.report.listed, len(sources))
        self.usable = self._probe(sources, probe_workers)
        self.report.usable = len(self.usable)
        self.plan = self._plan()
        self.report.clips_planned = len(self.plan)

    # -- 1. probe ---------------------------------------------------------------------------------------
    def _probe(self, sources: Sequence[VideoSource], workers: int) -> list[tuple[VideoSource, int]]:
        def probe(src: VideoSource) -> int | str:
            try:
                return count_frames(src.path)
            except UnreadableVideoError as err:
                return str(err)

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            results = list(pool.map(probe, sources))
        usable = []
        span = self.clip.span
        for src, res in zip(sources, results, strict=True):  # in listed order, so 'strict' names the first bad file
            if isinstance(res, str):
                handle_bad(self.report, src.path, res, "probe")
            elif res < span:
                reason = (f"has {res} frames; a clip of {self.clip.num_frames} frames at stride "
                          f"{self.clip.stride} needs {span}")
                handle_bad(self.report, src.path, reason, "probe")
            else:
                usable.append((src, res))
        if not usable:
            raise DatasetError(f"{self.name}: no usable videos under {self.root} ({self.report.summary()})")
        return usable

    # -- 2. plan ----------------------------------------------------------------------------------------
    def _plan(self) -> list[PlannedClip]:
        order = list(self.usable)
        if self.clip.order == "hashed":
            seed = self.clip.seed
            order.sort(key=lambda u: hashlib.sha256(f"{seed}:{u[0].id}".encode()).digest())
        n = self.clip.num_clips or len(order)
        plan = []
        for i in range(n):
            src, frames = order[i % len(order)]
            k = i // len(order)
            plan.append(PlannedClip(src, frames, k, window_start(self.clip.seed, src.id, k, frames, self.clip.span)))
        self.report.clips_per_video_max = -(-n // len(order))
        return plan

    # -- 3. read ----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, index: int) -> ClipItem | SkippedClip:
        p = self.plan[index]
        indices = range(p.start, p.start + self.clip.span, self.clip.stride)
        try:
            video = read_frames(p.source.path, indices)  # (T, 3, H, W) uint8
        except UnreadableVideoError as err:
            if self.report.policy == "strict":
                handle_bad(self.report, p.source.path, str(err), "decode")
            return SkippedClip(str(p.source.path), str(err), index)
        if self.clip.size is not None:
            video = crop_resize(video, self.clip.size)
        return ClipItem(video, p.source.condition, p.source.id, index)

    @property
    def manifest(self) -> Manifest:
        """Files behind the planned clips plus the index files (split lists, CSVs)."""
        paths = {p.source.path for p in self.plan} | set(self.index_files)
        return build_manifest(sorted(paths), self.root)

    def describe(self) -> dict[str, Any]:
        """Everything that defines these clips, for cache keys and records."""
        from dataclasses import asdict

        return {"dataset": self.name, "clip": asdict(self.clip), "manifest_sha256": self.manifest.sha256,
                "num_clips": len(self.plan)}


# --- DataLoader -----------------------------------------------------------------------------------------


@dataclass
class ClipBatch:
    """A collated batch: ``videos`` uint8 ``(B, T, 3, H, W)`` (None when every clip was skipped)."""

    videos: torch.Tensor | None
    conditions: list[str | int | None]
    ids: list[str]
    indices: list[int]
    skipped: list[SkippedClip]


def collate_clips(items: Sequence[ClipItem | SkippedClip]) -> ClipBatch:
    good = [it for it in items if isinstance(it, ClipItem)]
    skipped = [it for it in items if isinstance(it, SkippedClip)]
    videos = None
    if good:
        shapes = {tuple(it.video.shape) for it in good}
        if len(shapes) != 1:
            detail = ", ".join(f"{it.id}: {tuple(it.video.shape)}" for it in good[:4])
            raise DatasetError(f"clips of different sizes cannot be batched ({detail}); set a clip size")
        videos = torch.stack([it.video for it in good])  # (B, T, 3, H, W)
    return ClipBatch(videos, [it.condition for it in good], [it.id for it in good],
                     [it.index for it in good], skipped)


def shard_indices(n: int, rank: int = 0, world_size: int = 1) -> list[int]:
    """Indices ``i`` in ``range(n)`` with ``i % world_size == rank``."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
    return list(range(rank, n, world_size))


def make_loader(
    dataset: ClipDataset,
    *,
    batch_size: int = 8,
    num_workers: int = 2,
    indices: Sequence[int] | None = None,
) -> DataLoader:
    """A DataLoader over ``indices`` of ``dataset`` (all by default), in order, collating to ClipBatch."""
    subset = Subset(dataset, list(range(len(dataset)) if indices is None else indices))
    return DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      collate_fn=collate_clips)


def iter_clips(dataset: ClipDataset, loader: DataLoader) -> Iterator[ClipBatch]:
    """Iterate ``loader``, recording skipped clips and delivered counts in ``dataset.report``."""
    for batch in loader:
        for s in batch.skipped:
            dataset.report.skip(s.source, s.reason, "decode")
        dataset.report.clips_delivered += len(batch.ids)
        yield batch
