"""What ``cmdbench evaluate`` scores: the videos of a folder or of a generator, with their captions and the
originals paired metrics (PSNR, SSIM, LPIPS) compare them with.

Every source yields :class:`Batch` es of uint8 ``(B, T, 3, H, W)`` videos. A video that one group of metrics
cannot take stays in the run for the others: a video without a caption is left out of the text metrics
(CLIPSIM) only, a video without an original out of the paired metrics only; each such exclusion is an
:class:`Exclusion` naming the file, the reason and the metrics. Under ``--policy strict`` they stop the run
before any work instead (as stray or unreadable files do).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TEXT = "text metrics"
PAIRED = "paired metrics"


@dataclass(frozen=True)
class Exclusion:
    """A video kept out of one group of metrics (``TEXT`` or ``PAIRED``), and why."""

    source: str
    reason: str
    metrics: str

    def line(self) -> str:
        return f"left out of the {self.metrics}: {self.source}: {self.reason}"


@dataclass
class Batch:
    """Videos uint8 ``(B, T, 3, H, W)``; ``prompts`` (B strings) or ``None``; ``references`` (the originals,
    same shape) or ``None``; ``ids`` of the videos; ``storage`` label of how they were stored."""

    videos: Any
    prompts: list[str] | None
    references: Any
    ids: list[str]
    storage: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    pair_error: str | None = None  # strict policy: why the paired metrics cannot take this video


def folder_identity(root: str | Path, name: str | None = None) -> dict[str, str]:
    """The record identity of a folder of videos: the sha256 of its resolved path (16 hex digits) and a name
    (``--name``, default the folder's name). ``generator`` is ``folder:<name>@<hash[:8]>``, so two models'
    ``samples/`` folders never share a table row or a comparison pair."""
    resolved = Path(root).expanduser().resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:16]
    label = name or resolved.name
    return {"generator": f"folder:{label}@{digest[:8]}", "checkpoint": str(resolved), "checkpoint_sha": digest,
            "name": label}


# --- folders ------------------------------------------------------------------------------------------------
def list_folder(root: str | Path, report: Any) -> list[Any]:
    """Every video under ``root`` as a ``VideoSource`` (id: relative path without extension, no condition);
    stray files and duplicate ids go through ``report``'s policy (named and skipped, or an error)."""
    from cmdbench.data.datasets import folder_sources

    return folder_sources(root, captions=False, report=report)[0]


def caption_file(root: Path, prompts: str | None) -> Path:
    """``--prompts`` or ``<root>/captions.csv``; an error saying how to give captions when neither exists."""
    from cmdbench.data.datasets import CAPTIONS_CSV

    if prompts:
        path = Path(prompts)
        if not path.is_file():
            raise FileNotFoundError(f"--prompts {path} does not exist")
        return path
    if (root / CAPTIONS_CSV).is_file():
        return root / CAPTIONS_CSV
    raise ValueError(f"text metrics (CLIPSIM) need a caption per video: pass --prompts CAPTIONS.csv (columns "
                     f"filename,caption; filename relative to {root}) or put {CAPTIONS_CSV} in the folder")


def attach_captions(sources: Sequence[Any], root: Path, path: Path, report: Any,
                    exclusions: list[Exclusion]) -> list[Any]:
    """Sources with their caption as ``condition``. A video without a caption row stays (``condition=None``)
    and is excluded from the text metrics only (``skip``) or stops the run (``strict``); rows naming no video
    and repeated or empty rows go through the policy."""
    from dataclasses import replace

    from cmdbench.data.datasets import read_captions_csv
    from cmdbench.data.policy import DatasetError, handle_bad

    captions = read_captions_csv(path, report)
    out, listed = [], set()
    for src in sources:
        rel = src.path.relative_to(root).as_posix()
        listed.add(rel)
        caption = captions.get(rel)
        if caption is None:
            reason = f"no caption row for {rel!r} in {path}"
            if report.policy == "strict":
                raise DatasetError(f"{src.path}: {reason}; the text metrics need one per video (--policy skip "
                                   "leaves such videos out of the text metrics only, named)")
            exclusions.append(Exclusion(str(src.path), reason, TEXT))
        out.append(replace(src, condition=caption))
    for name in sorted(set(captions) - listed):
        handle_bad(report, path, f"caption row for {name!r} names no video", "index")
    return out


def pair_references(sources: Sequence[Any], ref_root: Path, policy: str, exclusions: list[Exclusion]) -> dict[str, Path]:
    """``{video id: original's path}`` for the paired metrics, matching ids (relative path without extension)
    in ``ref_root``. Unpaired videos are excluded from the paired metrics (``skip``) or stop the run."""
    from cmdbench.data.policy import DataReport, DatasetError

    report = DataReport("references", policy)
    refs = {s.id: s.path for s in list_folder(ref_root, report)}
    missing = [s for s in sources if s.id not in refs]
    if missing and policy == "strict":
        names = ", ".join(str(s.path) for s in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DatasetError(f"{len(missing)} videos have no original of the same name under {ref_root} for the paired "
                           f"metrics (PSNR/SSIM/LPIPS): {names}. --policy skip leaves them out of those metrics only")
    for s in missing:
        exclusions.append(Exclusion(str(s.path), f"no original {s.id}.* under {ref_root}", PAIRED))
    for item in report.skipped:
        exclusions.append(Exclusion(item.source, f"not usable as an original: {item.reason}", PAIRED))
    return refs


@dataclass
class FolderSource:
    """The videos of ``--videos``: listed (policy), probed (frame counts, policy), captions attached when text
    metrics run, originals paired when paired metrics run. ``report`` holds the skipped files."""

    root: Path
    policy: str
    min_frames: int
    captions: Path | None = None
    references: Path | None = None
    exclusions: list[Exclusion] = field(default_factory=list)

    def __post_init__(self) -> None:
        from cmdbench.data.clips import ClipDataset, ClipSpec
        from cmdbench.data.policy import DataReport, check_policy

        self.root = Path(self.root)
        self.report = DataReport("folder", check_policy(self.policy))
        sources = list_folder(self.root, self.report)
        index_files = []
        if self.captions is not None:
            sources = attach_captions(sources, self.root, self.captions, self.report, self.exclusions)
            index_files.append(self.captions)
        spec = ClipSpec(num_frames=max(1, self.min_frames), size=None, order="listed")
        self.dataset = ClipDataset("folder", self.root, sources, spec, self.report, index_files=index_files)
        self.refs = (pair_references([s for s, _ in self.dataset.usable], self.references, self.policy,
                                     self.exclusions) if self.references is not None else {})

    def __len__(self) -> int:
        return len(self.dataset.usable)

    def batches(self) -> Iterator[Batch]:
        """One whole video at a time (folders hold videos of any length and size: never stacked)."""
        from cmdbench.data.policy import handle_bad
        from cmdbench.data.readers import UnreadableVideoError, read_frames
        from cmdbench.video import storage_of

        for src, n in self.dataset.usable:
            try:
                video = read_frames(src.path, range(n)).unsqueeze(0)  # (1, T, 3, H, W) uint8
            except UnreadableVideoError as err:
                handle_bad(self.report, src.path, str(err), "decode")
                continue
            reference, pair_error = self.read_reference(src, video) if src.id in self.refs else (None, None)
            prompts = [src.condition] if isinstance(src.condition, str) else None
            yield Batch(video, prompts, reference, [src.id], storage_of(src.path), {"source": str(src.path)},
                        pair_error)

    def read_reference(self, src: Any, video: Any) -> tuple[Any, str | None]:
        """``(original of src, None)`` when it has the video's frame count and size; else ``(None, reason)``:
        under ``skip`` the exclusion is recorded, under ``strict`` the reason fails the paired metrics."""
        from cmdbench.data.readers import UnreadableVideoError, count_frames, read_frames

        path = self.refs[src.id]
        try:
            ref = read_frames(path, range(count_frames(path))).unsqueeze(0)
        except UnreadableVideoError as err:
            reason = f"its original {path} is unreadable: {err}"
        else:
            if ref.shape == video.shape:
                return ref, None
            reason = (f"its original {path} has shape {tuple(ref.shape[1:])} (T, 3, H, W), the video "
                      f"{tuple(video.shape[1:])}: paired metrics compare frame by frame")
        if self.policy == "strict":
            return None, f"{src.path}: {reason} (--policy skip leaves such videos out of the paired metrics only)"
        self.exclusions.append(Exclusion(str(src.path), reason, PAIRED))
        return None, None


def source_sizes(paths: Sequence[Path]) -> list[str]:
    """Distinct ``HxW`` frame sizes of video sources (the stored size for files ``write_mp4`` padded), sorted."""
    from cmdbench.data.readers import UnreadableVideoError, read_frames
    from cmdbench.video import video_file_info

    sizes = set()
    for p in dict.fromkeys(Path(p) for p in paths):
        info = video_file_info(p) if p.is_file() and p.suffix.lower() != ".gif" else {"error": "not a file"}
        if "error" not in info:
            tag = info.get("tag")
            sizes.add((tag["height"], tag["width"]) if tag else (info["height"], info["width"]))
            continue
        try:
            sizes.add(tuple(read_frames(p, [0]).shape[-2:]))
        except UnreadableVideoError:
            continue
    return [f"{h}x{w}" for h, w in sorted(sizes)]
