"""PVDM's diffusion network over the triplane latent (Yu et al., arXiv:2302.07685, Sec. 3.2),
configuration ``configs/latent-diffusion/base.yaml``.

One 2D UNet (ADM-style: scale-shift ResBlocks, ResBlock up/down-sampling, multi-head self-attention at
downsampling rates ``attention_resolutions``) is applied with shared weights to each of the three planes
``xy (H', W')``, ``yt (T, W')`` and ``xt (T, H')``. After every input, middle and output block the three
planes' features are flattened, concatenated and mixed by a joint 1D self-attention block, so information
flows between planes. ``cond_model``: the input convolution takes ``2 x in_channels`` (the latent of a
previous clip for long videos; zeros for a first/short clip).

Parameter names follow the public MIT-licensed PVDM code (sihyun-yu/PVDM @ 793172f, ``models/ddpm/unet.py``)
so its checkpoints load; the code is written anew. Attention uses ``F.scaled_dot_product_attention`` with
the legacy head split (per head: q, k, v contiguous in the qkv projection).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal ``[cos, sin]`` embedding: ``(B,) -> (B, dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResBlock(nn.Module):
    """ADM ResBlock with scale-shift time conditioning; ``down``/``up`` resample by 2 (avg-pool / nearest)."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, *, down: bool = False,
                 up: bool = False, groups: int = 32) -> None:
        super().__init__()
        self.resample = "down" if down else "up" if up else None
        self.in_layers = nn.Sequential(nn.GroupNorm(groups, channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
        self.out_layers = nn.Sequential(nn.GroupNorm(groups, out_channels), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers[:-1](x)  # GN, SiLU
        h = self.in_layers[-1](self._resample(h))  # (B, C_out, H', W')
        x = self._resample(x)
        scale, shift = self.emb_layers(emb).to(h.dtype)[:, :, None, None].chunk(2, dim=1)
        h = self.out_layers[0](h) * (1 + scale) + shift
        return self.skip_connection(x) + self.out_layers[1:](h)


class AttentionBlock(nn.Module):
    """GroupNorm, 1x1 qkv, multi-head self-attention over all positions, 1x1 projection, residual.

    Works on ``(B, C, *spatial)``: 2D planes (within a plane) and 1D concatenations (across planes).
    """

    def __init__(self, channels: int, num_heads: int, groups: int = 32) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)  # (B, C, L)
        qkv = self.qkv(self.norm(x)).view(b, self.num_heads, 3, c // self.num_heads, -1)  # (B, h, 3, d, L)
        q, k, v = qkv.transpose(-1, -2).unbind(2)  # (B, h, L, d) each
        out = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(b, c, -1)  # (B, C, L)
        return (x + self.proj_out(out)).reshape(b, c, *spatial)


class LayerStack(nn.ModuleList):
    """Layers applied in order; ResBlocks receive the time embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class PlaneUNet(ModelMixin, ConfigMixin):
    """PVDM's triplane UNet; defaults are the published UCF-101 configuration.

    forward: ``x (B, C, L)`` flattened planes (``L = S*S + 2*T*S``), ``timesteps (B,)`` or scalar,
    ``cond (B, C, L)`` or ``None`` (zeros) -> predicted noise ``(B, C, L)``.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 4,
        model_channels: int = 256,
        channel_mult: Sequence[int] = (1, 2, 4, 4),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (4, 2, 1),
        num_heads: int = 8,
        plane_size: int = 32,
        plane_frames: int = 16,
        cond_model: bool = True,
        norm_num_groups: int = 32,
    ) -> None:
        super().__init__()
        mc, groups = model_channels, norm_num_groups
        emb_dim = 4 * mc
        length = plane_size * plane_size + 2 * plane_frames * plane_size
        if cond_model:
            self.register_buffer("zeros", torch.zeros(1, in_channels, length))
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        def attention(ch: int) -> AttentionBlock:
            return AttentionBlock(ch, num_heads, groups)

        first_in = in_channels * 2 if cond_model else in_channels
        self.input_blocks = nn.ModuleList([LayerStack([nn.Conv2d(first_in, mc, 3, padding=1)])])
        self.input_attns = nn.ModuleList([nn.Identity()])
        skip_channels = [mc]
        ch, ds = mc, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb_dim, mult * mc, groups=groups)]
                ch = mult * mc
                if ds in attention_resolutions:
                    layers.append(attention(ch))
                self.input_blocks.append(LayerStack(layers))
                self.input_attns.append(attention(ch))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(LayerStack([ResBlock(ch, emb_dim, ch, down=True, groups=groups)]))
                self.input_attns.append(attention(ch))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = LayerStack([ResBlock(ch, emb_dim, ch, groups=groups), attention(ch),
                                        ResBlock(ch, emb_dim, ch, groups=groups)])
        self.mid_attn = attention(ch)

        self.output_blocks = nn.ModuleList()
        self.output_attns = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), emb_dim, mc * mult, groups=groups)]
                ch = mc * mult
                if ds in attention_resolutions:
                    layers.append(attention(ch))
                if level and i == num_res_blocks:
                    layers.append(ResBlock(ch, emb_dim, ch, up=True, groups=groups))
                    ds //= 2
                self.output_blocks.append(LayerStack(layers))
                self.output_attns.append(attention(ch))

        self.out = nn.Sequential(nn.GroupNorm(groups, ch), nn.SiLU(), nn.Conv2d(mc, out_channels, 3, padding=1))

    def split(self, h: torch.Tensor, size: int, frames: int) -> list[torch.Tensor]:
        """``(B, C, S*S + 2*T*S) -> [xy (B, C, S, S), yt (B, C, T, S), xt (B, C, T, S)]``."""
        xy = h[..., : size * size].unflatten(-1, (size, size))
        yt = h[..., size * size : size * (size + frames)].unflatten(-1, (frames, size))
        xt = h[..., size * (size + frames) :].unflatten(-1, (frames, size))
        return [xy, yt, xt]

    @staticmethod
    def joint(planes: list[torch.Tensor], attn: nn.Module) -> list[torch.Tensor]:
        """Concatenate the flattened planes, attend across all of them, split back."""
        shapes = [p.shape[-2:] for p in planes]
        h = attn(torch.cat([p.flatten(2) for p in planes], dim=-1))  # (B, C, L)
        sizes = [s[0] * s[1] for s in shapes]
        return [part.unflatten(-1, s) for part, s in zip(h.split(sizes, dim=-1), shapes, strict=True)]

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        timesteps = torch.as_tensor(timesteps, device=x.device)
        if timesteps.ndim == 0:
            timesteps = timesteps[None]
        emb = self.time_embed(timestep_embedding(timesteps.expand(x.shape[0]), self.config.model_channels)
                              .to(x.dtype))  # (B, 4 mc)
        if self.config.cond_model:
            cond = self.zeros.expand(x.shape[0], -1, -1).to(x.dtype) if cond is None else cond
            x = torch.cat([x, cond], dim=1)  # (B, 2C, L)
        planes = self.split(x, self.config.plane_size, self.config.plane_frames)
        skips = []
        for block, attn in zip(self.input_blocks, self.input_attns, strict=True):
            planes = [block(p, emb) for p in planes]  # shared weights on every plane
            planes = self.joint(planes, attn) if not isinstance(attn, nn.Identity) else planes
            skips.append(planes)
        planes = self.joint([self.middle_block(p, emb) for p in planes], self.mid_attn)
        for block, attn in zip(self.output_blocks, self.output_attns, strict=True):
            skip = skips.pop()
            planes = [block(torch.cat([p, s], dim=1), emb) for p, s in zip(planes, skip, strict=True)]
            planes = self.joint(planes, attn)
        return torch.cat([self.out(p).flatten(2) for p in planes], dim=-1)  # (B, C_out, L)
