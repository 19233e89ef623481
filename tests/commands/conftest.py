"""Helpers of the command tests: folders of synthetic videos, the CLI in-process, records."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from cmdbench.video import write_mp4


def write_videos(root: Path, n: int, *, seed: int, frames: int = 16, size: tuple[int, int] = (32, 32),
                 shift: int = 0, captions: bool = True, prefix: str = "clip") -> Path:
    """``n`` noise videos ``<prefix>NN.mp4`` (uint8 in [shift, shift + 150)) and a captions.csv naming each."""
    root.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        video = (torch.rand(frames, 3, *size, generator=g) * 150 + shift).to(torch.uint8)
        write_mp4(root / f"{prefix}{i:02d}.mp4", video)
        rows.append({"filename": f"{prefix}{i:02d}.mp4", "caption": f"a noisy video number {i}"})
    if captions:
        with open(root / "captions.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, ["filename", "caption"])
            writer.writeheader()
            writer.writerows(rows)
    return root


def records_of(directory: Path) -> pd.DataFrame:
    from cmdbench.bench.results import load_records

    return load_records(directory)


def notes_of(row) -> dict:
    text = row["notes"]
    return json.loads(text[text.index("{"):])


@pytest.fixture
def cli(monkeypatch, tmp_path):
    """``cmdbench.cli.main`` with a private cache directory (statistics, listing)."""
    from cmdbench.cli import main

    monkeypatch.setenv("CMDBENCH_CACHE", str(tmp_path / "cache"))
    return main
