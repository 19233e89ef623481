"""The video convention: ``torch.uint8``, shape ``(B, T, 3, H, W)``, RGB, values 0..255.

Validation with clear errors, float <-> uint8 conversion, resizing, frame striding, mp4 writing
(PyAV, libx264) and reading (decord), and frame grids to PNG.

Storage path. A video scored in memory and the same video written to mp4 and read back are not the same
input: H.264 at crf 18 in yuv420p changes pixels by several grey levels (chroma subsampling and
quantisation), and FVD is sensitive to that (evaluation-protocols.md §1.7, pitfall 6). So every number
records how its videos were stored (:data:`IN_MEMORY`, :func:`mp4_storage`, :func:`storage_of` for a
file), and :func:`codec_round_trip` puts in-memory videos through exactly what :func:`write_mp4` +
:func:`read_video` do, so ``bench`` and ``sample`` + ``evaluate --videos`` can score the same pixels.
Odd frame sizes survive the round trip: yuv420p needs even sides, so :func:`write_mp4` pads by edge
replication, records the true size in the container's ``comment`` tag, and :func:`read_video` crops back.
"""

from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO

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


# --- mp4 storage ----------------------------------------------------------------------------------------

IN_MEMORY = "in-memory uint8 (no codec)"
# Chroma subsampling of the pixel formats libx264 takes: frame sides must be multiples of (h, w).
PIX_FMT_MULTIPLE: dict[str, tuple[int, int]] = {"yuv420p": (2, 2), "yuv422p": (1, 2), "yuv444p": (1, 1)}
_TAG = "cmdbench write_mp4"
_TAG_RE = re.compile(r"cmdbench write_mp4: size=(\d+)x(\d+) codec=(\S+) crf=(\S+) pix_fmt=(\S+)")


def mp4_storage(codec: str = "libx264", crf: int = 18, pix_fmt: str = "yuv420p") -> str:
    """The storage label of videos written by :func:`write_mp4` with these settings, e.g.
    ``"mp4 libx264 crf=18 yuv420p"`` (recorded with every number computed from such files)."""
    return f"mp4 {codec} crf={crf} {pix_fmt}"


def _check_codec(codec: str, pix_fmt: str, crf: int) -> None:
    if codec != "libx264":
        raise ValueError(f"codec {codec!r}; allowed 'libx264' (H.264, what `cmdbench sample` writes)")
    if pix_fmt not in PIX_FMT_MULTIPLE:
        raise ValueError(f"pix_fmt {pix_fmt!r}; allowed {sorted(PIX_FMT_MULTIPLE)}")
    if not 0 <= int(crf) <= 51:
        raise ValueError(f"crf {crf}; allowed 0..51 (x264's constant rate factor; 0 is lossless in YUV)")


def _encode(out: str | BinaryIO, video: torch.Tensor, *, fps: float, crf: int, pix_fmt: str, codec: str) -> None:
    """Encode uint8 ``(T, 3, H, W)`` into an mp4 container ``out`` (a path or a binary file object).

    Sides that the pixel format cannot hold (odd sides in yuv420p) are padded by edge replication; the
    true size and the settings go into the container's ``comment`` tag, which :func:`read_video` reads.
    """
    import av

    _check_codec(codec, pix_fmt, crf)
    frames = video.permute(0, 2, 3, 1).contiguous().cpu().numpy()  # (T, H, W, 3)
    t, h, w, _ = frames.shape
    mh, mw = PIX_FMT_MULTIPLE[pix_fmt]
    ph, pw = -h % mh, -w % mw
    if ph or pw:
        frames = np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    with av.open(out, mode="w", format="mp4") as container:
        container.metadata["comment"] = f"{_TAG}: size={h}x{w} codec={codec} crf={crf} pix_fmt={pix_fmt}"
        stream = container.add_stream(codec, rate=round(fps))
        stream.width, stream.height = w + pw, h + ph
        stream.pix_fmt = pix_fmt
        stream.options = {"crf": str(crf)}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_mp4(path: str | Path, video: torch.Tensor, fps: float = 8.0, crf: int = 18, *,
              pix_fmt: str = "yuv420p", codec: str = "libx264") -> Path:
    """Write one uint8 ``(T, 3, H, W)`` video to ``path`` as H.264 mp4 with PyAV (atomic: temp file, rename).

    Storage label: :func:`mp4_storage`. Any frame size: odd sides are padded for yuv420p and cropped back
    by :func:`read_video`, so ``read_video(write_mp4(p, v))`` has ``v``'s shape (pixels change: lossy codec).
    """
    if video.ndim == 5 and video.shape[0] == 1:
        video = video[0]
    validate_video(video.unsqueeze(0), name=f"video for {path}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    _encode(str(tmp), video, fps=fps, crf=crf, pix_fmt=pix_fmt, codec=codec)
    tmp.replace(path)
    return path


def codec_round_trip(videos: torch.Tensor, *, crf: int = 18, pix_fmt: str = "yuv420p", codec: str = "libx264",
                     fps: float = 8.0) -> torch.Tensor:
    """uint8 ``(B, T, 3, H, W)`` -> the same videos after :func:`write_mp4` and :func:`read_video`, in memory.

    The same pixels as writing each video with these settings and reading it back (tested), so in-memory
    scoring (``cmdbench bench``) can see the pixels that ``cmdbench sample`` + ``evaluate --videos`` see.
    Record :func:`mp4_storage` (``crf``, ``pix_fmt``) with the numbers. Shape and dtype are kept.
    Caveat: the x264/libav stack here is not bit-reproducible on every input: encoding the same frames
    twice occasionally gave slightly different pixels (seen on random-noise clips at small sizes, about
    1 in 500 encodes in yuv420p and more often in yuv444p), so "the same" means up to that codec noise.
    """
    import av

    validate_video(videos)
    out = []
    for video in videos:
        buf = io.BytesIO()
        _encode(buf, video, fps=fps, crf=crf, pix_fmt=pix_fmt, codec=codec)
        buf.seek(0)
        with av.open(buf, mode="r") as container:
            frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])  # (T, H', W', 3)
        if len(frames) != video.shape[0]:
            raise VideoFormatError(f"codec round trip returned {len(frames)} frames for {video.shape[0]}")
        out.append(torch.from_numpy(frames[:, : video.shape[-2], : video.shape[-1]]).permute(0, 3, 1, 2))
    return torch.stack(out).contiguous()


@lru_cache(maxsize=4096)
def _container_info(path: str, size: int, mtime_ns: int) -> dict[str, Any]:
    """Container format, codec, pixel format, frame size and cmdbench tag of a video file (PyAV; cached)."""
    import av

    try:
        with av.open(path, metadata_errors="ignore") as container:
            stream = container.streams.video[0]
            info = {"format": container.format.name.split(",")[0], "codec": stream.codec_context.name,
                    "pix_fmt": stream.codec_context.pix_fmt, "height": stream.height, "width": stream.width,
                    "comment": container.metadata.get("comment", "")}
    except Exception as err:  # PyAV raises many types (InvalidDataError, IndexError for no video stream, ...)
        return {"error": str(err).splitlines()[0] if str(err) else type(err).__name__}
    tag = _TAG_RE.search(info.pop("comment") or "")
    info["tag"] = None
    if tag:
        th, tw = int(tag.group(1)), int(tag.group(2))
        info["tag"] = {"height": th, "width": tw, "codec": tag.group(3), "crf": tag.group(4), "pix_fmt": tag.group(5)}
    return info


def video_file_info(path: str | Path) -> dict[str, Any]:
    """What a video file says about its storage: ``format, codec, pix_fmt, height, width, tag`` (the
    :func:`write_mp4` settings and true size, or ``None``), or ``{"error": ...}`` when PyAV cannot open it."""
    st = os.stat(path)
    return dict(_container_info(str(path), st.st_size, st.st_mtime_ns))


def storage_of(path: str | Path) -> str:
    """The storage label of a video source: :func:`mp4_storage` for files :func:`write_mp4` wrote, else
    ``"<extension> <codec> <pix_fmt> (crf unknown)"``; frame directories ``"frames (<ext>)"``."""
    path = Path(path)
    if path.is_dir():
        exts = sorted({p.suffix.lower().lstrip(".") for p in path.iterdir() if p.is_file()})
        return f"frames ({', '.join(exts) or 'none'})"
    info = video_file_info(path)
    if "error" in info:
        return f"{path.suffix.lstrip('.').lower() or 'file'} (unreadable by PyAV: {info['error']})"
    tag = info["tag"]
    if tag:
        return mp4_storage(tag["codec"], tag["crf"], tag["pix_fmt"])
    container = path.suffix.lstrip(".").lower() or info["format"]
    return f"{container} {info['codec']} {info['pix_fmt']} (crf unknown)"


def crop_to_stored_size(path: str | Path, frames: np.ndarray) -> np.ndarray:
    """Crop ``(T, H, W, 3)`` frames decoded from a :func:`write_mp4` file back to the size it recorded.

    Any reader of such files (decord, PyAV) calls this after decoding; other files come back unchanged.
    """
    path = Path(path)
    if path.suffix.lower() not in (".mp4", ".m4v", ".mov"):
        return frames
    tag = video_file_info(path).get("tag")
    if not tag:
        return frames
    th, tw = tag["height"], tag["width"]
    h, w = frames.shape[1:3]
    if (th, tw) != (h, w) and 0 <= h - th < 2 and 0 <= w - tw < 2:  # only ever the padding write_mp4 added
        frames = frames[:, :th, :tw]
    return frames


def quiet_decord() -> None:
    """Silence FFmpeg's log lines that decord prints on damaged files (``av_log``; one per broken frame).

    decord's own one-line "ERROR opening" message still appears (it is not behind a log level); errors
    reach the caller as exceptions either way. Process-wide and idempotent; DataLoader workers forked
    afterwards inherit it.
    """
    import decord

    decord.logging.set_level(decord.logging.QUIET)


def read_video(path: str | Path, indices: Sequence[int] | None = None) -> torch.Tensor:
    """Read frames of a video file with decord; returns uint8 ``(T, 3, H, W)``.

    ``indices`` selects frames (all by default); an index past the end is an error, never clamped.
    Files written by :func:`write_mp4` come back at the size they were written with (padding cropped).
    """
    import decord

    quiet_decord()
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
    frames = crop_to_stored_size(path, frames)
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).contiguous()


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
