"""Evaluation prompt and label lists, in fixed order.

UCF-101 zero-shot prompts
-------------------------
CMD (arXiv 2403.14148v1, Fig. 8) prints PYoCo's UCF-101 prompts: 105 entries for 101 classes
(``ucf101_prompts_printed.txt``, copied verbatim from the reference extraction). Read in printed
order, the entries follow the alphabetical ``classInd.txt`` order one to one, except four:

* three classes have two printed entries; we keep the **longer, more descriptive** one (most PYoCo
  prompts describe a scene rather than repeat the class name) and drop the other:
  ``CleanAndJerk``: "weightlifting with barbell" (dropped "clean and jerk");
  ``HorseRace``: "group of people racing horse" (dropped "horse race");
  ``IceDancing``: "man and woman dancing on the ice" (dropped "ice dancing");
* "a person standing", printed between ``WalkingWithDog`` and ``WallPushups``, names no class. It may
  be the first half of a wrapped "a person standing doing pushups on the wall"; we do not invent
  text and map ``WallPushups`` to the printed "doing pushups on the wall".

The resulting table ships as ``ucf101_prompts.csv`` (``class_index,class_name,prompt``;
``class_index`` is 0-based, i.e. ``classInd.txt`` number - 1, the label generators take).
:data:`DROPPED_PRINTED_PROMPTS` records the four unused entries with the reason.

WebVid-10M and MSR-VTT captions are read from the user's copies of the dataset files.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np

from cmdbench.data.policy import DataReport, DatasetError, handle_bad

DROPPED_PRINTED_PROMPTS: dict[str, str] = {
    "clean and jerk": "second entry for CleanAndJerk; kept 'weightlifting with barbell' (longer)",
    "horse race": "second entry for HorseRace; kept 'group of people racing horse' (longer)",
    "ice dancing": "second entry for IceDancing; kept 'man and woman dancing on the ice' (longer)",
    "a person standing": "names no UCF-101 class (possibly a wrapped half of the WallPushups prompt)",
}


@dataclass(frozen=True)
class ClassPrompt:
    class_index: int  # 0-based (classInd number - 1)
    class_name: str  # as in classInd.txt
    prompt: str


@cache
def ucf101_class_prompts() -> tuple[ClassPrompt, ...]:
    """The 101 zero-shot prompts in class-index order (0..100)."""
    text = resources.files("cmdbench.data").joinpath("ucf101_prompts.csv").read_text(encoding="utf-8")
    rows = list(csv.DictReader(text.splitlines()))
    out = tuple(ClassPrompt(int(r["class_index"]), r["class_name"], r["prompt"]) for r in rows)
    if [p.class_index for p in out] != list(range(101)):
        raise DatasetError("packaged ucf101_prompts.csv is damaged: class_index must run 0..100 in order")
    return out


def ucf101_class_names() -> tuple[str, ...]:
    """The 101 ``classInd.txt`` class names in index order."""
    return tuple(p.class_name for p in ucf101_class_prompts())


def ucf101_prompts() -> tuple[str, ...]:
    """The 101 zero-shot prompts, ``ucf101_prompts()[label]`` for 0-based ``label``."""
    return tuple(p.prompt for p in ucf101_class_prompts())


def printed_ucf101_prompts() -> tuple[str, ...]:
    """The 105 entries as printed in CMD Fig. 8, in printed order."""
    text = resources.files("cmdbench.data").joinpath("ucf101_prompts_printed.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


def zero_shot_plan(videos_per_class: int = 100) -> list[tuple[int, str]]:
    """``(label, prompt)`` for the zero-shot protocol: class-major, ``videos_per_class`` per class."""
    if videos_per_class < 1:
        raise ValueError(f"videos_per_class={videos_per_class}; allowed a positive integer")
    return [(p.class_index, p.prompt) for p in ucf101_class_prompts() for _ in range(videos_per_class)]


# --- Captions from dataset files ---------------------------------------------------------------------


@dataclass(frozen=True)
class Caption:
    id: str
    text: str


def _natural(video_id: str) -> tuple[str, int]:
    digits = "".join(ch for ch in video_id if ch.isdigit())
    return (video_id.rstrip("0123456789"), int(digits) if digits else -1)


def webvid_captions(csv_path: str | Path, *, policy: str = "strict", report: DataReport | None = None,
                    limit: int | None = None) -> list[Caption]:
    """Captions of a WebVid CSV (columns ``videoid``, ``name``, ...), in file order.

    Rows with an empty caption or a repeated ``videoid`` are bad input (policy). ``limit`` takes the first
    ``limit`` good rows and is an error if the file has fewer.
    """
    report = report or DataReport("webvid-captions", policy)
    rows = read_webvid_csv(Path(csv_path), report, limit=limit)
    if limit is not None and len(rows) < limit:
        raise DatasetError(f"{csv_path}: {len(rows)} usable captions, {limit} requested")
    return [Caption(r["videoid"], r["name"]) for r in rows]


WEBVID_COLUMNS = ("videoid", "name", "page_dir")


def read_webvid_csv(path: Path, report: DataReport, limit: int | None = None) -> list[dict[str, str]]:
    """Rows of a WebVid CSV with a caption and a unique id (others go through the bad-input policy).

    ``limit``: stop after that many good rows (rows after it are not read, so not counted).
    """
    if not path.is_file():
        raise DatasetError(f"WebVid CSV {path} does not exist; pass the results_*_val.csv of your WebVid copy")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in WEBVID_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"WebVid CSV {path} lacks columns {missing}; found {reader.fieldnames}")
        rows, seen = [], set()
        for line, row in enumerate(reader, start=2):
            if limit is not None and len(rows) >= limit:
                break
            report.listed += 1
            vid = (row.get("videoid") or "").strip()
            where = f"{path}:{line}"
            if not vid:
                handle_bad(report, where, "empty videoid", "index")
            elif vid in seen:
                handle_bad(report, where, f"duplicate videoid {vid!r}", "index")
            elif not (row.get("name") or "").strip():
                handle_bad(report, where, f"missing caption for videoid {vid!r}", "index")
            else:
                seen.add(vid)
                rows.append({k: (v or "").strip() for k, v in row.items() if k is not None})
    return rows


def msrvtt_test_captions(path: str | Path, *, choice: str = "first", seed: int = 0, split: str = "test",
                         policy: str = "strict", report: DataReport | None = None) -> list[Caption]:
    """One caption per MSR-VTT test video, videos in natural id order (video7010, video7011, ...).

    ``path``: ``MSRVTT_data.json`` / ``test_videodatainfo.json`` (``videos`` with ``split``, ``sentences``
    with ``video_id``, ``sen_id``, ``caption``), or a CSV with ``video_id`` and ``sentence`` columns (the
    1k-A test list). ``choice``: ``"first"`` (lowest ``sen_id``) or ``"seeded"`` (a fixed pick per video
    from ``seed`` and the id). Videos of the split without any caption are bad input (policy).
    """
    path = Path(path)
    report = report or DataReport("msrvtt-captions", policy)
    if choice not in ("first", "seeded"):
        raise ValueError(f"choice={choice!r}; allowed 'first' or 'seeded'")
    if not path.is_file():
        raise DatasetError(f"MSR-VTT caption file {path} does not exist; pass MSRVTT_data.json, "
                           "test_videodatainfo.json or MSRVTT_JSFUSION_test.csv")
    by_video: dict[str, list[tuple[int, str]]] = {}
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not {"video_id", "sentence"} <= set(reader.fieldnames or []):
                raise DatasetError(f"{path} lacks columns video_id, sentence; found {reader.fieldnames}")
            for i, row in enumerate(reader):
                by_video.setdefault(row["video_id"].strip(), []).append((i, (row["sentence"] or "").strip()))
        videos = list(by_video)
    else:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            videos = [v["video_id"] for v in data["videos"] if v.get("split", split) == split]
            for s in data["sentences"]:
                by_video.setdefault(s["video_id"], []).append((int(s.get("sen_id", 0)), str(s["caption"]).strip()))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DatasetError(f"{path} is not an MSR-VTT caption file (videos/sentences): {err!r}") from None
    seen: set[str] = set()
    out = []
    for vid in sorted(videos, key=_natural):
        report.listed += 1
        caps = sorted(c for c in by_video.get(vid, []) if c[1])
        if vid in seen:
            handle_bad(report, f"{path}:{vid}", "duplicate video id", "index")
            continue
        seen.add(vid)
        if not caps:
            handle_bad(report, f"{path}:{vid}", "no caption for this test video", "index")
            continue
        if choice == "first":
            text = caps[0][1]
        else:
            from cmdbench.data.clips import id_digest

            rng = np.random.default_rng(np.random.SeedSequence([seed, id_digest(vid)]))
            text = caps[int(rng.integers(0, len(caps)))][1]
        out.append(Caption(vid, text))
    report.usable = len(out)
    if not out:
        raise DatasetError(f"{path}: no {split!r} videos with captions")
    return out
