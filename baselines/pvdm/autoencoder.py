"""PVDM's projected (triplane) video autoencoder (Yu et al., "Video Probabilistic Diffusion Models in
Projected Latent Space", CVPR 2023, arXiv:2302.07685, Sec. 3.1), configuration ``configs/autoencoder/base.yaml``.

Encoder: a TimeSformer (divided time / space attention with rotary positions, GEGLU feed-forward) over
8x8 patches of 16 frames of 256x256 gives features ``h (B, C, T, H', W')`` with ``H' = W' = 32``. Three
small "summary" transformers each aggregate one axis with a learned token appended (the first output
position is kept, as in the published code), giving the planes

    z_xy (B, C, H', W')   over time,    z_yt (B, C, T, W')   over height,    z_xt (B, C, T, H')  over width,

each projected by a 1x1 convolution to ``embed_dim = 4`` channels and squashed by ``tanh``. The latent is
the flattened concatenation ``(B, 4, H'W' + T W' + T H')`` = ``(B, 4, 2048)``.
Decoder: 1x1 convolutions back to ``C``, broadcast sum of the three planes to ``(B, C, T, H', W')``,
a TimeSformer, and a stride-8 transposed convolution to pixels; ``2 sigmoid(.) - 1``.

Parameter names follow the public MIT-licensed PVDM code (sihyun-yu/PVDM @ 793172f,
``models/autoencoder/autoencoder_vit.py`` and ``vit_modules.py``) so its checkpoints load; the code is
written anew. Attention scores use ``F.scaled_dot_product_attention``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from einops.layers.torch import Rearrange
from torch import nn

# --- Rotary position embeddings (TimeSformer: 1D over frames, axial 2D over patches) --------------------


def rotate_every_two(x: torch.Tensor) -> torch.Tensor:
    """``(..., 2k) -> (..., 2k)``: pairs ``(a, b) -> (-b, a)``."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


def apply_rotary(t: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``sin.shape[-1]`` channels of ``t`` (..., L, d) by position."""
    d = sin.shape[-1]
    rotated = t[..., :d] * cos + rotate_every_two(t[..., :d]) * sin
    return torch.cat([rotated, t[..., d:]], dim=-1)


class RotaryEmbedding(nn.Module):
    """Frame positions ``0..n-1`` at inverse frequencies ``10000^(-2i/d)``: ``-> sin, cos (n, d)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("inv_freqs", 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim)))

    def forward(self, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = torch.arange(n, device=device).float()[:, None] * self.inv_freqs.to(device)[None]  # (n, d/2)
        freqs = torch.cat([freqs, freqs], dim=-1)  # (n, d)
        return freqs.sin(), freqs.cos()


class AxialRotaryEmbedding(nn.Module):
    """Patch positions on ``[-1, 1]^2`` at ``dim/4`` log-spaced scales per axis: ``-> sin, cos (h w, d)``."""

    def __init__(self, dim: int, max_freq: float = 10.0) -> None:
        super().__init__()
        scales = torch.logspace(0.0, math.log(max_freq / 2) / math.log(2), dim // 4, base=2)
        self.register_buffer("scales", scales)

    def forward(self, h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        scales = self.scales.to(device)
        ys = torch.linspace(-1.0, 1.0, h, device=device)[:, None] * scales * math.pi  # (h, d/4)
        xs = torch.linspace(-1.0, 1.0, w, device=device)[:, None] * scales * math.pi  # (w, d/4)
        ys, xs = ys[:, None].expand(h, w, -1), xs[None].expand(h, w, -1)
        sin = torch.cat([ys.sin(), xs.sin()], dim=-1).reshape(h * w, -1)  # (h w, d/2)
        cos = torch.cat([ys.cos(), xs.cos()], dim=-1).reshape(h * w, -1)
        return sin.repeat_interleave(2, dim=-1), cos.repeat_interleave(2, dim=-1)  # (h w, d)


# --- TimeSformer -------------------------------------------------------------------------------------


class PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.fn(self.norm(x), *args, **kwargs)


class GEGLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = x.chunk(2, dim=-1)
        return a * F.gelu(gate)


class GEGLUFeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim * mult * 2), GEGLU(), nn.Dropout(0.0), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DividedAttention(nn.Module):
    """Attention over one axis of ``(B, F*N, dim)`` tokens: time (each patch over frames) or space."""

    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_qkv = nn.Linear(dim, heads * dim_head * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor, frames: int, axis: str, rot: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        b, length, _ = x.shape
        n = length // frames
        qkv = self.to_qkv(x).view(b, frames, n, 3, self.heads, -1)  # (B, F, N, 3, h, d)
        if axis == "time":
            qkv = qkv.permute(3, 0, 2, 4, 1, 5)  # (3, B, N, h, F, d): sequences over frames
        else:
            qkv = qkv.permute(3, 0, 1, 4, 2, 5)  # (3, B, F, h, N, d): sequences over patches
        q, k, v = qkv.unbind(0)
        q, k = apply_rotary(q, *rot), apply_rotary(k, *rot)
        out = F.scaled_dot_product_attention(q, k, v)  # same shape as q
        out = out.permute(0, 3, 1, 2, 4) if axis == "time" else out.permute(0, 1, 3, 2, 4)  # (B, F, N, h, d)
        return self.to_out(out.reshape(b, length, -1))


class TimeSformer(nn.Module):
    """``depth`` x (time attention, space attention, GEGLU FF), pre-norm residual, rotary positions."""

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, patch_dim: int | None = None) -> None:
        super().__init__()
        if patch_dim is not None:
            self.to_patch_embedding = nn.Linear(patch_dim, dim)
        self.frame_rot_emb = RotaryEmbedding(dim_head)
        self.image_rot_emb = AxialRotaryEmbedding(dim_head)
        self.layers = nn.ModuleList(
            nn.ModuleList([PreNorm(dim, DividedAttention(dim, heads, dim_head)),
                           PreNorm(dim, DividedAttention(dim, heads, dim_head)),
                           PreNorm(dim, GEGLUFeedForward(dim))])
            for _ in range(depth)
        )

    def forward(self, x: torch.Tensor, frames: int, hp: int, wp: int) -> torch.Tensor:
        """``(B, F*hp*wp, dim) -> same``."""
        frame_rot = self.frame_rot_emb(frames, x.device)
        image_rot = self.image_rot_emb(hp, wp, x.device)
        for time_attn, space_attn, ff in self.layers:
            x = x + time_attn(x, frames, "time", frame_rot)
            x = x + space_attn(x, frames, "space", image_rot)
            x = x + ff(x)
        return x


# --- Axis summaries (small ViT with a learned token) ------------------------------------------------


class SummaryAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_qkv = nn.Linear(dim, heads * dim_head * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, _ = x.shape
        q, k, v = self.to_qkv(x).view(b, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)  # 3 x (B, h, L, d)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, length, -1)
        return self.to_out(out)


class MLPFeedForward(nn.Module):
    """GELU MLP ``dim -> mlp_dim -> dim``; parameters ``net.0.*`` and ``net.3.*`` as PVDM names them."""

    def __init__(self, dim: int, mlp_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(0.0), nn.Linear(mlp_dim, dim),
                                 nn.Dropout(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SummaryTransformer(nn.Module):
    """Pre-norm ViT: ``depth`` x (attention, GELU MLP)."""

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([PreNorm(dim, SummaryAttention(dim, heads, dim_head)),
                           PreNorm(dim, MLPFeedForward(dim, mlp_dim))])
            for _ in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for attn, ff in self.layers:
            x = x + attn(x)
            x = x + ff(x)
        return x


# --- The autoencoder ---------------------------------------------------------------------------------


class TriplaneAutoencoder(ModelMixin, ConfigMixin):
    """PVDM's ``ViTAutoencoder``; defaults are the UCF-101 256x256x16 configuration.

    encode: video ``(B, 3, T, H, W)`` in [-1, 1] -> latent ``(B, embed_dim, H'W' + 2 T W')`` in (-1, 1).
    decode: latent -> video ``(B, 3, T, H, W)`` in (-1, 1).
    """

    @register_to_config
    def __init__(
        self,
        channels: int = 384,
        resolution: int = 256,
        frames: int = 16,
        patch_size: int = 8,
        depth: int = 8,
        heads: int = 8,
        dim_head: int = 64,
        embed_dim: int = 4,
        summary_depth: int = 4,
        summary_heads: int = 4,
        summary_mlp_dim: int = 512,
    ) -> None:
        super().__init__()
        c, grid = channels, resolution // patch_size
        self.encoder = TimeSformer(c, depth, heads, dim_head, patch_dim=3 * patch_size**2)
        self.decoder = TimeSformer(c, depth, heads, dim_head)
        self.to_pixel = nn.Sequential(
            Rearrange("b (t h w) c -> (b t) c h w", h=grid, w=grid),
            nn.ConvTranspose2d(c, 3, kernel_size=patch_size, stride=patch_size),
        )
        self.register_buffer("coords", torch.linspace(-1, 1, frames).unsqueeze(-1))  # kept for key parity
        self.xy_token = nn.Parameter(torch.randn(1, 1, c))
        self.xt_token = nn.Parameter(torch.randn(1, 1, c))
        self.yt_token = nn.Parameter(torch.randn(1, 1, c))
        self.xy_pos_embedding = nn.Parameter(torch.randn(1, frames + 1, c))
        self.xt_pos_embedding = nn.Parameter(torch.randn(1, grid + 1, c))
        self.yt_pos_embedding = nn.Parameter(torch.randn(1, grid + 1, c))
        summary = (c, summary_depth, summary_heads, c // 8, summary_mlp_dim)
        self.xy_quant_attn = SummaryTransformer(*summary)
        self.yt_quant_attn = SummaryTransformer(*summary)
        self.xt_quant_attn = SummaryTransformer(*summary)
        for plane in ("xy", "xt", "yt"):
            setattr(self, f"pre_{plane}", nn.Conv2d(c, embed_dim, 1))
            setattr(self, f"post_{plane}", nn.Conv2d(embed_dim, c, 1))

    @property
    def grid(self) -> int:
        return self.config.resolution // self.config.patch_size

    @property
    def latent_length(self) -> int:
        """Tokens of the flattened triplane: ``H'W' + T W' + T H'``."""
        return self.grid * self.grid + 2 * self.config.frames * self.grid

    def _summarise(self, seq: torch.Tensor, token: torch.Tensor, pos: torch.Tensor,
                   transformer: SummaryTransformer) -> torch.Tensor:
        """``(N, L, C)`` sequences + learned token -> ``(N, C)`` (first position, as published)."""
        seq = torch.cat([seq, token.expand(seq.shape[0], -1, -1)], dim=1) + pos[:, : seq.shape[1] + 1]
        return transformer(seq)[:, 0]

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        b, _, t, height, width = video.shape
        p, g = self.config.patch_size, self.grid
        patches = video.permute(0, 2, 3, 4, 1).reshape(b, t, g, p, g, p, 3)  # (B, T, gh, p, gw, p, 3)
        patches = patches.permute(0, 1, 2, 4, 3, 5, 6).reshape(b, t * g * g, p * p * 3)  # (B, T gh gw, p p 3)
        h = self.encoder(self.encoder.to_patch_embedding(patches), t, g, g)  # (B, T g g, C)
        h = h.view(b, t, g, g, -1)  # (B, T, y, x, C)
        c = h.shape[-1]
        xy = self._summarise(h.permute(0, 2, 3, 1, 4).reshape(-1, t, c), self.xy_token, self.xy_pos_embedding,
                             self.xy_quant_attn).view(b, g, g, c).permute(0, 3, 1, 2)  # (B, C, y, x)
        yt = self._summarise(h.permute(0, 1, 3, 2, 4).reshape(-1, g, c), self.yt_token, self.yt_pos_embedding,
                             self.yt_quant_attn).view(b, t, g, c).permute(0, 3, 1, 2)  # (B, C, T, x)
        xt = self._summarise(h.reshape(-1, g, c), self.xt_token, self.xt_pos_embedding,
                             self.xt_quant_attn).view(b, t, g, c).permute(0, 3, 1, 2)  # (B, C, T, y)
        planes = [torch.tanh(self.pre_xy(xy)), torch.tanh(self.pre_yt(yt)), torch.tanh(self.pre_xt(xt))]
        return torch.cat([z.flatten(2) for z in planes], dim=-1)  # (B, 4, g g + 2 T g)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        b = latent.shape[0]
        t, g = self.config.frames, self.grid
        xy = latent[:, :, : g * g].unflatten(-1, (g, g))  # (B, 4, y, x)
        yt = latent[:, :, g * g : g * (g + t)].unflatten(-1, (t, g))  # (B, 4, T, x)
        xt = latent[:, :, g * (g + t) :].unflatten(-1, (t, g))  # (B, 4, T, y)
        z = (self.post_xy(xy)[:, :, None] + self.post_yt(yt)[:, :, :, None] + self.post_xt(xt)[..., None])
        tokens = z.flatten(2).transpose(1, 2)  # (B, T y x, C)
        frames = self.to_pixel(self.decoder(tokens, t, g, g))  # (B T, 3, H, W)
        video = 2 * torch.sigmoid(frames) - 1
        return video.unflatten(0, (b, t)).transpose(1, 2)  # (B, 3, T, H, W)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(video))
