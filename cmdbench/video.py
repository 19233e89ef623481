"""The video convention: ``torch.uint8``, shape ``(B, T, 3, H, W)``, RGB, values 0..255.

Validation with clear errors, float <-> uint8 conversion, resizing, frame striding, mp4 writing
(PyAV, libx264) and reading (decord), and frame grids to PNG.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


class VideoFormatError(ValueError):
    """A tensor or file that does not follow the video convention."""


def validate_video(x: object, *, name: str = "videos", min_frames: int = 1) -> torch.Tensor:
    """Check ``x`` is uint8 ``(B, T, 3, H, W)`` with ``T >= min_frames``; return it unchanged."""
    if not isinstance(x, torch.Tensor):
        raise VideoFormatError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype != torch.uint8:
        hint = ""
        if x.is_floating_point():
            hint = " (float videos: convert with cmdbench.video.float_to_uint8(x, value_range=...))"
        raise VideoFormatError(f"{name} must have dtype torch.uint8 with values 0..255, got {x.dtype}{hint}")
    if x.ndim != 5:
        raise VideoFormatError(f"{name} must have shape (B, T, 3, H, W), got {tuple(x.shape)} ({x.ndim} dims)")
    if x.shape[2] != 3:
        hint = " (channels-last? permute to (B, T, 3, H, W))" if x.shape[-1] == 3 else ""
        raise VideoFormatError(f"{name} must have 3 RGB channels at dim 2, got shape {tuple(x.shape)}{hint}")
    if x.shape[0] < 1 or x.shape[3] < 1 or x.shape[4] < 1:
        raise VideoFormatError(f"{name} is empty: shape {tuple(x.shape)}")
    if x.shape[1] < min_frames:
        raise VideoFormatError(f"{name} has {x.shape[1]} frames; at least {min_frames} are needed")
    return x


def float_to_uint8(x: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """Map a float tensor in ``value_range`` to uint8 0..255 (round, clamp). NaN/inf raise."""
    if not x.is_floating_point():
        raise VideoFormatError(f"float_to_uint8 needs a floating tensor, got {x.dtype}")
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise VideoFormatError(f"video contains {bad} NaN/inf values; a generator produced invalid output")
    lo, hi = value_range
    y = (x.float() - lo) / (hi - lo) * 255.0
    return y.round().clamp(0, 255).to(torch.uint8)


def uint8_to_float(x: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """Inverse of :func:`float_to_uint8`: uint8 -> float32 in ``value_range``."""
    if x.dtype != torch.uint8:
        raise VideoFormatError(f"uint8_to_float needs torch.uint8, got {x.dtype}")
    lo, hi = value_range
    return x.float() / 255.0 * (hi - lo) + lo


def resize_video(
    x: torch.Tensor, size: tuple[int, int], *, mode: str = "bilinear", antialias: bool = False
) -> torch.Tensor:
    """Resize every frame of uint8 ``(B, T, 3, H, W)`` to ``size=(h, w)``; returns uint8."""
    validate_video(x)
    b, t, c, h, w = x.shape
    if (h, w) == tuple(size):
        return x
    frames = x.reshape(b * t, c, h, w).float()
    out = F.interpolate(frames, size=tuple(size), mode=mode, align_corners=False, antialias=antialias)
    return out.round().clamp(0, 255).to(torch.uint8).reshape(b, t, c, *size)


def center_crop_square_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Centre square crop (side = shorter side), then bilinear resize to ``size x size``."""
    validate_video(x)
    h, w = x.shape[-2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return resize_video(x[..., top : top + s, left : left + s], (size, size), antialias=True)


def frame_stride(x: torch.Tensor, stride: int, num_frames: int | None = None, start: int = 0) -> torch.Tensor:
    """Take every ``stride``-th frame from ``start``; with ``num_frames``, exactly that many or an error."""
    validate_video(x)
    if stride < 1 or start < 0:
        raise ValueError(f"frame_stride needs stride >= 1 and start >= 0, got stride={stride}, start={start}")
    idx = list(range(start, x.shape[1], stride))
    if num_frames is not None:
        if len(idx) < num_frames:
            need = start + (num_frames - 1) * stride + 1
            raise VideoFormatError(
                f"video has {x.shape[1]} frames; {num_frames} frames at stride {stride} from {start} need {need}"
            )
        idx = idx[:num_frames]
    return x[:, idx]


def write_mp4(path: str | Path, video: torch.Tensor, fps: float = 8.0, crf: int = 18) -> Path:
    """Write one uint8 ``(T, 3, H, W)`` video to ``path`` as H.264 mp4 (yuv420p) with PyAV.

    Odd sizes are padded by edge replication to even (yuv420p needs even sides); nothing is cropped.
    """
    import av

    if video.ndim == 5 and video.shape[0] == 1:
        video = video[0]
    validate_video(video.unsqueeze(0), name=f"video for {path}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = video.permute(0, 2, 3, 1).contiguous().cpu().numpy()  # (T, H, W, 3)
    t, h, w, _ = frames.shape
    ph, pw = h % 2, w % 2
    if ph or pw:
        frames = np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    tmp = path.with_name(path.name + ".part")
    with av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=round(fps))
        stream.width, stream.height = w + pw, h + ph
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(path)
    return path


def read_video(path: str | Path, indices: Sequence[int] | None = None) -> torch.Tensor:
    """Read frames of a video file with decord; returns uint8 ``(T, 3, H, W)``.

    ``indices`` selects frames (all by default); an index past the end is an error, never clamped.
    """
    import decord

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file {path} does not exist")
    if path.stat().st_size == 0:
        raise VideoFormatError(f"video file {path} is empty (0 bytes)")
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
    except Exception as err:  # decord raises its own DECORDError
        raise VideoFormatError(f"cannot decode video file {path}: {err}") from None
    n = len(reader)
    idx = list(range(n)) if indices is None else [int(i) for i in indices]
    bad = [i for i in idx if not 0 <= i < n]
    if bad:
        raise VideoFormatError(f"video {path} has {n} frames; requested frame indices {bad[:5]} do not exist")
    try:
        frames = reader.get_batch(idx).asnumpy()  # (T, H, W, 3)
    except Exception:  # decord 0.6.0 fails on some frame widths (e.g. 16, 48): "The size must exactly match"
        frames = None
    if frames is None or frames.ndim != 4 or frames.shape[-1] != 3:  # (it also returns 6 channels for 16x16)
        frames = _read_frames_pyav(path, idx)
    return torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()


def _read_frames_pyav(path: Path, indices: Sequence[int]) -> np.ndarray:
    """Decode frames ``indices`` of ``path`` with PyAV (fallback for decord); uint8 ``(T, H, W, 3)``."""
    import av

    wanted = set(indices)
    decoded: dict[int, np.ndarray] = {}
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                decoded[i] = frame.to_ndarray(format="rgb24")
            if len(decoded) == len(wanted):
                break
    missing = sorted(wanted - set(decoded))
    if missing:
        raise VideoFormatError(f"video {path}: frames {missing[:5]} could not be decoded")
    return np.stack([decoded[i] for i in indices])


def frame_grid(videos: torch.Tensor, max_frames: int = 8, pad: int = 2) -> np.ndarray:
    """Lay out uint8 ``(B, T, 3, H, W)`` as an ``(rows=B, cols<=max_frames)`` grid, ``(H', W', 3)`` uint8."""
    validate_video(videos)
    b, t, _, h, w = videos.shape
    cols = min(t, max_frames)
    idx = np.linspace(0, t - 1, cols).round().astype(int) if t > cols else np.arange(t)
    grid = np.full((b * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, dtype=np.uint8)
    v = videos.permute(0, 1, 3, 4, 2).cpu().numpy()
    for i in range(b):
        for j, k in enumerate(idx):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[y : y + h, x : x + w] = v[i, k]
    return grid


def save_frame_grid(path: str | Path, videos: torch.Tensor, max_frames: int = 8) -> Path:
    """Write :func:`frame_grid` of ``videos`` to a PNG file."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(frame_grid(videos, max_frames=max_frames)).save(path)
    return path


def grid_shape(n: int) -> tuple[int, int]:
    """A near-square (rows, cols) layout for ``n`` tiles."""
    cols = math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols
