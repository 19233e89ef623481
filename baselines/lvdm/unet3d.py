"""LVDM's text-to-video 3D UNet (He et al., "Latent Video Diffusion Models for High-Fidelity Long Video
Generation", arXiv:2211.13221), configuration ``configs/lvdm_short/text2video.yaml``.

An SD 1.x UNet trunk applied to every frame (``kernel_size_t = 1``: all convolutions are 1x3x3 Conv3d,
so no temporal convolution), in which every spatial transformer block is a spatio-temporal block:

    x = x + SpatialSelfAttn(LN1(x))            per frame, over H*W tokens
    x = x + TemporalSelfAttn(LN4(x))           per pixel, over T tokens, relative positions (Shaw et al.)
    x = x + SpatialCrossAttn(LN2(x), text)     per frame, to the CLIP ViT-L text states
    x = x + TemporalSelfAttn(LN5(x))           per pixel, over T tokens, relative positions
    x = x + GEGLU-FeedForward(LN3(x))

Module and parameter names follow the public MIT-licensed LVDM code (YingqingHe/LVDM @ 4117a2a,
``lvdm/models/modules/openaimodel3d.py`` and ``attention_temporal.py``) so its ``t2v.ckpt`` state dict loads
after stripping the ``model.diffusion_model.`` prefix; the code itself is written anew.

GroupNorms act on the 5D tensor, so (as in LVDM) their statistics pool over time as well as space.

Shapes: ``x`` is ``(B, C, T, H, W)`` latents; ``context`` ``(B, L, 768)``; timesteps ``(B,)`` or scalar.
Spatial attention uses ``F.scaled_dot_product_attention``; temporal attention is explicit (its relative
position terms need the attention weights), on T = 16 tokens it is a negligible share of the cost.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


def conv_1x3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv3d:
    """A per-frame 3x3 convolution as LVDM writes it (``kernel_size_t=1, padding_t=0``)."""
    return nn.Conv3d(c_in, c_out, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1))


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[cos(t w_i), sin(t w_i)]``, ``w_i = max_period^(-i/half)``: ``(B,) -> (B, dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


# --- Residual blocks and resampling ------------------------------------------------------------------


class ResBlock(nn.Module):
    """GN-SiLU-conv, + time embedding, GN-SiLU-dropout-conv, skip (1x1x1 conv when channels change)."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, groups: int = 32) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(nn.GroupNorm(groups, channels), nn.SiLU(), conv_1x3x3(channels, out_channels))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            nn.GroupNorm(groups, out_channels), nn.SiLU(), nn.Dropout(0.0), conv_1x3x3(out_channels, out_channels)
        )
        self.skip_connection = (
            nn.Identity() if out_channels == channels else nn.Conv3d(channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)  # (B, C_out, T, H, W)
        h = h + self.emb_layers(emb).to(h.dtype)[:, :, None, None, None]  # + (B, C_out, 1, 1, 1)
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    """Stride-(1, 2, 2) 1x3x3 convolution: ``(B, C, T, H, W) -> (B, C, T, H/2, W/2)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = conv_1x3x3(channels, channels, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest x2 in H and W, then a 1x3x3 convolution: ``(B, C, T, H, W) -> (B, C, T, 2H, 2W)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = conv_1x3x3(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, (x.shape[2], x.shape[3] * 2, x.shape[4] * 2), mode="nearest")
        return self.conv(x)


# --- Attention ---------------------------------------------------------------------------------------


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``(N, L, heads*d) -> (N, heads, L, d)``."""
    n, length, _ = x.shape
    return x.view(n, length, heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``(N, heads, L, d) -> (N, L, heads*d)``."""
    n, heads, length, d = x.shape
    return x.transpose(1, 2).reshape(n, length, heads * d)


class CrossAttention(nn.Module):
    """Multi-head (cross-)attention, bias-free q/k/v, biased output projection; SDPA for the scores."""

    def __init__(self, query_dim: int, heads: int, dim_head: int, context_dim: int | None = None) -> None:
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q = split_heads(self.to_q(x), self.heads)  # (N, h, Lq, d)
        k = split_heads(self.to_k(context), self.heads)  # (N, h, Lk, d)
        v = split_heads(self.to_v(context), self.heads)  # (N, h, Lk, d)
        return self.to_out(merge_heads(F.scaled_dot_product_attention(q, k, v)))  # (N, Lq, query_dim)


class RelativePosition(nn.Module):
    """Learned embeddings of clipped relative distances ``s - t`` in ``[-max, max]`` (Shaw et al., 2018)."""

    def __init__(self, num_units: int, max_relative_position: int) -> None:
        super().__init__()
        self.max_relative_position = max_relative_position
        self.embeddings_table = nn.Parameter(torch.empty(2 * max_relative_position + 1, num_units))
        nn.init.xavier_uniform_(self.embeddings_table)

    def forward(self, length_q: int, length_k: int) -> torch.Tensor:
        """``-> (length_q, length_k, num_units)``."""
        device = self.embeddings_table.device
        distance = torch.arange(length_k, device=device)[None, :] - torch.arange(length_q, device=device)[:, None]
        m = self.max_relative_position
        return self.embeddings_table[distance.clamp(-m, m) + m]


class TemporalSelfAttention(nn.Module):
    """Self-attention over frames with relative-position keys and values:

    ``a_ts = softmax_s(q_t . (k_s + r^K_{s-t}) / sqrt(d))``, ``o_t = sum_s a_ts (v_s + r^V_{s-t})``.
    """

    def __init__(self, query_dim: int, heads: int, dim_head: int, temporal_length: int,
                 use_relative_position: bool = True) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.scale = dim_head**-0.5
        self.use_relative_position = use_relative_position
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(query_dim, inner, bias=False)
        self.to_v = nn.Linear(query_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(0.0))
        if use_relative_position:
            self.relative_position_k = RelativePosition(dim_head, temporal_length)
            self.relative_position_v = RelativePosition(dim_head, temporal_length)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        q = split_heads(self.to_q(x), self.heads)  # (N, h, T, d)
        k = split_heads(self.to_k(x), self.heads)  # (N, h, T, d)
        v = split_heads(self.to_v(x), self.heads)  # (N, h, T, d)
        sim = (q @ k.transpose(-1, -2)) * self.scale  # (N, h, T, T)
        if self.use_relative_position:
            rel_k = self.relative_position_k(t, t).to(q.dtype)  # (T, T, d)
            sim = sim + torch.einsum("nhtd,tsd->nhts", q, rel_k) * self.scale
        attn = sim.softmax(dim=-1)  # (N, h, T, T)
        out = attn @ v  # (N, h, T, d)
        if self.use_relative_position:
            rel_v = self.relative_position_v(t, t).to(q.dtype)  # (T, T, d)
            out = out + torch.einsum("nhts,tsd->nhtd", attn, rel_v)
        return self.to_out(merge_heads(out))  # (N, T, query_dim)


class GEGLU(nn.Module):
    """``x W -> (a, g)``, ``a * gelu(g)`` (Shazeer, 2020)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)
        return a * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU to ``4 dim``, dropout, linear back to ``dim``."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SpatioTemporalBlock(nn.Module):
    """One LVDM transformer block (see module docstring) on ``(B, C, T, H, W)``."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int, temporal_length: int,
                 use_relative_position: bool) -> None:
        super().__init__()
        self.attn1 = CrossAttention(dim, heads, dim_head)
        self.attn2 = CrossAttention(dim, heads, dim_head, context_dim=context_dim)
        self.ff = FeedForward(dim)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn1_tmp = TemporalSelfAttention(dim, heads, dim_head, temporal_length, use_relative_position)
        self.attn2_tmp = TemporalSelfAttention(dim, heads, dim_head, temporal_length, use_relative_position)
        self.norm4, self.norm5 = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        frames = x.permute(0, 2, 3, 4, 1).reshape(b * t, h * w, c)  # (B T, H W, C)
        frames = frames + self.attn1(self.norm1(frames))
        pixels = frames.view(b, t, h * w, c).transpose(1, 2).reshape(b * h * w, t, c)  # (B H W, T, C)
        pixels = pixels + self.attn1_tmp(self.norm4(pixels))
        frames = pixels.view(b, h * w, t, c).transpose(1, 2).reshape(b * t, h * w, c)  # (B T, H W, C)
        text = context.repeat_interleave(t, dim=0)  # (B T, L, D): each frame sees its video's prompt
        frames = frames + self.attn2(self.norm2(frames), text)
        pixels = frames.view(b, t, h * w, c).transpose(1, 2).reshape(b * h * w, t, c)  # (B H W, T, C)
        pixels = pixels + self.attn2_tmp(self.norm5(pixels))
        pixels = pixels + self.ff(self.norm3(pixels))
        return pixels.view(b, h, w, t, c).permute(0, 4, 3, 1, 2)  # (B, C, T, H, W)


class SpatialTemporalTransformer(nn.Module):
    """GroupNorm, 1x1x1 conv in, ``depth`` spatio-temporal blocks, 1x1x1 conv out, residual."""

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int, context_dim: int,
                 temporal_length: int, use_relative_position: bool, groups: int = 32) -> None:
        super().__init__()
        inner = heads * dim_head
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Conv3d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            SpatioTemporalBlock(inner, heads, dim_head, context_dim, temporal_length, use_relative_position)
            for _ in range(depth)
        )
        self.proj_out = nn.Conv3d(inner, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        h = self.proj_in(self.norm(x))  # (B, inner, T, H, W)
        for block in self.transformer_blocks:
            h = block(h, context)
        return x + self.proj_out(h)


class LayerStack(nn.ModuleList):
    """A sequence of layers; ResBlocks get the time embedding, transformers the text context."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTemporalTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


# --- The UNet ----------------------------------------------------------------------------------------


class LVDMUNet3D(ModelMixin, ConfigMixin):
    """LVDM text-to-video UNet; defaults are the published text2video configuration.

    forward: ``x (B, in_channels, T, H, W)``, ``timesteps (B,)`` or scalar, ``context (B, L, context_dim)``
    -> predicted noise ``(B, out_channels, T, H, W)``. ``H`` and ``W`` must be multiples of
    ``2 ** (len(channel_mult) - 1)``.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 4,
        model_channels: int = 320,
        channel_mult: Sequence[int] = (1, 2, 4, 4),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (4, 2, 1),
        num_heads: int = 8,
        transformer_depth: int = 1,
        context_dim: int = 768,
        temporal_length: int = 16,
        use_relative_position: bool = True,
        norm_num_groups: int = 32,
    ) -> None:
        super().__init__()
        mc, groups = model_channels, norm_num_groups
        emb_dim = 4 * mc
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        def transformer(ch: int) -> SpatialTemporalTransformer:
            # legacy=False, num_head_channels=-1: num_heads heads of ch // num_heads channels
            return SpatialTemporalTransformer(ch, num_heads, ch // num_heads, transformer_depth, context_dim,
                                              temporal_length, use_relative_position, groups)

        self.input_blocks = nn.ModuleList([LayerStack([conv_1x3x3(in_channels, mc)])])
        skip_channels = [mc]
        ch, ds = mc, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb_dim, mult * mc, groups)]
                ch = mult * mc
                if ds in attention_resolutions:
                    layers.append(transformer(ch))
                self.input_blocks.append(LayerStack(layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(LayerStack([Downsample(ch)]))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = LayerStack([ResBlock(ch, emb_dim, ch, groups), transformer(ch),
                                        ResBlock(ch, emb_dim, ch, groups)])

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), emb_dim, mc * mult, groups)]
                ch = mc * mult
                if ds in attention_resolutions:
                    layers.append(transformer(ch))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(LayerStack(layers))

        self.out = nn.Sequential(nn.GroupNorm(groups, ch), nn.SiLU(), conv_1x3x3(mc, out_channels))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        timesteps = torch.as_tensor(timesteps, device=x.device)
        if timesteps.ndim == 0:
            timesteps = timesteps[None]
        timesteps = timesteps.expand(x.shape[0])  # (B,)
        t_emb = timestep_embedding(timesteps, self.config.model_channels).to(x.dtype)  # (B, mc)
        emb = self.time_embed(t_emb)  # (B, 4 mc)
        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb, context)
            skips.append(h)
        h = self.middle_block(h, emb, context)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context)  # concat skip on channels
        return self.out(h)  # (B, out_channels, T, H, W)
