"""cmdbench.data.readers on files cmdbench writes: odd frame sizes survive write_mp4 on both decoding paths of
read_chosen_frames, and decord's FFmpeg logging is silenced before decord opens a file."""

from __future__ import annotations

import pytest
import torch

from cmdbench.data import readers
from cmdbench.data.synthetic import moving_shape
from cmdbench.video import read_video, write_mp4


@pytest.fixture(scope="module")
def odd_mp4(tmp_path_factory):
    """A 17x33 clip written by write_mp4 (yuv420p pads it to 18x34 and records the true size; decord cannot
    decode some widths, e.g. 24: its fallback is tested elsewhere)."""
    video, _ = moving_shape(3, num_frames=10, height=17, width=33)
    path = write_mp4(tmp_path_factory.mktemp("odd") / "odd.mp4", video)
    return path, video


@pytest.mark.parametrize("path_kind", ["pyav", "decord"])
def test_odd_sized_write_mp4_files_come_back_at_their_true_size(odd_mp4, path_kind, monkeypatch):
    path, video = odd_mp4
    if path_kind == "decord":  # a container without a stated frame count goes to decord's get_batch
        monkeypatch.setattr(readers, "_open_pyav", lambda *a: None)
    monkeypatch.setattr(readers, "read_frames", lambda *a: pytest.fail("fell back to read_frames"))
    window = range(2, 9, 3)
    frames, info = readers.read_chosen_frames(path, lambda _: window)
    assert info.num_frames == 10
    assert frames.shape == (3, 3, 17, 33) and frames.dtype == torch.uint8
    assert torch.equal(frames, read_video(path, list(window)))  # read_video crops the same way
    assert (frames.int() - video[list(window)].int()).abs().float().mean() < 8  # the clip itself, through x264


def test_decord_is_quiet_before_it_opens_a_file(odd_mp4, monkeypatch):
    import decord

    path, _ = odd_mp4
    events: list[str] = []
    real_reader = decord.VideoReader
    monkeypatch.setattr(readers, "quiet_decord", lambda: events.append("quiet"))
    monkeypatch.setattr(decord, "VideoReader", lambda *a, **k: events.append("open") or real_reader(*a, **k))
    assert readers.count_frames(path) == 10
    assert events == ["quiet", "open"]
    events.clear()
    monkeypatch.setattr(readers, "_open_pyav", lambda *a: None)  # the decord path of read_chosen_frames
    readers.read_chosen_frames(path, lambda _: range(2))
    assert events == ["quiet", "open"]
