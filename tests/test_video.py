"""The uint8 (B, T, 3, H, W) convention: validation, conversion, resize, stride, mp4 round trip, grids."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmdbench.video import (
    VideoFormatError,
    float_to_uint8,
    frame_grid,
    frame_stride,
    read_video,
    resize_video,
    save_frame_grid,
    uint8_to_float,
    validate_video,
    write_mp4,
)


def moving_square(t: int = 12, h: int = 32, w: int = 48) -> torch.Tensor:
    """uint8 (T, 3, H, W): a white 8x8 square moving 2 px per frame on grey."""
    v = torch.full((t, 3, h, w), 64, dtype=torch.uint8)
    for i in range(t):
        v[i, :, 8:16, 2 * i : 2 * i + 8] = 255
    return v


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (np.zeros((1, 2, 3, 4, 4), np.uint8), "torch.Tensor"),
        (torch.zeros(1, 2, 3, 4, 4), "float_to_uint8"),
        (torch.zeros(2, 3, 4, 4, dtype=torch.uint8), "4 dims"),
        (torch.zeros(1, 2, 4, 4, 3, dtype=torch.uint8), "channels-last"),
        (torch.zeros(0, 2, 3, 4, 4, dtype=torch.uint8), "empty"),
    ],
)
def test_validate_video_rejects(x, match):
    with pytest.raises(VideoFormatError, match=match):
        validate_video(x)


def test_float_uint8_round_trip_and_nan():
    x = torch.linspace(-1, 1, 256).reshape(1, 1, 1, 16, 16).expand(1, 1, 3, 16, 16)
    u = float_to_uint8(x)
    assert u.dtype == torch.uint8 and u.min() == 0 and u.max() == 255
    assert torch.allclose(uint8_to_float(u), x, atol=1 / 255)
    bad = x.clone()
    bad[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(VideoFormatError, match="1 NaN"):
        float_to_uint8(bad)


def test_resize_and_stride():
    v = moving_square()[None]
    assert resize_video(v, (16, 24)).shape == (1, 12, 3, 16, 24)
    strided = frame_stride(v, 3, num_frames=4)
    assert torch.equal(strided, v[:, [0, 3, 6, 9]])
    with pytest.raises(VideoFormatError, match="need 16"):
        frame_stride(v, 3, num_frames=6)


def test_mp4_round_trip(tmp_path):
    v = moving_square()
    path = write_mp4(tmp_path / "clip.mp4", v, fps=8)
    back = read_video(path)
    assert back.shape == v.shape and back.dtype == torch.uint8
    assert (back.float() - v.float()).abs().mean() < 3.0  # lossy codec, but close
    # The square moved: its column centre of mass in frame 10 is 20 px right of frame 0.
    cols = torch.arange(v.shape[-1]).float()
    def centre(frame):
        mass = (frame[0].float() > 160).float().sum(0)
        return float((mass * cols).sum() / mass.sum())
    assert abs(centre(back[10]) - centre(back[0]) - 20) < 1.5
    assert torch.equal(read_video(path, [0, 5]), read_video(path)[[0, 5]])


def test_mp4_odd_size_is_padded_not_cropped(tmp_path):
    v = moving_square(t=3, h=15, w=21)
    back = read_video(write_mp4(tmp_path / "odd.mp4", v))
    assert back.shape == (3, 3, 16, 22)


def test_read_video_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_video(tmp_path / "nope.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(VideoFormatError, match="empty"):
        read_video(tmp_path / "empty.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all" * 10)
    with pytest.raises(VideoFormatError, match="cannot decode"):
        read_video(tmp_path / "junk.mp4")
    path = write_mp4(tmp_path / "ok.mp4", moving_square(t=4))
    with pytest.raises(VideoFormatError, match="4 frames"):
        read_video(path, [0, 9])


def test_frame_grid_layout(tmp_path):
    videos = torch.stack([moving_square(t=4, h=8, w=8), torch.zeros(4, 3, 8, 8, dtype=torch.uint8)])
    grid = frame_grid(videos, max_frames=8, pad=2)
    assert grid.shape == (2 * 10 + 2, 4 * 10 + 2, 3)
    assert np.array_equal(grid[2:10, 12:20], videos[0, 1].permute(1, 2, 0).numpy())
    assert (grid[12:20, 2:10] == 0).all()
    from PIL import Image

    path = save_frame_grid(tmp_path / "g.png", videos)
    assert np.array_equal(np.asarray(Image.open(path)), grid)


@pytest.mark.parametrize(("h", "w"), [(16, 16), (32, 48)])
def test_mp4_round_trip_at_sizes_decord_mishandles(tmp_path, h, w):
    """decord 0.6.0 cannot batch-read these widths; read_video must still return the right frames."""
    v = moving_square(t=4, h=h, w=w)
    back = read_video(write_mp4(tmp_path / "clip.mp4", v))
    assert back.shape == v.shape
    assert (back.float() - v.float()).abs().mean() < 6.0
