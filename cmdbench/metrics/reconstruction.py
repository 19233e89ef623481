"""Frame-level reconstruction metrics: PSNR, SSIM and LPIPS of a video against its original.

Inputs are pairs of uint8 ``(B, T, 3, H, W)`` tensors of the same shape: ``videos`` (reconstructions,
predictions) and ``references`` (the originals); video ``i`` frame ``t`` is compared with reference ``i``
frame ``t``. Every metric is first computed **per frame** (float64 ``(B, T)``), then averaged over the
frames of each video (**per video**), then over videos.

Conventions (those of common_metrics_on_video_quality, JunyaoHu, ``calculate_{psnr,ssim,lpips}.py``, which
users of video-prediction and autoencoder papers compare with; implemented here from the formulas):

- **PSNR** [dB] of one frame: ``10 log10(MAX^2 / MSE)`` with MSE over all ``3 x H x W`` values and MAX = 255
  on uint8 (identical to MAX = 1 on [0, 1]); a frame with MSE < 1e-10 on the [0, 1] scale (in practice an
  identical frame) scores :data:`PSNR_CAP_DB` = 100 dB, as the peer code does, instead of infinity. The
  video value is the **mean of per-frame PSNR** (not the PSNR of the mean MSE, which weights the worst
  frames less); the reported value, the mean over videos of the per-video means, equals the peer's
  ``final`` (the mean over all frames) whenever videos have the same length.
- **SSIM** (Wang et al. 2004) per channel on [0, 1] values with the standard Gaussian window: 11 x 11,
  sigma 1.5, K1 = 0.01, K2 = 0.03, population (biased) local variances, mean of the SSIM map over the
  **valid** region (no padding: the outer 5 pixels are not window centres), then mean over the 3 RGB
  channels. The same as ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1, channel_axis=0)``. Frames need at least 11 x 11 pixels.
- **LPIPS** v0.1 (``lpips`` package, :func:`cmdbench.perceptual.load_lpips`; AlexNet by default) of each
  frame mapped to [-1, 1] (``x / 127.5 - 1``): the package's definition (per-layer spatial average). The
  peer code calls it with ``spatial=True`` and averages the upsampled map, which weights the border of
  each layer's map slightly differently; values differ in the third decimal.

``value`` is the mean over videos, ``std`` the sample standard deviation of the per-video values
(``ddof=1``), ``n`` the number of videos; ``extra`` holds the number of frames, ``frame_std`` (the
population std over all frames, the peer's ``*_std['final']``) and ``per_frame_index_mean`` (the mean over
videos of frame ``t``: the peer's per-timestamp curve).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from cmdbench.interfaces import MetricValue
from cmdbench.registry import METRICS
from cmdbench.video import IN_MEMORY, validate_video

PSNR_CAP_DB = 100.0  # score of a frame whose MSE on [0, 1] is below MSE_FLOOR (common_metrics convention)
MSE_FLOOR = 1e-10
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
FRAMES_PER_CALL = 64  # frames per LPIPS forward / at most per SSIM step (bounds memory)
SSIM_PIXELS_PER_CALL = 2**22  # float64 values per SSIM map and step (~32 MiB each; about 12 maps live)
RECONSTRUCTION_METRICS = ("psnr", "ssim", "lpips")


class PairMismatchError(ValueError):
    """Videos and references that cannot be compared frame by frame."""


def check_pair(videos: torch.Tensor, references: torch.Tensor, *, name: str = "reconstruction metric") -> None:
    """Both uint8 ``(B, T, 3, H, W)`` of the same shape, else a clear error naming both shapes."""
    validate_video(videos, name=f"{name}: videos")
    validate_video(references, name=f"{name}: references")
    if videos.shape != references.shape:
        raise PairMismatchError(
            f"{name}: videos {tuple(videos.shape)} and references {tuple(references.shape)} differ in shape; "
            "each video is compared with its original frame by frame, so (B, T, 3, H, W) must match "
            "(resize or cut them to the same frames first)"
        )


def _frames(x: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, T, 3, H, W)`` -> float64 ``(B*T, 3, H, W)`` in [0, 1]."""
    b, t = x.shape[:2]
    return x.reshape(b * t, *x.shape[2:]).double() / 255.0


# --- PSNR -------------------------------------------------------------------------------------------------


def psnr_per_frame(videos: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """PSNR [dB] of every frame: float64 ``(B, T)`` (MAX = 255 on uint8, capped at 100 dB; module docstring)."""
    check_pair(videos, references, name="psnr")
    b, t = videos.shape[:2]
    diff = videos.reshape(b, t, -1).double() - references.reshape(b, t, -1).double()  # (B, T, 3HW) in levels
    mse = diff.square().mean(dim=2) / 255.0**2  # (B, T) on the [0, 1] scale
    psnr = 10.0 * torch.log10(1.0 / mse.clamp_min(MSE_FLOOR))
    return torch.where(mse < MSE_FLOOR, torch.full_like(psnr, PSNR_CAP_DB), psnr)


# --- SSIM -------------------------------------------------------------------------------------------------


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Normalised 1-D Gaussian, float64 ``(size,)`` (the separable factor of the 2-D window)."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _band(n: int, g: torch.Tensor) -> torch.Tensor:
    """``(n, n-k+1)`` float64 matrix whose column ``j`` holds ``g`` at rows ``j..j+k-1``: valid correlation."""
    k = g.numel()
    band = torch.zeros(n, n - k + 1, dtype=torch.float64)
    for j in range(n - k + 1):
        band[j : j + k, j] = g
    return band


def _blur_valid(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter, valid region: ``(N, C, H, W)`` -> ``(N, C, H-k+1, W-k+1)`` float64.

    Written as two banded matrix products (``rows.T @ x @ cols``) rather than a depthwise float64
    convolution: BLAS runs them about 4x faster on a CPU (measured at 256x256), with the same values
    up to rounding.
    """
    return rows.T @ x @ cols


def ssim_per_frame(videos: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """SSIM of every frame (mean over the valid map and the RGB channels): float64 ``(B, T)``."""
    check_pair(videos, references, name="ssim")
    b, t, _, h, w = videos.shape
    if h < SSIM_WINDOW or w < SSIM_WINDOW:
        raise PairMismatchError(f"ssim: frames of {h}x{w} pixels are smaller than the {SSIM_WINDOW}x{SSIM_WINDOW} "
                                "Gaussian window; SSIM needs at least 11x11")
    g = gaussian_window()
    rows, cols = _band(h, g), _band(w, g)  # (H, H-10), (W, W-10)
    c1, c2 = SSIM_K1**2, SSIM_K2**2  # data range 1
    x_all, y_all = _frames(videos), _frames(references)  # (BT, 3, H, W)
    chunk = max(1, min(FRAMES_PER_CALL, SSIM_PIXELS_PER_CALL // (3 * h * w)))
    out = []
    for x, y in zip(x_all.split(chunk), y_all.split(chunk), strict=True):
        mu_x, mu_y = _blur_valid(x, rows, cols), _blur_valid(y, rows, cols)
        var_x = _blur_valid(x * x, rows, cols) - mu_x**2
        var_y = _blur_valid(y * y, rows, cols) - mu_y**2
        cov = _blur_valid(x * y, rows, cols) - mu_x * mu_y
        ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
        out.append(ssim_map.mean(dim=(2, 3)).mean(dim=1))  # (n,): per channel, then over channels
    return torch.cat(out).reshape(b, t)


# --- LPIPS ------------------------------------------------------------------------------------------------


@torch.no_grad()
def lpips_per_frame(model: torch.nn.Module, videos: torch.Tensor, references: torch.Tensor, *,
                    frames_per_call: int = FRAMES_PER_CALL) -> torch.Tensor:
    """LPIPS of every frame with ``model`` (:func:`cmdbench.perceptual.load_lpips`): float64 ``(B, T)``."""
    check_pair(videos, references, name="lpips")
    b, t = videos.shape[:2]
    p = next(model.parameters())
    out = []
    for x, y in zip(videos.reshape(b * t, *videos.shape[2:]).split(frames_per_call),
                    references.reshape(b * t, *references.shape[2:]).split(frames_per_call), strict=True):
        x = x.to(p.device, torch.float32) / 127.5 - 1.0  # (n, 3, H, W) in [-1, 1]
        y = y.to(p.device, torch.float32) / 127.5 - 1.0
        try:
            out.append(model(x.to(p.dtype), y.to(p.dtype), normalize=False).reshape(-1).double().cpu())
        except RuntimeError:
            from cmdbench.perceptual import check_frame_size

            check_frame_size(model, *x.shape[-2:])  # a clear error when the frames are too small for LPIPS
            raise
    return torch.cat(out).reshape(b, t)


def reconstruction_scores(videos: torch.Tensor, references: torch.Tensor, *,
                          lpips_model: torch.nn.Module | None = None) -> dict[str, np.ndarray]:
    """Per-video PSNR, SSIM (and LPIPS with a model): name -> float64 ``(B,)`` means over frames.

    For harnesses that gather per-video values themselves (e.g. sharded reproductions).
    """
    scores = {"psnr": psnr_per_frame(videos, references), "ssim": ssim_per_frame(videos, references)}
    if lpips_model is not None:
        scores["lpips"] = lpips_per_frame(lpips_model, videos, references)
    return {k: v.mean(dim=1).numpy() for k, v in scores.items()}


# --- Streaming metrics ------------------------------------------------------------------------------------


class _FramePairMetric:
    """Streaming mean of a per-frame pair metric (see the module docstring for the statistics)."""

    name = ""
    protocol = ""
    unit = ""
    higher_is_better: bool | None = None
    paired = True

    def __init__(self, *, storage: str = IN_MEMORY) -> None:
        self.storage = storage
        self.reset()

    def per_frame(self, videos: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def reset(self) -> None:
        self._frames: list[np.ndarray] = []  # one float64 (T,) per video, in order

    def update(self, videos: torch.Tensor, prompts: Sequence[str] | None = None, *,
               references: torch.Tensor | None = None) -> None:
        """Score a batch of pairs: ``videos`` and ``references`` uint8 ``(B, T, 3, H, W)``; prompts unused."""
        if references is None:
            raise ValueError(f"{self.name} compares each video with its original: pass references= (uint8, the "
                             "videos' shape); it cannot score generated videos that have no originals")
        values = self.per_frame(videos, references).numpy()  # (B, T)
        self._frames.extend(values)

    @property
    def per_frame_values(self) -> list[np.ndarray]:
        """float64 ``(T_i,)`` per-frame values of every video seen since :meth:`reset`, in order."""
        return list(self._frames)

    @property
    def per_video_values(self) -> np.ndarray:
        """float64 ``(N,)``: the mean over each video's frames."""
        return np.array([f.mean() for f in self._frames], dtype=np.float64)

    def state_dict(self) -> dict[str, Any]:
        return {"frames": [f.copy() for f in self._frames]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._frames = [np.asarray(f, dtype=np.float64) for f in state["frames"]]

    def provenance(self) -> dict[str, Any]:
        return {}

    def compute(self) -> MetricValue:
        if not self._frames:
            raise ValueError(f"{self.name}.compute() before any update(): no video pairs were scored")
        per_video = self.per_video_values
        frames = np.concatenate(self._frames)
        longest = max(f.size for f in self._frames)
        per_index = [float(np.mean([f[t] for f in self._frames if f.size > t])) for t in range(longest)]
        return MetricValue(
            name=self.name, value=float(per_video.mean()), unit=self.unit, higher_is_better=self.higher_is_better,
            std=float(per_video.std(ddof=1)) if per_video.size > 1 else None, n=int(per_video.size),
            protocol=self.protocol,
            extra={"frames": int(frames.size), "frames_per_video": sorted({int(f.size) for f in self._frames}),
                   "frame_std": float(frames.std()), "per_frame_index_mean": per_index,
                   "std_kind": "sample std of the per-video means (ddof=1)", "storage": self.storage,
                   **self.provenance()},
        )


class PSNR(_FramePairMetric):
    """Mean per-frame PSNR [dB] of videos against their originals (MAX 255, capped at 100 dB)."""

    name = "psnr"
    protocol = "psnr/rgb-max255/cap100db/frame-mean"
    unit = "dB"
    higher_is_better = True

    def __init__(self, *, device: str | torch.device = "cpu", storage: str = IN_MEMORY) -> None:
        super().__init__(storage=storage)  # device accepted for a uniform factory signature; PSNR runs on the CPU

    def per_frame(self, videos: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
        return psnr_per_frame(videos, references)

    def provenance(self) -> dict[str, Any]:
        return {"max_value": 255, "cap_db": PSNR_CAP_DB, "mse_floor_unit_scale": MSE_FLOOR,
                "video_value": "mean of per-frame PSNR"}


class SSIM(_FramePairMetric):
    """Mean per-frame SSIM (Gaussian 11x11, sigma 1.5, K1 0.01, K2 0.03, valid region, RGB channel mean)."""

    name = "ssim"
    protocol = "ssim/gauss11-sigma1.5-k0.01-0.03/valid/rgb-mean/frame-mean"
    unit = ""
    higher_is_better = True

    def __init__(self, *, device: str | torch.device = "cpu", storage: str = IN_MEMORY) -> None:
        super().__init__(storage=storage)

    def per_frame(self, videos: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
        return ssim_per_frame(videos, references)


class LPIPS(_FramePairMetric):
    """Mean per-frame LPIPS v0.1 (``lpips`` package; backbone from ``cmdbench weights``); lower is better.

    net: ``"alex"`` (default, the peers' choice) or ``"vgg"``; backbone: ``"imagenet"`` (the definition)
    or ``"random"`` (tests only: the protocol and name say ``RANDOM``); model: an already loaded
    :func:`cmdbench.perceptual.load_lpips` module (then net/backbone only label it).
    """

    unit = ""
    higher_is_better = False

    def __init__(self, *, net: str = "alex", backbone: str = "imagenet", device: str | torch.device = "cpu",
                 batch_size: int = FRAMES_PER_CALL, model: torch.nn.Module | None = None,
                 storage: str = IN_MEMORY) -> None:
        from cmdbench.perceptual import load_lpips, lpips_label

        if batch_size < 1:
            raise ValueError(f"LPIPS batch_size must be >= 1, got {batch_size}")
        self.net, self.backbone, self.batch_size = net, backbone, batch_size
        self.model = model if model is not None else load_lpips(net, device=device, backbone=backbone)
        self.name = "lpips"
        self.protocol = f"{lpips_label(net, backbone)}/frame-mean"  # says RANDOM for the test stand-in
        super().__init__(storage=storage)

    def per_frame(self, videos: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
        return lpips_per_frame(self.model, videos, references, frames_per_call=self.batch_size)

    def provenance(self) -> dict[str, Any]:
        from cmdbench.perceptual import lpips_provenance

        return {**lpips_provenance(self.net, self.backbone), "input_range": "[-1, 1] (x / 127.5 - 1)",
                "spatial": "per-layer spatial average (lpips default)"}


METRICS.register("psnr", PSNR, description="PSNR [dB] of videos vs their originals: mean of per-frame PSNR "
                                           "(MAX 255, capped at 100 dB; higher is better; paired)")
METRICS.register("ssim", SSIM, description="SSIM of videos vs their originals (Gaussian 11x11 sigma 1.5, valid "
                                           "region, RGB mean), mean over frames (higher is better; paired)")
METRICS.register("lpips", LPIPS, description="LPIPS v0.1 AlexNet (net=vgg option) of videos vs their originals, "
                                             "mean over frames (lower is better; paired; backbone via "
                                             "`cmdbench weights fetch torchvision_alexnet_imagenet1k_v1`)")
