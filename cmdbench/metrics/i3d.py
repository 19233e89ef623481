"""Inception-v1 I3D (Carreira & Zisserman, 2017) for FVD, and the feature extractors built on it.

:class:`InceptionI3d` is written for cmdbench, but its module names, parameter/buffer names and shapes
follow the public PyTorch port of the TF-hub Kinetics-400 I3D (piergiaj/pytorch-i3d ``pytorch_i3d.py``,
Apache-2.0, as vendored by VideoGPT ``videogpt/fvd/pytorch_i3d.py``, MIT, and used by TATS and PVDM), so
``i3d_pretrained_400.pt`` loads with ``strict=True``:

    Conv3d_1a_7x7, MaxPool3d_2a_3x3, Conv3d_2b_1x1, Conv3d_2c_3x3, MaxPool3d_3a_3x3, Mixed_3b, Mixed_3c,
    MaxPool3d_4a_3x3, Mixed_4b..Mixed_4f, MaxPool3d_5a_2x2, Mixed_5b, Mixed_5c, avg_pool, dropout, logits

Each ``Unit3D`` holds ``conv3d`` (no bias) and ``bn``; each ``Mixed_*`` block holds ``b0, b1a, b1b, b2a,
b2b, b3b`` units (and the parameter-free pool ``b3a``); ``logits`` is a 1x1x1 conv with bias. Padding is
TF "SAME" computed from the input size. VideoGPT's port uses BatchNorm ``eps=1e-5`` (TF's Sonnet uses
1e-3); the default here is VideoGPT's, so values reproduce VideoGPT/TATS/PVDM/CMD. The output FVD uses is
the 400 Kinetics logits averaged over time (TF-hub ``RGB/inception_i3d/Mean:0``).

Extractors turn uint8 videos ``(B, T, 3, H, W)`` into float64 features ``(B, 400)``:
:class:`I3DExtractor` (this network + :mod:`cmdbench.metrics.preprocess`) and
:class:`TorchScriptI3DExtractor` (StyleGAN-V's ``i3d_torchscript.pt``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cmdbench.metrics.preprocess import Preprocessing, to_extractor_input
from cmdbench.video import VideoFormatError, validate_video

NUM_CLASSES = 400
# (name, [b0, b1a, b1b, b2a, b2b, b3b] output channels) of the Inception blocks, in order.
MIXED_BLOCKS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("Mixed_3b", (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", (128, 128, 192, 32, 96, 64)),
    ("Mixed_4b", (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5b", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", (384, 192, 384, 48, 128, 128)),
)
# Strides (t, h, w) of the layers that downsample, in order: Conv3d_1a, MaxPool 2a, 3a, 4a, 5a.
DOWNSAMPLING_STRIDES = ((2, 2, 2), (1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2))
AVG_POOL = (2, 7, 7)
# Feature layers in forward order (the names of the public port's end points).
ENDPOINTS = (
    "Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3",
    "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f",
    "MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c",
)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding (front, back) of one axis: total ``max(k - s, 0)`` or ``max(k - size % s, 0)``."""
    total = max(kernel - stride, 0) if size % stride == 0 else max(kernel - size % stride, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int]) -> torch.Tensor:
    pads: list[int] = []
    for dim in (2, 1, 0):  # F.pad lists the last axis first: w, h, t
        pads.extend(same_padding(x.shape[2 + dim], kernel[dim], stride[dim]))
    return F.pad(x, pads)


def feature_grid(num_frames: int, height: int = 224, width: int = 224) -> tuple[int, int, int]:
    """Size ``(t, h, w)`` of the logits grid for an input clip (before the time average).

    "SAME" layers give ``ceil(n / stride)``; the final ``AvgPool3d(2, 7, 7)`` is "VALID": ``n - k + 1``.
    """
    t, h, w = num_frames, height, width
    for st, sh, sw in DOWNSAMPLING_STRIDES:
        t, h, w = math.ceil(t / st), math.ceil(h / sh), math.ceil(w / sw)
    return t - AVG_POOL[0] + 1, h - AVG_POOL[1] + 1, w - AVG_POOL[2] + 1


def min_frames() -> int:
    """Fewest input frames for which the time axis survives the average pool (9 for this network)."""
    n = 1
    while feature_grid(n)[0] < 1:
        n += 1
    return n


MIN_FRAMES = min_frames()


class Unit3D(nn.Module):
    """Conv3d ("SAME" padding, bias only without BN) -> optional BatchNorm3d -> optional ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: Sequence[int] = (1, 1, 1),
        stride: Sequence[int] = (1, 1, 1),
        *,
        activation: bool = True,
        batch_norm: bool = True,
        bias: bool = False,
        bn_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.activation = tuple(kernel), tuple(stride), activation
        self.conv3d = nn.Conv3d(in_channels, out_channels, self.kernel, self.stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(out_channels, eps=bn_eps, momentum=0.001) if batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_pad_same(x, self.kernel, self.stride))  # (B, C_out, T', H', W')
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.activation else x


class MaxPool3dSame(nn.Module):
    """Max pool with TF "SAME" zero padding (inputs are post-ReLU, so zeros never win over data)."""

    def __init__(self, kernel: Sequence[int], stride: Sequence[int]) -> None:
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionBlock(nn.Module):
    """Four branches concatenated on channels: 1x1 | 1x1->3x3 | 1x1->3x3 | pool3x3->1x1."""

    def __init__(self, in_channels: int, out: Sequence[int], bn_eps: float) -> None:
        super().__init__()
        self.b0 = Unit3D(in_channels, out[0], bn_eps=bn_eps)
        self.b1a = Unit3D(in_channels, out[1], bn_eps=bn_eps)
        self.b1b = Unit3D(out[1], out[2], (3, 3, 3), bn_eps=bn_eps)
        self.b2a = Unit3D(in_channels, out[3], bn_eps=bn_eps)
        self.b2b = Unit3D(out[3], out[4], (3, 3, 3), bn_eps=bn_eps)
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, out[5], bn_eps=bn_eps)
        self.out_channels = out[0] + out[2] + out[4] + out[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x)))
        return torch.cat(branches, dim=1)  # (B, out_channels, T, H, W)


class InceptionI3d(nn.Module):
    """Inception-v1 I3D; ``forward`` maps ``(B, 3, T, 224, 224)`` in [-1, 1] to time-averaged logits ``(B, 400)``.

    ``width_divisor`` > 1 divides every channel count (a random-weight miniature with the same topology,
    for CPU tests); the real network is ``width_divisor=1``.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, *, bn_eps: float = 1e-5, width_divisor: int = 1) -> None:
        super().__init__()
        self.num_classes, self.width_divisor = num_classes, width_divisor

        def ch(c: int) -> int:
            return max(1, c // width_divisor)

        self.Conv3d_1a_7x7 = Unit3D(3, ch(64), (7, 7, 7), (2, 2, 2), bn_eps=bn_eps)
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(ch(64), ch(64), bn_eps=bn_eps)
        self.Conv3d_2c_3x3 = Unit3D(ch(64), ch(192), (3, 3, 3), bn_eps=bn_eps)
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        channels = ch(192)
        for name, out in MIXED_BLOCKS:
            if name == "Mixed_4b":
                self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))
            if name == "Mixed_5b":
                self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))
            block = InceptionBlock(channels, [ch(c) for c in out], bn_eps)
            setattr(self, name, block)
            channels = block.out_channels
        self.avg_pool = nn.AvgPool3d(AVG_POOL, stride=(1, 1, 1))
        self.dropout = nn.Dropout(0.5)  # identity in eval mode
        self.logits = Unit3D(channels, num_classes, activation=False, batch_norm=False, bias=True)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Mixed_5c output ``(B, 1024, ceil(T/8), ceil(H/32), ceil(W/32))``."""
        for name in ENDPOINTS:
            x = getattr(self, name)(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != 3:
            raise VideoFormatError(f"I3D input must be (B, 3, T, H, W), got {tuple(x.shape)}")
        t, h, w = feature_grid(*x.shape[2:])
        if t < 1 or h < 1 or w < 1:
            raise VideoFormatError(
                f"I3D input (B, 3, T={x.shape[2]}, H={x.shape[3]}, W={x.shape[4]}) is too small: at least "
                f"{MIN_FRAMES} frames at 224x224 are needed (the 2x7x7 average pool runs out of input)"
            )
        x = self.logits(self.dropout(self.avg_pool(self.features(x))))  # (B, 400, t, h, w)
        return x.mean(dim=(2, 3, 4))  # (B, 400); h = w = 1 at 224x224, as TF-hub's Mean over time


def init_variance_preserving_(model: InceptionI3d) -> InceptionI3d:
    """Kaiming-normal (fan-in, ReLU) conv weights, in place, so random-weight features still vary with the
    input (PyTorch's default init shrinks activations layer by layer until the logits are ~constant)."""
    for m in model.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


def state_dict_sha256(module: nn.Module) -> str:
    """sha256 over the names, shapes and bytes of a module's state dict (identity of random weights)."""
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --- extractors ----------------------------------------------------------------------------------------
@runtime_checkable
class FeatureExtractor(Protocol):
    """uint8 videos ``(B, T, 3, H, W)`` -> float64 features ``(B, dim)``.

    name: registry-style name; dim: feature dimension; min_frames: fewest frames accepted;
    checksum: identity of the weights (sha256 of the file, or of a random state dict);
    preprocessing: how frames are prepared (recorded with every statistic). Optional, read with
    ``getattr``: ``device`` and ``dtype`` (the numerics statistics are keyed on; CPU / float32 when absent)
    and ``weights_path`` (the file the weights came from, recorded with FVD values).
    """

    name: str
    dim: int
    min_frames: int
    checksum: str
    preprocessing: Preprocessing

    def extract(self, videos: torch.Tensor) -> np.ndarray: ...


class I3DExtractor:
    """:class:`InceptionI3d` + :func:`~cmdbench.metrics.preprocess.to_extractor_input`."""

    def __init__(
        self,
        model: InceptionI3d,
        preprocessing: Preprocessing,
        *,
        name: str,
        checksum: str,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 8,
        weights_path: str | Path | None = None,
    ) -> None:
        if preprocessing.resize == "detector":
            raise ValueError(
                f"extractor {name!r} is an InceptionI3d and takes prepared frames, but this protocol resizes inside "
                "StyleGAN-V's TorchScript detector (resize='detector', the stylegan-v preset: extractor "
                "i3d_torchscript). Use it under the videogpt (default), tats or tf-reference preset "
                "(--protocol videogpt)"
            )
        self.model = model.to(device=device, dtype=dtype).eval()
        self.preprocessing, self.name, self.checksum = preprocessing, name, checksum
        self.device, self.dtype, self.batch_size = torch.device(device), dtype, batch_size
        self.dim, self.min_frames = model.num_classes, MIN_FRAMES
        self.weights_path = str(weights_path) if weights_path is not None else None

    @torch.no_grad()
    def extract(self, videos: torch.Tensor) -> np.ndarray:
        validate_video(videos, min_frames=self.min_frames)
        out = []
        for chunk in videos.split(self.batch_size):
            x = to_extractor_input(chunk, self.preprocessing)  # (b, 3, T, s, s) float32
            out.append(self.model(x.to(self.device, self.dtype)).double().cpu())  # (b, 400)
        return torch.cat(out).numpy()


class TorchScriptI3DExtractor:
    """StyleGAN-V's TorchScript port of the TF-hub I3D (``i3d_torchscript.pt``).

    With ``preprocessing.resize == "detector"`` (StyleGAN-V's own call) uint8 ``(B, 3, T, H, W)`` goes in
    with ``rescale=True, resize=True`` (the module maps to [-1, 1] and resizes to 224 itself). Otherwise
    frames are prepared here to 224x224 in [-1, 1] and passed with ``rescale=False, resize=False``
    (the call used by universome/fvd-comparison).
    """

    def __init__(
        self,
        detector: Any,
        preprocessing: Preprocessing,
        *,
        name: str,
        checksum: str,
        device: str | torch.device = "cpu",
        batch_size: int = 8,
        dim: int = NUM_CLASSES,
        weights_path: str | Path | None = None,
    ) -> None:
        if preprocessing.resize != "detector" and (preprocessing.size, preprocessing.value_range) != (
            224,
            (-1.0, 1.0),
        ):
            raise ValueError("the TorchScript detector takes 224x224 in [-1, 1] when it does not resize itself")
        self.detector, self.preprocessing, self.name, self.checksum = detector, preprocessing, name, checksum
        self.device, self.batch_size, self.dim, self.min_frames = torch.device(device), batch_size, dim, MIN_FRAMES
        self.dtype = torch.float32  # the TorchScript module computes in float32
        self.weights_path = str(weights_path) if weights_path is not None else None

    @torch.no_grad()
    def extract(self, videos: torch.Tensor) -> np.ndarray:
        validate_video(videos, min_frames=self.min_frames)
        out = []
        for chunk in videos.split(self.batch_size):
            if self.preprocessing.resize == "detector":
                x = chunk.permute(0, 2, 1, 3, 4).contiguous().to(self.device)  # (b, 3, T, H, W) uint8
                feats = self.detector(x, rescale=True, resize=True, return_features=True)
            else:
                x = to_extractor_input(chunk, self.preprocessing).to(self.device)  # (b, 3, T, 224, 224)
                feats = self.detector(x, rescale=False, resize=False, return_features=True)
            feats = feats.double().cpu()
            if feats.shape != (len(chunk), self.dim):
                raise ValueError(
                    f"detector {self.name} returned features of shape {tuple(feats.shape)}; expected "
                    f"({len(chunk)}, {self.dim}) (wrong file or wrong call flags?)"
                )
            out.append(feats)
        return torch.cat(out).numpy()


# --- loading ----------------------------------------------------------------------------------------------
def _weights_path(name: str, path: str | Path | None) -> Path:
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"I3D weight file {p} does not exist")
        return p
    from cmdbench import weights  # lazy: the registry of known weight files

    return Path(weights.require(name))


def load_i3d_pretrained_400(path: str | Path, *, bn_eps: float = 1e-5) -> InceptionI3d:
    """Load ``i3d_pretrained_400.pt`` (a state dict) into :class:`InceptionI3d` with ``strict=True``."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"I3D weight file {path} cannot be read as a torch state dict: {err}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    model = InceptionI3d(NUM_CLASSES, bn_eps=bn_eps)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"I3D weight file {path} does not match InceptionI3d(400): {err}") from None
    return model.eval()


def load_torchscript_detector(path: str | Path, device: str | torch.device = "cpu") -> Any:
    """``torch.jit.load`` a TorchScript detector (StyleGAN-V's ``i3d_torchscript.pt``), in eval mode."""
    try:
        return torch.jit.load(str(path), map_location=device).eval()
    except Exception as err:
        raise ValueError(f"{path} is not a loadable TorchScript file: {err}") from None


EXTRACTOR_NAMES = ("i3d_pretrained_400", "i3d_torchscript", "i3d-random", "i3d-random-tiny")


def make_extractor(
    name: str,
    preprocessing: Preprocessing,
    *,
    path: str | Path | None = None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    batch_size: int = 8,
    seed: int = 0,
) -> FeatureExtractor:
    """Build a named extractor.

    ``i3d_pretrained_400`` / ``i3d_torchscript``: real weights from ``path`` or ``cmdbench.weights``.
    ``i3d-random``: full-size I3D with seeded random weights (cost, throughput). ``i3d-random-tiny``:
    the same topology with channels divided by 16 (CPU tests). Random extractors' checksums are the
    sha256 of their state dicts, so statistics built with them never mix with real ones.
    ``i3d`` (``EvalProtocol``'s default) means ``i3d_pretrained_400``.
    """
    if name == "i3d":
        name = "i3d_pretrained_400"
    if name == "i3d_pretrained_400":
        p = _weights_path(name, path)
        model = load_i3d_pretrained_400(p)
        return I3DExtractor(model, preprocessing, name=name, checksum=file_sha256(p), device=device,
                            dtype=dtype, batch_size=batch_size, weights_path=p)
    if name == "i3d_torchscript":
        p = _weights_path(name, path)
        return TorchScriptI3DExtractor(load_torchscript_detector(p, device), preprocessing, name=name,
                                       checksum=file_sha256(p), device=device, batch_size=batch_size,
                                       weights_path=p)
    if name in ("i3d-random", "i3d-random-tiny"):
        with torch.random.fork_rng(devices=[]):  # seeded without touching the caller's RNG
            torch.manual_seed(seed)
            model = init_variance_preserving_(InceptionI3d(NUM_CLASSES, width_divisor=16 if name.endswith("tiny") else 1))
        return I3DExtractor(model, preprocessing, name=name, checksum=state_dict_sha256(model), device=device,
                            dtype=dtype, batch_size=batch_size)
    raise ValueError(f"unknown feature extractor {name!r}; allowed {EXTRACTOR_NAMES}")
