"""The evaluation datasets, registered in :data:`cmdbench.registry.DATASETS`.

* ``ucf101``: official layout (``UCF-101/<Class>/v_*.avi`` and ``ucfTrainTestlist/{classInd,
  trainlist01,testlist01}.txt``); train split 1 by default, as the paper evaluates on it; labels are
  0-based (``classInd`` number - 1); centre square crop then resize (64 by default).
* ``webvid``: the published CSV (``videoid, name (caption), page_dir, ...``) with videos at
  ``<video_root>/<page_dir>/<videoid>.mp4``.
* ``msrvtt``: captions of the test split only (CLIPSIM needs no videos): a :class:`CaptionSet`.
* ``folder``: a directory tree of video files / GIFs / frame directories, with an optional captions CSV
  (``filename,caption``).

Every video factory returns a :class:`~cmdbench.data.clips.ClipDataset` (seeded clips, bad-input policy,
report and manifest). Bad input (unreadable, empty, non-video, too short, missing captions, duplicate
ids, unlistable directories) stops a ``strict`` run with a message naming the file, or is recorded and
skipped under ``skip``; malformed index files (split lists, CSV headers) always stop.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cmdbench.data.clips import ClipDataset, ClipSpec, VideoSource
from cmdbench.data.manifest import Manifest, build_manifest
from cmdbench.data.policy import DataReport, DatasetError, check_policy, handle_bad
from cmdbench.data.prompts import Caption, msrvtt_test_captions, read_webvid_csv
from cmdbench.data.readers import GIF_EXTENSIONS, IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from cmdbench.registry import DATASETS

UCF101_SPLITS = ("train", "test")


# --- UCF-101 ------------------------------------------------------------------------------------------


def _find(root: Path, candidates: Sequence[str], what: str, hint: str) -> Path:
    for c in candidates:
        p = root / c
        if p.exists():
            return p
    looked = ", ".join(str(root / c) for c in candidates)
    raise DatasetError(f"{what} not found; looked at {looked}. {hint}")


def read_class_index(path: Path) -> list[str]:
    """``classInd.txt`` ("1 ApplyEyeMakeup" per line) -> class names in 0-based index order."""
    names: dict[int, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise DatasetError(f"{path}:{n}: expected '<number> <ClassName>', got {line!r}")
        idx = int(parts[0])
        if idx in names:
            raise DatasetError(f"{path}:{n}: class number {idx} appears twice")
        names[idx] = parts[1]
    if sorted(names) != list(range(1, len(names) + 1)):
        raise DatasetError(f"{path}: class numbers must run 1..N without gaps, got {sorted(names)[:5]}...")
    if len(set(names.values())) != len(names):
        raise DatasetError(f"{path}: a class name appears twice")
    return [names[i] for i in range(1, len(names) + 1)]


def _case_insensitive_index(video_dir: Path, report: DataReport) -> dict[str, Path]:
    """lower-cased ``Class/file`` -> real path, so 'HandstandPushups/v_HandStandPushups_*' resolves."""
    index: dict[str, Path] = {}
    try:
        class_dirs = sorted(p for p in video_dir.iterdir() if p.is_dir())
    except OSError as err:
        raise DatasetError(f"UCF-101 video directory {video_dir} cannot be listed: {err.strerror or err}") from None
    for d in class_dirs:
        try:
            files = list(os.scandir(d))
        except OSError as err:
            handle_bad(report, d, f"directory cannot be listed: {err.strerror or err}", "index")
            continue
        for f in files:
            index[f"{d.name}/{f.name}".lower()] = Path(f.path)
    return index


def ucf101_sources(root: str | Path, *, split: str = "train", fold: int = 1, policy: str = "strict",
                   report: DataReport | None = None) -> tuple[list[VideoSource], DataReport, list[Path]]:
    """The listed videos of a UCF-101 split as :class:`VideoSource` (condition = 0-based label)."""
    root = Path(root)
    report = report or DataReport("ucf101", check_policy(policy))
    if split not in UCF101_SPLITS or fold not in (1, 2, 3):
        raise ValueError(f"UCF-101 split={split!r} fold={fold}; allowed split {UCF101_SPLITS}, fold 1..3")
    if not root.is_dir():
        raise DatasetError(f"UCF-101 root {root} is not a directory; pass --ucf101-root or CMDBENCH_UCF101_ROOT")
    hint = "Unpack UCF101TrainTestSplits-RecognitionTask.zip under the root (gives ucfTrainTestlist/)."
    class_file = _find(root, ["ucfTrainTestlist/classInd.txt", "classInd.txt"], "classInd.txt", hint)
    split_file = class_file.parent / f"{split}list0{fold}.txt"
    if not split_file.is_file():
        raise DatasetError(f"UCF-101 split file {split_file} does not exist. {hint}")
    video_dir = _find(root, ["UCF-101", "UCF101", "videos", "."], "UCF-101 video directory",
                      "Unpack UCF101.rar under the root (gives UCF-101/<Class>/v_*.avi).")
    classes = read_class_index(class_file)
    lower_to_label = {c.lower(): i for i, c in enumerate(classes)}
    files = _case_insensitive_index(video_dir, report)
    sources, seen = [], set()
    for n, line in enumerate(split_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        rel = parts[0]
        where = f"{split_file}:{n}"
        report.listed += 1
        cls = rel.split("/")[0].lower()
        if cls not in lower_to_label:
            handle_bad(report, where, f"class folder {rel.split('/')[0]!r} is not in {class_file.name}", "index")
            continue
        label = lower_to_label[cls]
        if len(parts) > 1 and (not parts[1].isdigit() or int(parts[1]) - 1 != label):
            handle_bad(report, where, f"label {parts[1]!r} disagrees with class folder of {rel}", "index")
            continue
        vid = Path(rel).stem
        if vid.lower() in seen:
            handle_bad(report, where, f"duplicate video id {vid!r}", "index")
            continue
        path = files.get(rel.lower())
        if path is None:
            handle_bad(report, video_dir / rel, "listed in the split file but missing on disk", "index")
            continue
        seen.add(vid.lower())
        sources.append(VideoSource(path, vid, label))
    return sources, report, [class_file, split_file]


@DATASETS.register("ucf101", description="UCF-101 official splits (train split 1 for evaluation), labels 0..100")
def ucf101(root: str | Path, *, split: str = "train", fold: int = 1, clip: ClipSpec | None = None,
           policy: str = "strict", probe_workers: int = 4) -> ClipDataset:
    clip = clip or ClipSpec(size=(64, 64))
    sources, report, index_files = ucf101_sources(root, split=split, fold=fold, policy=policy)
    return ClipDataset("ucf101", Path(root), sources, clip, report, index_files=index_files,
                       probe_workers=probe_workers)


# --- WebVid-10M ---------------------------------------------------------------------------------------

WEBVID_VAL_CSVS = ("results_2M_val.csv", "results_10M_val.csv", "val.csv")


def find_webvid_csv(root: Path) -> Path:
    hint = "pass --webvid-csv (the validation CSV of WebVid, e.g. results_2M_val.csv)"
    for name in WEBVID_VAL_CSVS:
        if (root / name).is_file():
            return root / name
    found = sorted(root.glob("*val*.csv"))
    if len(found) == 1:
        return found[0]
    raise DatasetError(f"no WebVid validation CSV under {root} (looked for {WEBVID_VAL_CSVS} and *val*.csv: "
                       f"{[p.name for p in found]}); {hint}")


def webvid_sources(root: str | Path, *, csv_path: str | Path | None = None, video_root: str | Path | None = None,
                   policy: str = "strict", limit: int | None = None, check_files: bool = True,
                   report: DataReport | None = None) -> tuple[list[VideoSource], DataReport, list[Path], Path]:
    """The listed WebVid videos (condition = caption), the report, the index files and the video root.

    ``check_files``: stat every listed file and treat missing ones as bad input now (True, as the
    evaluation does); False lists without touching the video files (a WebVid-10M index lists 10.7M
    of them), and a missing file then surfaces when it is read.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"WebVid root {root} is not a directory; pass --webvid-root or CMDBENCH_WEBVID_ROOT")
    report = report or DataReport("webvid", check_policy(policy))
    csv_file = Path(csv_path) if csv_path else find_webvid_csv(root)
    rows = read_webvid_csv(csv_file, report, limit=limit)
    vroot = Path(video_root) if video_root else root
    sources = []
    for row in rows:
        path = vroot / row["page_dir"] / f"{row['videoid']}.mp4"
        if check_files and not path.is_file():
            handle_bad(report, path, "listed in the CSV but missing on disk", "index")
            continue
        sources.append(VideoSource(path, row["videoid"], row["name"]))
    return sources, report, [csv_file], vroot


@DATASETS.register("webvid", description="WebVid-10M CSV (videoid,name,page_dir) + <page_dir>/<videoid>.mp4")
def webvid(root: str | Path, *, csv_path: str | Path | None = None, video_root: str | Path | None = None,
           clip: ClipSpec | None = None, policy: str = "strict", limit: int | None = None,
           probe_workers: int = 8) -> ClipDataset:
    """WebVid clips with their captions; ``limit``: the first ``limit`` CSV rows (5,000 for the paper)."""
    sources, report, index_files, vroot = webvid_sources(root, csv_path=csv_path, video_root=video_root,
                                                         policy=policy, limit=limit)
    clip = clip or ClipSpec(size=(256, 512))
    return ClipDataset("webvid", vroot, sources, clip, report, index_files=index_files, probe_workers=probe_workers)


# --- MSR-VTT (captions only) --------------------------------------------------------------------------


@dataclass
class CaptionSet:
    """Captions without videos (MSR-VTT CLIPSIM). ``captions[i]`` has an ``id`` and ``text``."""

    name: str
    captions: list[Caption]
    report: DataReport
    files: list[Path] = field(default_factory=list)
    root: Path = Path(".")

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> Caption:
        return self.captions[i]

    @property
    def manifest(self) -> Manifest:
        return build_manifest(self.files, self.root)


MSRVTT_FILES = ("test_videodatainfo.json", "MSRVTT_data.json", "annotation/MSR_VTT.json",
                "MSRVTT_JSFUSION_test.csv", "msrvtt_data/MSRVTT_data.json")


@DATASETS.register("msrvtt", description="MSR-VTT test-split captions (one per video, deterministic)")
def msrvtt(root: str | Path, *, caption_file: str | Path | None = None, choice: str = "first", seed: int = 0,
           policy: str = "strict") -> CaptionSet:
    root = Path(root)
    if caption_file is None:
        if root.is_file():
            caption_file, root = root, root.parent
        else:
            caption_file = _find(root, MSRVTT_FILES, "MSR-VTT caption file",
                                 "pass --msrvtt-root pointing at the folder with test_videodatainfo.json")
    report = DataReport("msrvtt", check_policy(policy))
    caps = msrvtt_test_captions(caption_file, choice=choice, seed=seed, policy=policy, report=report)
    return CaptionSet("msrvtt", caps, report, [Path(caption_file)], root)


# --- A folder of videos ---------------------------------------------------------------------------------

CAPTIONS_CSV = "captions.csv"


def _walk(root: Path, report: DataReport) -> list[Path]:
    """Video files, GIFs and frame directories under ``root`` (sorted); other files are bad input."""
    found: list[Path] = []

    def onerror(err: OSError) -> None:
        handle_bad(report, err.filename, f"directory cannot be listed: {err.strerror or err}", "index")

    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror):
        dirnames.sort()
        d = Path(dirpath)
        images = [f for f in filenames if Path(f).suffix.lower() in IMAGE_EXTENSIONS]
        if images and d != root:
            found.append(d)  # a frame directory
        for f in sorted(filenames):
            suffix = Path(f).suffix.lower()
            if f.startswith(".") or (d == root and f == CAPTIONS_CSV) or suffix in IMAGE_EXTENSIONS:
                continue
            if suffix in VIDEO_EXTENSIONS + GIF_EXTENSIONS:
                found.append(d / f)
            else:
                report.listed += 1
                handle_bad(report, d / f, f"not a video (extension {suffix or 'none'!r}; allowed "
                           f"{', '.join(VIDEO_EXTENSIONS + GIF_EXTENSIONS)} or a frame directory)", "index")
        if images and d == root:
            report.listed += 1
            handle_bad(report, d, "loose images in the root; put each video's frames in its own directory",
                       "index")
    return sorted(found)


def read_captions_csv(path: Path, report: DataReport) -> dict[str, str]:
    """``filename,caption`` rows -> {filename: caption}; repeated or empty rows are bad input."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not {"filename", "caption"} <= set(reader.fieldnames or []):
            raise DatasetError(f"captions CSV {path} needs columns filename,caption; found {reader.fieldnames}")
        out: dict[str, str] = {}
        for line, row in enumerate(reader, start=2):
            name = (row["filename"] or "").strip()
            cap = (row["caption"] or "").strip()
            if name in out:
                handle_bad(report, f"{path}:{line}", f"duplicate caption row for {name!r}", "index")
            elif not cap:
                handle_bad(report, f"{path}:{line}", f"empty caption for {name!r}", "index")
            else:
                out[name] = cap
    return out


def folder_sources(root: str | Path, *, captions: str | Path | bool | None = None, policy: str = "strict",
                   report: DataReport | None = None) -> tuple[list[VideoSource], DataReport, list[Path]]:
    """Every video under ``root`` as :class:`VideoSource` (ids: relative paths without extension), the
    report and the index files (the captions CSV when there is one). ``captions``: a CSV path, ``None`` for
    ``<root>/captions.csv`` when present, ``False`` to read no captions (conditions None). See :func:`folder`."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"video folder {root} is not a directory")
    try:
        next(os.scandir(root), None)
    except OSError as err:
        raise DatasetError(f"video folder {root} cannot be listed: {err.strerror or err}") from None
    report = report or DataReport("folder", check_policy(policy))
    paths = _walk(root, report)
    if captions is False:
        cap_file = None
    else:
        cap_file = Path(captions) if captions else (root / CAPTIONS_CSV if (root / CAPTIONS_CSV).is_file() else None)
    caption_of = read_captions_csv(cap_file, report) if cap_file else None
    sources, seen = [], {}
    for p in paths:
        report.listed += 1
        rel = p.relative_to(root).as_posix()
        vid = rel if p.is_dir() else rel[: -len(p.suffix)]
        if vid in seen:
            handle_bad(report, p, f"duplicate id {vid!r} (also {seen[vid]})", "index")
            continue
        seen[vid] = p
        cond = None
        if caption_of is not None:
            cond = caption_of.get(rel)
            if cond is None:
                handle_bad(report, p, f"no caption row for {rel!r} in {cap_file}", "index")
                continue
        sources.append(VideoSource(p, vid, cond))
    if caption_of is not None:
        listed = {s.path.relative_to(root).as_posix() for s in sources} | {
            p.relative_to(root).as_posix() for p in paths}
        for name in sorted(set(caption_of) - listed):
            handle_bad(report, f"{cap_file}", f"caption row for {name!r} names no video", "index")
    return sources, report, [cap_file] if cap_file else []


@DATASETS.register("folder", description="a directory of mp4/avi/webm/gif files or frame directories (+ captions.csv)")
def folder(root: str | Path, *, captions: str | Path | None = None, clip: ClipSpec | None = None,
           policy: str = "strict", probe_workers: int = 4) -> ClipDataset:
    """Clips of every video under ``root``; ids are relative paths without extension.

    ``captions``: a ``filename,caption`` CSV (default ``<root>/captions.csv`` when present); with one,
    every video needs a caption row (``filename`` relative to ``root``) and every row a video.
    """
    sources, report, index_files = folder_sources(root, captions=captions, policy=policy)
    clip = clip or ClipSpec(size=None)
    return ClipDataset("folder", Path(root), sources, clip, report, index_files=index_files,
                       probe_workers=probe_workers)
