"""FVD preprocessing presets against hand computations."""

from __future__ import annotations

import pytest
import torch

from cmdbench.metrics.preprocess import (
    Preprocessing,
    select_frames,
    short_side_size,
    tf1_resize_bilinear,
    to_extractor_input,
)
from cmdbench.video import VideoFormatError


def video_from_frame(frame: torch.Tensor, t: int = 2) -> torch.Tensor:
    """(H, W) uint8 -> (1, T, 3, H, W) with the same frame in every channel and time step."""
    return frame.to(torch.uint8)[None, None, None].expand(1, t, 3, *frame.shape).contiguous()


GRID = torch.tensor([[0, 10, 20, 30], [40, 50, 60, 70], [80, 90, 100, 110], [120, 130, 140, 150]])


def test_value_range_maps_0_255_to_minus1_1():
    v = video_from_frame(torch.tensor([[0, 255], [51, 204]]))
    out = to_extractor_input(v, Preprocessing(size=2))
    assert out.shape == (1, 3, 2, 2, 2)  # (B, 3, T, H, W)
    expected = torch.tensor([[-1.0, 1.0], [51 / 255 * 2 - 1, 204 / 255 * 2 - 1]])
    torch.testing.assert_close(out[0, 1, 0], expected, rtol=0, atol=1e-6)


def test_whole_frame_torch_kernel_halves_to_block_means():
    # half-pixel centres: output pixel i samples source 2i + 0.5 = mean of pixels 2i and 2i+1
    out = to_extractor_input(video_from_frame(GRID), Preprocessing(size=2, value_range=(0.0, 255.0)))
    expected = torch.tensor([[25.0, 45.0], [105.0, 125.0]])
    torch.testing.assert_close(out[0, 0, 0], expected, rtol=0, atol=1e-4)


def test_whole_frame_tf1_kernel_subsamples_and_upsamples():
    # TF1 legacy resize_bilinear: source = i * in/out (no half-pixel shift)
    down = to_extractor_input(video_from_frame(GRID), Preprocessing(size=2, value_range=(0.0, 255.0), kernel="tf1"))
    torch.testing.assert_close(down[0, 0, 0], torch.tensor([[0.0, 20.0], [80.0, 100.0]]), rtol=0, atol=1e-4)
    up = tf1_resize_bilinear(torch.tensor([[[[0.0, 8.0], [16.0, 24.0]]]]), (4, 4))[0, 0]
    row0 = torch.tensor([0.0, 4.0, 8.0, 8.0])
    expected = torch.stack([row0, row0 + 8, row0 + 16, row0 + 16])
    torch.testing.assert_close(up, expected)


def test_short_side_resize_then_centre_crop():
    frame = torch.arange(32).reshape(4, 8) * 4  # H=4, W=8 -> (2, 4) -> crop columns 1..2
    out = to_extractor_input(video_from_frame(frame), Preprocessing(resize="short_side_crop", size=2,
                                                                     value_range=(0.0, 255.0)))
    f = frame.float()
    block = (f[0::2, 0::2] + f[0::2, 1::2] + f[1::2, 0::2] + f[1::2, 1::2]) / 4  # (2, 4) block means
    torch.testing.assert_close(out[0, 0, 0], block[:, 1:3], rtol=0, atol=1e-4)
    # whole-frame resizing of the same video squeezes the width instead
    whole = to_extractor_input(video_from_frame(frame), Preprocessing(size=2, value_range=(0.0, 255.0)))
    assert not torch.allclose(whole[0, 0, 0], out[0, 0, 0])


def test_short_side_size_uses_ceil_like_videogpt():
    assert short_side_size(240, 320, 224) == (224, 299)
    assert short_side_size(512, 1024, 224) == (224, 448)
    assert short_side_size(320, 240, 224) == (299, 224)


def test_select_frames_stride_and_error():
    v = torch.arange(10, dtype=torch.uint8)[None, :, None, None, None].expand(1, 10, 3, 2, 2)
    got = select_frames(v, num_frames=4, stride=3)
    assert got[0, :, 0, 0, 0].tolist() == [0, 3, 6, 9]
    with pytest.raises(VideoFormatError, match="need 11"):
        select_frames(v, num_frames=6, stride=2)


def test_bad_settings_rejected():
    with pytest.raises(ValueError, match="allowed"):
        Preprocessing(resize="stretch")
    with pytest.raises(ValueError, match="tf1"):
        Preprocessing(resize="short_side_crop", kernel="tf1")
    with pytest.raises(VideoFormatError, match="uint8"):
        to_extractor_input(torch.zeros(1, 2, 3, 4, 4), Preprocessing())
