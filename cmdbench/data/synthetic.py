"""Synthetic moving-shape videos and fake dataset trees for tests and the CPU end-to-end run.

A video is a coloured square or disc moving linearly (bouncing off the borders) over a plain
background; its shape, colour and speed come from a numpy ``Generator`` seeded with ``(seed, label)``,
so the class of a video shows in its pixels (a tiny extractor can tell classes apart).

Fake trees follow the real layouts: UCF-101 (``UCF-101/<Class>/v_<Class>_gNN_cNN.avi`` plus
``ucfTrainTestlist/{classInd,trainlist01,testlist01}.txt``), WebVid (``results_2M_val.csv`` plus
``<page_dir>/<videoid>.mp4``), MSR-VTT (``test_videodatainfo.json``), and a plain folder with
``captions.csv``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from cmdbench.data.prompts import ucf101_class_prompts
from cmdbench.video import write_mp4

COLOURS = ("red", "green", "blue", "yellow", "magenta", "cyan", "white", "orange")
_RGB = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230), "yellow": (230, 220, 40),
        "magenta": (210, 50, 210), "cyan": (40, 210, 220), "white": (240, 240, 240), "orange": (240, 140, 30)}


def moving_shape(seed: int, *, label: int = 0, num_frames: int = 16, height: int = 32, width: int = 32,
                 grayscale: bool = False) -> tuple[torch.Tensor, str]:
    """One synthetic video, uint8 ``(T, 3, H, W)``, and a caption describing it."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, label]))
    colour = COLOURS[label % len(COLOURS)]
    disc = (label // len(COLOURS)) % 2 == 1
    side = max(2, min(height, width) // 4)
    bg = rng.integers(0, 60, size=3)
    pos = rng.uniform([0, 0], [height - side, width - side])
    vel = rng.uniform(-1, 1, size=2) * (1 + label % 3) * max(1.0, min(height, width) / 16)
    yy, xx = np.mgrid[0:height, 0:width]
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):
        frame = np.broadcast_to(bg, (height, width, 3)).copy()
        y, x = pos
        if disc:
            mask = (yy - y - side / 2) ** 2 + (xx - x - side / 2) ** 2 <= (side / 2) ** 2
        else:
            mask = (yy >= y) & (yy < y + side) & (xx >= x) & (xx < x + side)
        frame[mask] = _RGB[colour]
        frames[t] = frame
        pos = pos + vel
        for d, limit in enumerate((height - side, width - side)):
            if not 0 <= pos[d] <= limit:
                vel[d] = -vel[d]
                pos[d] = float(np.clip(pos[d], 0, limit))
    if grayscale:
        g = frames.mean(axis=-1, keepdims=True).round().astype(np.uint8)
        frames = np.repeat(g, 3, axis=-1)
    video = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()
    caption = f"a {colour} {'disc' if disc else 'square'} moving over a dark background"
    return video, caption


def write_avi(path: str | Path, video: torch.Tensor, fps: int = 25) -> Path:
    """Write uint8 ``(T, 3, H, W)`` as an MPEG-4 Part 2 AVI (UCF-101's container); even sides only."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = video.permute(0, 2, 3, 1).contiguous().numpy()
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"write_avi needs even frame sides, got {h}x{w} for {path}")
    with av.open(str(path), mode="w", format="avi") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"qscale": "2"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_folder(root: str | Path, num_videos: int, *, num_frames: int = 16, height: int = 32, width: int = 32,
                 seed: int = 0, num_labels: int = 8, captions: bool = True) -> list[Path]:
    """``num_videos`` mp4s ``video_0000.mp4 ...`` under ``root`` (+ ``captions.csv``)."""
    root = Path(root)
    paths, rows = [], []
    for i in range(num_videos):
        video, caption = moving_shape(seed + i, label=i % num_labels, num_frames=num_frames,
                                      height=height, width=width)
        p = write_mp4(root / f"video_{i:04d}.mp4", video)
        paths.append(p)
        rows.append((p.name, caption))
    if captions:
        with open(root / "captions.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["filename", "caption"])
            w.writerows(rows)
    return paths


def write_fake_ucf101(root: str | Path, *, classes: Sequence[int] = (0, 1, 2, 3), train_per_class: int = 4,
                      test_per_class: int = 1, num_frames: int = 20, height: int = 24, width: int = 32,
                      seed: int = 0) -> Path:
    """A miniature UCF-101 tree with all 101 classes in ``classInd.txt`` and videos for ``classes``.

    Groups 8.. are train, groups 1..7 test, as in the official split 1. Returns ``root``.
    """
    root = Path(root)
    names = [p.class_name for p in ucf101_class_prompts()]
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "classInd.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(names)))
    train, test = [], []
    for c in classes:
        name = names[c]
        for j in range(train_per_class + test_per_class):
            group = 8 + j if j < train_per_class else 1 + (j - train_per_class)
            rel = f"{name}/v_{name}_g{group:02d}_c01.avi"
            video, _ = moving_shape(seed * 100_003 + c * 1000 + j, label=c, num_frames=num_frames,
                                    height=height, width=width)
            write_avi(root / "UCF-101" / rel, video)
            (train if j < train_per_class else test).append((rel, c))
    (lists / "trainlist01.txt").write_text("".join(f"{r} {c + 1}\r\n" for r, c in train))
    (lists / "testlist01.txt").write_text("".join(f"{r}\r\n" for r, _ in test))
    return root


def write_fake_webvid(root: str | Path, num_videos: int = 8, *, num_frames: int = 20, height: int = 24,
                      width: int = 40, seed: int = 0, pages: int = 2) -> Path:
    """A miniature WebVid tree: ``results_2M_val.csv`` and ``<page_dir>/<videoid>.mp4``. Returns the CSV."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(num_videos):
        video, caption = moving_shape(seed + i, label=i % 8, num_frames=num_frames, height=height, width=width)
        vid, page = str(1_000_000 + i), f"{i % pages:03d}001_{i % pages:03d}050"
        write_mp4(root / page / f"{vid}.mp4", video)
        rows.append([vid, f"https://example.invalid/{vid}.mp4", f"PT00H00M{num_frames // 8:02d}S", page, caption])
    csv_path = root / "results_2M_val.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["videoid", "contentUrl", "duration", "page_dir", "name"])
        w.writerows(rows)
    return csv_path


def write_fake_msrvtt(root: str | Path, num_test: int = 6, *, captions_per_video: int = 3) -> Path:
    """A miniature ``test_videodatainfo.json`` (videos video7010.. in the test split). Returns the file."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    videos, sentences = [], []
    for i in range(num_test):
        vid = f"video{7010 + i}"
        videos.append({"video_id": vid, "split": "test", "id": 7010 + i, "category": i % 20})
        for k in range(captions_per_video):
            colour = COLOURS[(i + k) % len(COLOURS)]
            sentences.append({"video_id": vid, "sen_id": 140200 + i * captions_per_video + k,
                              "caption": f"a {colour} square moving, caption {k} of {vid}"})
    path = root / "test_videodatainfo.json"
    path.write_text(json.dumps({"info": {"year": 2016}, "videos": videos, "sentences": sentences}))
    return path
