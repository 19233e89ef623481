"""Video preprocessing for I3D feature extractors: frame choice, resize policy, value range.

Input everywhere: ``torch.uint8`` videos ``(B, T, 3, H, W)`` (the cmdbench convention). Output:
``float32`` ``(B, 3, T, size, size)`` (channels first, as I3D takes it) in ``value_range``.

Resize policies (the knob published FVD numbers disagree on, see evaluation-protocols.md §1.4):

* ``"whole"``: bilinear resize of the whole frame to ``size x size`` (aspect not kept), as the TF
  reference and TATS. Kernel ``"torch"`` = ``F.interpolate(..., align_corners=False)`` (half-pixel
  centres); kernel ``"tf1"`` = TF1's legacy ``tf.image.resize_bilinear`` (``align_corners=False``,
  no half-pixel centres: source coordinate = ``dst * in / out``), which is what the TF-hub reference ran.
* ``"short_side_crop"``: shorter side to ``size`` (longer side ``ceil(L * size / S)``), bilinear
  (``align_corners=False``), then a centre crop ``size x size`` (VideoGPT / PVDM / CMD release).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cmdbench.video import VideoFormatError, validate_video

RESIZE_POLICIES = ("whole", "short_side_crop", "detector")
RESIZE_KERNELS = ("torch", "tf1")


@dataclass(frozen=True)
class Preprocessing:
    """How uint8 frames become extractor input. ``resize="detector"``: the extractor resizes itself."""

    resize: str = "whole"
    size: int = 224
    value_range: tuple[float, float] = (-1.0, 1.0)
    kernel: str = "torch"
    antialias: bool = False

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_POLICIES:
            raise ValueError(f"resize={self.resize!r}; allowed {RESIZE_POLICIES}")
        if self.kernel not in RESIZE_KERNELS:
            raise ValueError(f"resize kernel={self.kernel!r}; allowed {RESIZE_KERNELS}")
        if self.kernel == "tf1" and (self.antialias or self.resize != "whole"):
            raise ValueError("the 'tf1' kernel reproduces TF1 resize_bilinear: whole-frame, no antialias only")
        if self.size < 1:
            raise ValueError(f"size={self.size}; allowed a positive integer")


def select_frames(videos: torch.Tensor, num_frames: int, stride: int = 1, start: int = 0) -> torch.Tensor:
    """Frames ``start, start+stride, ...`` (exactly ``num_frames``) of uint8 ``(B, T, 3, H, W)``."""
    validate_video(videos)
    need = start + (num_frames - 1) * stride + 1
    if videos.shape[1] < need:
        raise VideoFormatError(
            f"videos have {videos.shape[1]} frames; {num_frames} frames at stride {stride} from frame "
            f"{start} need {need}"
        )
    return videos[:, start:need:stride]


def tf1_resize_bilinear(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """TF1 ``tf.image.resize_bilinear(align_corners=False, half_pixel_centers=False)`` of ``(N, C, H, W)``.

    Source coordinate ``y = i * H / h`` (no half-pixel shift), ``y0 = floor(y)``, ``y1 = min(y0 + 1, H - 1)``,
    weight ``y - y0``; the same along x. Float in, float out.
    """
    n, c, h, w = frames.shape
    oh, ow = size

    def axis(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        src = torch.arange(n_out, dtype=torch.float64) * (n_in / n_out)
        lo = src.floor().long().clamp(max=n_in - 1)
        hi = (lo + 1).clamp(max=n_in - 1)
        return lo, hi, (src - lo).to(frames.dtype)

    y0, y1, wy = axis(h, oh)
    x0, x1, wx = axis(w, ow)
    top = frames[:, :, y0] * (1 - wy)[:, None] + frames[:, :, y1] * wy[:, None]  # (N, C, oh, W)
    return top[..., x0] * (1 - wx) + top[..., x1] * wx  # (N, C, oh, ow)


def short_side_size(h: int, w: int, size: int) -> tuple[int, int]:
    """Resized ``(h, w)`` with the shorter side ``size`` and the longer ``ceil(L * size / S)`` (VideoGPT)."""
    scale = size / min(h, w)
    if h < w:
        return size, math.ceil(w * scale)
    return math.ceil(h * scale), size


def resize_frames(frames: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """Resize float ``(N, 3, H, W)`` frames by ``prep`` to ``(N, 3, size, size)``."""
    s = prep.size
    h, w = frames.shape[-2:]
    if prep.resize == "whole":
        if (h, w) == (s, s):
            return frames
        if prep.kernel == "tf1":
            return tf1_resize_bilinear(frames, (s, s))
        return F.interpolate(frames, size=(s, s), mode="bilinear", align_corners=False, antialias=prep.antialias)
    if prep.resize == "short_side_crop":
        rh, rw = short_side_size(h, w, s)
        if (rh, rw) != (h, w):
            frames = F.interpolate(
                frames, size=(rh, rw), mode="bilinear", align_corners=False, antialias=prep.antialias
            )
        top, left = (rh - s) // 2, (rw - s) // 2
        return frames[..., top : top + s, left : left + s]
    raise ValueError(f"resize policy {prep.resize!r} is done inside the detector, not here")


def to_extractor_input(videos: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """uint8 ``(B, T, 3, H, W)`` -> float32 ``(B, 3, T, size, size)`` in ``prep.value_range``.

    Frames are resized in the 0..255 float domain (as TF does), then mapped linearly to the range.
    """
    validate_video(videos)
    b, t, c, h, w = videos.shape
    frames = videos.reshape(b * t, c, h, w).float()  # (B*T, 3, H, W), 0..255
    frames = resize_frames(frames, prep)  # (B*T, 3, s, s)
    lo, hi = prep.value_range
    frames = frames / 255.0 * (hi - lo) + lo
    return frames.reshape(b, t, c, prep.size, prep.size).permute(0, 2, 1, 3, 4).contiguous()
