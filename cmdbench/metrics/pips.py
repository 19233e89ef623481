"""PIPs++ point tracker (Zheng, Harley et al., ICCV 2023, "PointOdyssey"), as FVMD runs it.

FVMD (:mod:`cmdbench.metrics.fvmd`) tracks a grid of query points through every 16-frame clip with PIPs++
and turns the tracks into velocity and acceleration histograms. This module is the tracker, written here
from the paper and the network description of the ``fvmd`` 1.0.0 package (``fvmd/nets/pips2.py``, Apache-2.0,
itself PIPs++'s ``nets/pips2.py``; read to match the checkpoint's key layout and the order of operations,
see ``ORIGIN.md``). Module and parameter names equal the checkpoint's, so the released
``pips2_weights.pth`` (``model_state_dict``) loads with ``strict=True``.

The network, for ``B`` clips of ``S`` frames and ``N`` query points:

1. **Feature maps** (:class:`BasicEncoder`): a RAFT-style residual CNN at stride 8 per frame; the outputs
   of its four stages are resized to ``(H/8, W/8)``, concatenated, fused to ``latent_dim`` channels.
2. **Correlation pyramids** (:class:`CorrPyramid`): the query feature of every point (sampled on frame 0,
   and on later iterations also the features at the point's estimate 2 and 4 frames back) dotted with
   every feature-map location at 4 average-pooled scales, ``/ sqrt(C)``; a ``(2r+1)²`` window around the
   current estimate is read from each level: ``3 x levels x (2r+1)²`` numbers per point and frame.
3. **Update** (:class:`DeltaBlock`): a 1-D residual CNN over time (8 blocks, 128 -> 1024 channels)
   reads those correlations plus a sin/cos embedding of the current frame-to-frame motion and
   predicts a correction of every point's position in every frame; 16 iterations, frame 0 stays at
   the query. FVMD calls it with ``beautify=True``: the corrections of the last quarter are halved.

Numerics follow the reference operation for operation (float32, the same order of additions), so on the
same device the tracks are the reference's to the last bit (``tests/metrics/test_fvmd.py``). The one
deviation is structural: the per-iteration correlation of the 2- and 4-frames-back features is skipped
on the first iteration, where those features *are* the frame-0 features (the reference computes the
same pyramid three times).

Shapes: clips ``(B, S, 3, H, W)`` float in 0..255, ``H, W >= 8·2^levels`` = 128 (every pyramid level
needs two cells; FVMD works at 256); queries/tracks ``(B, S, N, 2)`` as ``(x, y)`` pixels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# --- configuration ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PipsConfig:
    """Sizes of the tracker. The defaults are PIPs++ as released (17.6 M parameters); :data:`TINY` is a
    random-weight miniature of the same code path for CPU tests (channel counts cut, four update blocks)."""

    stride: int = 8
    encoder_widths: tuple[int, int, int, int] = (64, 96, 128, 128)  # stem = widths[0]
    latent_dim: int = 128
    hidden_dim: int = 256  # recorded by the reference; its update block does not use it
    corr_levels: int = 4
    corr_radius: int = 3
    delta_base_filters: int = 128
    delta_blocks: int = 8

    @property
    def corr_dim(self) -> int:
        """Correlation numbers per point and frame: 3 pyramids x levels x (2r+1)²."""
        return 3 * self.corr_levels * (2 * self.corr_radius + 1) ** 2

    @property
    def min_size(self) -> int:
        """Smallest frame side that leaves every pyramid level at least two cells (the window read divides
        by ``side - 1``: a one-cell level gives NaN), 128 pixels for the released tracker."""
        return self.stride * 2**self.corr_levels


RELEASED = PipsConfig()
TINY = PipsConfig(encoder_widths=(8, 8, 16, 16), latent_dim=16, delta_base_filters=16, delta_blocks=4)


# --- 1. feature encoder -------------------------------------------------------------------------------


class ResidualBlock2d(nn.Module):
    """Two 3x3 convs with instance norm + ReLU, a 1x1 strided projection on the skip when downsampling."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, padding=1, stride=stride)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1)
        self.norm1 = nn.InstanceNorm2d(planes)
        self.norm2 = nn.InstanceNorm2d(planes)
        self.downsample = None
        if stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride),
                                            nn.InstanceNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, H, W) -> (B, C, H/s, W/s)
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        if self.downsample is not None:
            x = self.downsample(x)
        return F.relu(x + y)


class BasicEncoder(nn.Module):
    """Per-frame features at ``1/stride`` resolution: stem (7x7, /2), four stages (/1, /2, /2, /2), all four
    resized (bilinear, corners aligned) to ``H/stride x W/stride``, concatenated, 3x3 + 1x1 fused."""

    def __init__(self, widths: tuple[int, ...], output_dim: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3)
        self.norm1 = nn.InstanceNorm2d(widths[0])
        ins = (widths[0], *widths[:-1])
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            nn.Sequential(ResidualBlock2d(i, w, s), ResidualBlock2d(w, w, 1))
            for i, w, s in zip(ins, widths, (1, 2, 2, 2), strict=True)
        )
        self.conv2 = nn.Conv2d(sum(widths), output_dim * 2, kernel_size=3, padding=1)
        self.norm2 = nn.InstanceNorm2d(output_dim * 2)
        self.conv3 = nn.Conv2d(output_dim * 2, output_dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) in [-1, 1] -> (B, C, H/8, W/8)
        size = (x.shape[-2] // self.stride, x.shape[-1] // self.stride)
        x = F.relu(self.norm1(self.conv1(x)))
        a = self.layer1(x)
        b = self.layer2(a)
        c = self.layer3(b)
        d = self.layer4(c)
        stages = [F.interpolate(t, size, mode="bilinear", align_corners=True) for t in (a, b, c, d)]
        x = F.relu(self.norm2(self.conv2(torch.cat(stages, dim=1))))
        return self.conv3(x)


# --- 2. correlation pyramids --------------------------------------------------------------------------


def bilinear_sample2d(im: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Bilinear read of ``im`` (B, C, H, W) at pixel coordinates ``x, y`` (B, N) -> (B, C, N), borders
    clamped. Written as four gathers so the arithmetic (weights, order of the sum) is the reference's."""
    b, c, h, w = im.shape
    n = x.shape[1]
    x, y = x.float(), y.float()
    x0, y0 = torch.floor(x).int(), torch.floor(y).int()
    x1, y1 = x0 + 1, y0 + 1
    x0c, x1c = x0.clamp(0, w - 1), x1.clamp(0, w - 1)
    y0c, y1c = y0.clamp(0, h - 1), y1.clamp(0, h - 1)
    base = (torch.arange(b, dtype=torch.int64, device=x.device) * (h * w)).reshape(b, 1).repeat(1, n)
    row0, row1 = base + y0c * w, base + y1c * w
    flat = im.permute(0, 2, 3, 1).reshape(b * h * w, c)
    i00, i01 = flat[(row0 + x0c).long()], flat[(row0 + x1c).long()]
    i10, i11 = flat[(row1 + x0c).long()], flat[(row1 + x1c).long()]
    x0f, x1f, y0f, y1f = x0.float(), x1.float(), y0.float(), y1.float()
    w00 = ((x1f - x) * (y1f - y)).unsqueeze(2)
    w01 = ((x - x0f) * (y1f - y)).unsqueeze(2)
    w10 = ((x1f - x) * (y - y0f)).unsqueeze(2)
    w11 = ((x - x0f) * (y - y0f)).unsqueeze(2)
    out = w00 * i00 + w01 * i01 + w10 * i10 + w11 * i11  # (B, N, C) flattened
    return out.view(b, -1, c).permute(0, 2, 1)


def feature_pyramid(fmaps: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """``(B, S, C, H, W)`` and ``levels - 1`` successive 2x2 average poolings of it."""
    b, s, c, h, w = fmaps.shape
    out = [fmaps]
    for _ in range(levels - 1):
        pooled = F.avg_pool2d(out[-1].reshape(b * s, c, h, w), 2, stride=2)
        h, w = pooled.shape[-2:]
        out.append(pooled.reshape(b, s, c, h, w))
    return out


class CorrVolumes:
    """Correlation maps of three query-feature sets with every location of every pyramid level.

    Slot 0 holds the frame-0 query features, slot 1 the features at each point's estimate 2 frames back,
    slot 2 those 4 frames back (the reference's three ``CorrBlock`` objects). Per level one tensor
    ``(B·S·N, 3, h, w)``, so one ``grid_sample`` reads the windows of all three (bilinear reads are per
    channel: the numbers equal three separate reads).
    """

    def __init__(self, levels: list[torch.Tensor], num_points: int, radius: int) -> None:
        b, s = levels[0].shape[:2]
        self.levels, self.radius = levels, radius
        self.volumes = [torch.empty(b * s * num_points, 3, *f.shape[-2:], dtype=f.dtype, device=f.device)
                        for f in levels]

    def correlate(self, slot: int, targets: torch.Tensor) -> None:  # targets (B, S, N, C)
        b, s, n, c = targets.shape
        scale = torch.sqrt(torch.tensor(c).float())
        for fmaps, volume in zip(self.levels, self.volumes, strict=True):
            h, w = fmaps.shape[-2:]
            corr = torch.matmul(targets, fmaps.view(b, s, c, h * w))  # (B, S, N, h*w)
            volume[:, slot] = corr.view(b * s * n, h, w) / scale

    def windows(self, coords: torch.Tensor, slots: int = 3) -> torch.Tensor:
        """``(2r+1)²`` windows around ``coords`` (B, S, N, 2) at stride 8 -> (B, S, N, 3·levels·(2r+1)²),
        ordered slot, level, window (the reference's order). ``slots=1`` reads slot 0 and repeats it."""
        b, s, n, _ = coords.shape
        r = self.radius
        d = torch.linspace(-r, r, 2 * r + 1)
        # (1, 2r+1, 2r+1, 2); as in the reference, the x offset runs along the window's first axis
        delta = torch.stack(torch.meshgrid(d, d, indexing="ij"), dim=-1).to(coords.device).view(1, 2 * r + 1, 2 * r + 1, 2)
        out = []
        for level, volume in enumerate(self.volumes):
            h, w = volume.shape[-2:]
            grid = coords.reshape(b * s * n, 1, 1, 2) / 2**level + delta  # (BSN, 2r+1, 2r+1, 2) pixels
            grid = 2 * grid / torch.tensor([w - 1, h - 1], dtype=grid.dtype, device=grid.device) - 1  # to [-1, 1]
            out.append(F.grid_sample(volume[:, :slots], grid, align_corners=True).flatten(2))  # (BSN, slots, R²)
        win = torch.stack(out, dim=2).float()  # (BSN, slots, levels, R²)
        if slots == 1:
            win = win.expand(-1, 3, -1, -1)
        return win.reshape(b, s, n, -1)


# --- 3. update block ------------------------------------------------------------------------------------


class Conv1dPad(nn.Module):
    """``nn.Conv1d`` with TensorFlow "same" padding (zeros split left/right, the extra one on the right)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride
        # stride 1, odd kernel: the "same" padding is symmetric and independent of L, so the conv pads itself
        # (no padded copy of the input; the same numbers)
        self.symmetric = stride == 1 and kernel_size % 2 == 1
        padding = (kernel_size - 1) // 2 if self.symmetric else 0
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, L) -> (B, C, ceil(L/stride))
        if self.symmetric:
            return self.conv(x)
        length = x.shape[-1]
        out_len = (length + self.stride - 1) // self.stride
        pad = max(0, (out_len - 1) * self.stride + self.kernel_size - length)
        return self.conv(F.pad(x, (pad // 2, pad - pad // 2)))


class ResidualBlock1d(nn.Module):
    """Pre-activation 1-D residual block (norm, ReLU, conv, twice); more output channels are matched by
    zero channels added on both sides of the skip. The first block skips the first norm + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, first: bool) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.first = in_channels, out_channels, first
        self.norm1 = nn.InstanceNorm1d(in_channels)
        self.conv1 = Conv1dPad(in_channels, out_channels, kernel_size)
        self.norm2 = nn.InstanceNorm1d(out_channels)
        self.conv2 = Conv1dPad(out_channels, out_channels, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, L) -> (B, Cout, L)
        out = x if self.first else F.relu(self.norm1(x))
        out = self.conv2(F.relu(self.norm2(self.conv1(out))))
        lo = (self.out_channels - self.in_channels) // 2
        out[:, lo : lo + self.in_channels] += x  # the skip, zero-padded to out_channels (adding 0 is exact)
        return out


def sincos_embedding(xy: torch.Tensor, channels: int, temperature: int = 10000) -> torch.Tensor:
    """``(B, S, 2)`` motion -> ``(B, S, channels + 2)``: sin/cos of x and y at ``channels/4`` frequencies
    ``temperature^(-k/(channels/4 - 1))``, then the raw ``(x, y)``."""
    b, s, _ = xy.shape
    if channels % 4:
        raise ValueError(f"sin/cos embedding needs channels divisible by 4, got {channels}")
    omega = torch.arange(channels // 4, device=xy.device) / (channels // 4 - 1)
    omega = 1.0 / (temperature**omega)
    x = xy[:, :, 0].flatten()[:, None] * omega[None, :]
    y = xy[:, :, 1].flatten()[:, None] * omega[None, :]
    pe = torch.cat((x.sin(), x.cos(), y.sin(), y.cos()), dim=1).reshape(b, s, channels).type(xy.dtype)
    return torch.cat([pe, xy], dim=2)


class DeltaBlock(nn.Module):
    """Per point, over time: correlations + motion embedding -> position correction ``(x, y)`` per frame.

    Channels: ``base`` for the first two blocks, doubled every second block after that (128, 128, 256, 256,
    512, 512, 1024, 1024 for the released 8 blocks).
    """

    def __init__(self, config: PipsConfig) -> None:
        super().__init__()
        self.latent_dim = config.latent_dim
        in_channels = config.corr_dim + config.latent_dim + 2
        base = config.delta_base_filters
        self.first_block_conv = Conv1dPad(in_channels, base, kernel_size=3)
        self.first_block_norm = nn.InstanceNorm1d(base)  # in the released layout; not applied (reference)
        blocks, out_ch = [], base
        for i in range(config.delta_blocks):
            in_ch = base if i == 0 else base * 2 ** ((i - 1) // 2)
            out_ch = in_ch * 2 if i % 2 == 0 and i else in_ch
            blocks.append(ResidualBlock1d(in_ch, out_ch, kernel_size=3, first=i == 0))
        self.basicblock_list = nn.ModuleList(blocks)
        self.final_norm = nn.InstanceNorm1d(out_ch)  # in the released layout; not applied (reference)
        self.dense = nn.Linear(out_ch, 2)

    def forward(self, fcorr: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:  # (BN, S, K), (BN, S, 2) -> (BN, S, 2)
        x = torch.cat([fcorr, sincos_embedding(flow, self.latent_dim)], dim=2).permute(0, 2, 1)
        out = F.relu(self.first_block_conv(x))
        for block in self.basicblock_list:
            out = block(out)
        return self.dense(F.relu(out).permute(0, 2, 1))


# --- the tracker ----------------------------------------------------------------------------------------


class Pips(nn.Module):
    """PIPs++: ``forward(queries (B, S, N, 2), rgbs (B, S, 3, H, W) in 0..255) -> tracks (B, S, N, 2)``."""

    def __init__(self, config: PipsConfig = RELEASED) -> None:
        super().__init__()
        self.config = config
        self.stride = config.stride
        self.latent_dim = config.latent_dim
        self.fnet = BasicEncoder(config.encoder_widths, config.latent_dim, config.stride)
        self.delta_block = DeltaBlock(config)
        self.norm = nn.GroupNorm(1, config.latent_dim)  # in the released layout; unused by the forward pass

    def check_size(self, height: int, width: int) -> None:
        m = self.config.min_size
        if height < m or width < m:
            raise ValueError(f"PIPs++ needs frames of at least {m}x{m} pixels (stride {self.stride}, "
                             f"{self.config.corr_levels} pyramid levels); got {height}x{width}")

    def forward(self, queries: torch.Tensor, rgbs: torch.Tensor, iters: int = 16,
                beautify: bool = True) -> torch.Tensor:
        """Track: ``queries`` gives each point's start (frame 0 is the query; later frames the initial guess,
        FVMD uses "zero velocity": the query repeated). Returns the final estimate, frame 0 pinned."""
        b, s, n, _ = queries.shape
        _, _, c, h, w = rgbs.shape
        self.check_size(h, w)
        cfg = self.config
        rgbs = 2 * (rgbs / 255.0) - 1.0
        fmaps = self.fnet(rgbs.reshape(b * s, c, h, w))
        fmaps = fmaps.reshape(b, s, self.latent_dim, h // self.stride, w // self.stride)  # (B, S, C, h8, w8)
        h8, w8 = fmaps.shape[-2:]

        coords = queries.clone() / float(self.stride)  # (B, S, N, 2) at feature resolution
        query = coords[:, 0].clone()
        feat0 = bilinear_sample2d(fmaps[:, 0], coords[:, 0, :, 0], coords[:, 0, :, 1]).permute(0, 2, 1)  # (B, N, C)
        feats0 = feat0.unsqueeze(1).repeat(1, s, 1, 1)  # (B, S, N, C)
        corr = CorrVolumes(feature_pyramid(fmaps, cfg.corr_levels), n, cfg.corr_radius)
        corr.correlate(0, feats0)  # frame-0 features, once
        back = {1: (torch.arange(s) - 2).clip(min=0), 2: (torch.arange(s) - 4).clip(min=0)}

        for itr in range(iters):
            coords = coords.detach()
            if itr == 0:  # the 2- and 4-back features are still the frame-0 features: read slot 0 only
                windows = corr.windows(coords, slots=1)
            else:
                for slot, frames in back.items():
                    at = coords[:, frames].reshape(b * s, n, 2)
                    maps = fmaps[:, frames].reshape(b * s, self.latent_dim, h8, w8)
                    feats = bilinear_sample2d(maps, at[:, :, 0], at[:, :, 1]).permute(0, 2, 1)  # (BS, N, C)
                    corr.correlate(slot, feats.reshape(b, s, n, self.latent_dim))
                windows = corr.windows(coords)  # (B, S, N, K)
            fcorrs = windows.permute(0, 2, 1, 3).reshape(b * n, s, -1)  # (BN, S, K)
            flows = (coords[:, 1:] - coords[:, :-1]).permute(0, 2, 1, 3).reshape(b * n, s - 1, 2)
            flows = torch.cat([flows, flows[:, -1:]], dim=1)  # (BN, S, 2)
            delta = self.delta_block(fcorrs, flows)  # (BN, S, 2)
            if beautify and itr > 3 * iters // 4:
                delta = delta * 0.5
            coords = coords + delta.reshape(b, n, s, 2).permute(0, 2, 1, 3)
            coords[:, 0] = query  # frame 0 is the query
        return coords * self.stride


# --- building and loading -------------------------------------------------------------------------------


def config_dict(config: PipsConfig) -> dict:
    return asdict(config)


def state_dict_of(checkpoint: object, where: str) -> dict[str, torch.Tensor]:
    """The model weights inside a loaded PIPs++ checkpoint: its ``model_state_dict`` (the released file
    also holds the optimizer), or the object itself when it already is a state dict."""
    if isinstance(checkpoint, dict) and "model_state_dict" in checkpoint:
        checkpoint = checkpoint["model_state_dict"]
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ValueError(f"{where} is not a PIPs++ checkpoint: expected a state dict or a dict with "
                         "'model_state_dict' (what FVMD's pips2_weights.pth holds)")
    return {k.removeprefix("module."): v for k, v in checkpoint.items()}  # DataParallel saves 'module.'


def load_checkpoint(path: str | Path, *, trusted_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read a PIPs++ checkpoint's state dict. ``torch.load(weights_only=True)`` first; the released file
    pickles more than tensors (its optimizer state), so a file that needs the full unpickler is read only
    with ``trusted_pickle=True`` -- :func:`cmdbench.metrics.fvmd.load_tracker` sets it after the file's
    sha256 matched a known or trusted value (``cmdbench weights verify``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PIPs++ checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle.UnpicklingError for the globals the safe loader refuses
        if not trusted_pickle:
            raise ValueError(
                f"{path} holds more than tensors and cannot be read with torch's safe loader ({err}); it is "
                "read with the full unpickler only after its sha256 is verified (`cmdbench weights verify "
                "pips2_fvmd`, or `--trust` for a copy you vouch for)"
            ) from None
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return state_dict_of(ckpt, str(path))


def build_pips(state_dict: dict[str, torch.Tensor] | None = None, config: PipsConfig = RELEASED) -> Pips:
    """A PIPs++ in eval mode; with ``state_dict`` loaded strictly (every key, every shape). A state dict of
    another layout raises a ``ValueError`` naming a few missing, unexpected and mis-shaped keys."""
    model = Pips(config)
    if state_dict is not None:
        ours = model.state_dict()
        missing = [k for k in ours if k not in state_dict]
        unexpected = [k for k in state_dict if k not in ours]
        shapes = [f"{k} {tuple(state_dict[k].shape)} (expected {tuple(v.shape)})" for k, v in ours.items()
                  if k in state_dict and state_dict[k].shape != v.shape]
        if missing or unexpected or shapes:
            parts = [f"{len(x)} {what} ({', '.join(x[:4])}{', ...' if len(x) > 4 else ''})"
                     for what, x in (("missing keys", missing), ("unexpected keys", unexpected),
                                     ("shape mismatches", shapes)) if x]
            raise ValueError(f"state dict does not match PIPs++ {config}: {'; '.join(parts)}")
        model.load_state_dict(state_dict, strict=True)
    return model.eval()


def random_pips(config: PipsConfig = RELEASED, seed: int = 0) -> Pips:
    """Seeded random weights (PyTorch's default initialisation, the caller's RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Pips(config).eval()
