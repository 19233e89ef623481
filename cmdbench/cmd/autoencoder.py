"""CMD autoencoder: a video -> (content frame, motion latent) and back (Yu et al., ICLR 2024, §3.2).

Implemented from the paper (Eq. 3-6, Fig. 4, App. B.3, Table 5); no code from the NVlabs/CMD, PVDM or
TimeSformer releases.

Encoder f_phi = (backbone, importance head, motion head):
    u        = backbone(x)                                   (B, C', L, H', W')
    x_bar    = sum_l softmax_l(importance_head(u)) * x_l     (B, C, H, W)     Eq. 3, per pixel and channel
    z        = [tanh(conv1x1(mean_W u)) ; tanh(conv1x1(mean_H u))]
                                                             (B, D, L, H' + W')  Eq. 4
Decoder g_psi (Eq. 5-6):
    v[l, h, w] = embed_content(x_bar)[h, w] + embed_x(z^x)[l, h] + embed_y(z^y)[l, w]
    x_hat      = post_layer(backbone'(v))                    (B, C, L, H, W)

Design choices (the paper leaves them open):
- Backbone: TimeSformer-style divided space-time attention, per block temporal attention then spatial
  attention then an MLP (pre-norm residuals), through ``F.scaled_dot_product_attention``. Attention has
  ``num_heads * head_dim`` inner width (8 x 64 = 512 at the paper's C' = 384, Table 5).
- Pre-/post-layer: a single conv (kernel = stride = patch) per frame, and a transposed conv back (App. B.3).
- Positions: **fixed** sin-cos embeddings, 2D over (H', W') plus 1D over L, added to the tokens after the
  pre-layer in both the encoder and the decoder. No parameters, so the count does not depend on size, and
  the model takes any frame size divisible by the patch (the table is computed for the input's grid at
  integer positions; the native grid's table is the ``pos_embed`` buffer). Clip length L stays fixed.
- The two motion planes have their own 1x1 convs in the decoder (``embed_motion_x``/``embed_motion_y``).
- ``motion_tanh=True`` keeps z in (-1, 1) (the release's bottleneck; the paper's text has a plain 1x1 conv).
- ``output_activation="tanh"`` for pixel mode (frames in [-1, 1]); ``"none"`` for latent mode (SD VAE
  latents, already multiplied by the VAE scaling factor by the caller).

Layout: videos are channels-first ``(B, C, L, H, W)``, float.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import get_1d_sincos_pos_embed_from_grid
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

OUTPUT_ACTIVATIONS = ("tanh", "none")


def sincos_embedding_2d(embed_dim: int, height: int, width: int) -> torch.Tensor:
    """Fixed 2D sin-cos position embedding at integer grid positions (MAE/DiT convention).

    Returns float32 ``(height * width, embed_dim)``, row-major over (h, w); the first half of the channels
    encodes the row index h, the second half the column index w.
    """
    if embed_dim % 4 != 0:
        raise ValueError(f"2D sin-cos embedding needs embed_dim divisible by 4, got {embed_dim}")
    rows = torch.arange(height, dtype=torch.float64).repeat_interleave(width)  # (H*W,)
    cols = torch.arange(width, dtype=torch.float64).repeat(height)  # (H*W,)
    emb_h = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, rows, dtype=torch.float64)  # (H*W, E/2)
    emb_w = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, cols, dtype=torch.float64)  # (H*W, E/2)
    return torch.cat([emb_h, emb_w], dim=1).float()


def sincos_embedding_1d(embed_dim: int, length: int) -> torch.Tensor:
    """Fixed 1D sin-cos position embedding, float32 ``(length, embed_dim)``."""
    positions = torch.arange(length, dtype=torch.float64)
    return get_1d_sincos_pos_embed_from_grid(embed_dim, positions, dtype=torch.float64).float()


def spacetime_sincos(embed_dim: int, num_frames: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """1D sin-cos over time plus 2D sin-cos over the token grid, float32 ``(L, grid_h * grid_w, embed_dim)``."""
    return sincos_embedding_1d(embed_dim, num_frames)[:, None] + sincos_embedding_2d(embed_dim, grid_h, grid_w)


# ---------------------------------------------------------------------------------------------------------
# TimeSformer-style backbone: divided space-time attention
# ---------------------------------------------------------------------------------------------------------


class MultiHeadSelfAttention(nn.Module):
    """Self-attention with a fused qkv projection and an output projection, via SDPA.

    ``(N, S, dim) -> (N, S, dim)``; the inner width is ``num_heads * head_dim`` (may differ from ``dim``).
    """

    def __init__(self, dim: int, num_heads: int, head_dim: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        inner = num_heads * head_dim
        self.to_qkv = nn.Linear(dim, 3 * inner)
        self.to_out = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, s, _ = x.shape
        qkv = self.to_qkv(x).view(n, s, 3, self.num_heads, self.head_dim)  # (N, S, 3, heads, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (N, heads, S, d)
        out = F.scaled_dot_product_attention(q, k, v)  # (N, heads, S, d)
        return self.to_out(out.transpose(1, 2).reshape(n, s, -1))  # (N, S, dim)


class DividedSpaceTimeBlock(nn.Module):
    """One TimeSformer block: temporal attention, then spatial attention, then an MLP (pre-norm).

    Tokens are ``(B, L, S, C')`` with ``S = H' * W'`` spatial positions per frame.
    """

    def __init__(self, dim: int, num_heads: int, head_dim: int, mlp_ratio: float):
        super().__init__()
        self.norm_time = nn.LayerNorm(dim)
        self.attn_time = MultiHeadSelfAttention(dim, num_heads, head_dim)
        self.norm_space = nn.LayerNorm(dim)
        self.attn_space = MultiHeadSelfAttention(dim, num_heads, head_dim)
        self.norm_mlp = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, s, c = x.shape
        xt = x.transpose(1, 2).reshape(b * s, length, c)  # (B*S, L, C'): attend over time per position
        xt = xt + self.attn_time(self.norm_time(xt))
        x = xt.view(b, s, length, c).transpose(1, 2)  # (B, L, S, C')
        xs = x.reshape(b * length, s, c)  # (B*L, S, C'): attend over space per frame
        xs = xs + self.attn_space(self.norm_space(xs))
        xs = xs + self.mlp(self.norm_mlp(xs))
        return xs.view(b, length, s, c)  # (B, L, S, C')


class SpaceTimeTransformer(nn.Module):
    """A stack of divided space-time blocks with a final LayerNorm; ``(B, L, S, C') -> (B, L, S, C')``."""

    def __init__(self, dim: int, depth: int, num_heads: int, head_dim: int, mlp_ratio: float):
        super().__init__()
        self.blocks = nn.ModuleList(
            [DividedSpaceTimeBlock(dim, num_heads, head_dim, mlp_ratio) for _ in range(depth)]
        )
        self.norm_out = nn.LayerNorm(dim)
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = self._gradient_checkpointing_func(block, x)
            else:
                x = block(x)
        return self.norm_out(x)


# ---------------------------------------------------------------------------------------------------------
# The autoencoder
# ---------------------------------------------------------------------------------------------------------


class CMDAutoencoder(ModelMixin, ConfigMixin):
    """CMD's video autoencoder (content frame + motion latent), pixel or SD-latent space.

    Args:
        in_channels: frame channels C (3 for RGB pixels, 4 for SD VAE latents).
        num_frames: clip length L the model accepts (16 in the paper).
        sample_size: native frame size (H, W); both divisible by ``patch_size``. Other frame sizes divisible
            by ``patch_size`` are accepted too (positions recomputed for their grid; same weights).
        patch_size: spatial patch of the pre-layer; H' = H / patch, W' = W / patch.
        hidden_size: token width C'.
        depth: blocks in the encoder backbone and in the decoder backbone (each).
        num_heads, head_dim: attention heads and their width.
        motion_channels: D, channels of the motion latent.
        motion_tanh: tanh bottleneck on the motion latent.
        output_activation: ``"tanh"`` (pixel mode, outputs in [-1, 1]) or ``"none"`` (latent mode, linear).
        mlp_ratio: MLP width / C'.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        num_frames: int = 16,
        sample_size: tuple[int, int] | list[int] = (64, 64),
        patch_size: int = 2,
        hidden_size: int = 384,
        depth: int = 12,
        num_heads: int = 8,
        head_dim: int = 64,
        motion_channels: int = 8,
        motion_tanh: bool = True,
        output_activation: str = "tanh",
        mlp_ratio: float = 4.0,
    ):
        super().__init__()
        height, width = (sample_size, sample_size) if isinstance(sample_size, int) else tuple(sample_size)
        if height % patch_size or width % patch_size:
            raise ValueError(
                f"sample_size {(height, width)} must be divisible by patch_size={patch_size} in both axes"
            )
        if output_activation not in OUTPUT_ACTIVATIONS:
            raise ValueError(f"output_activation={output_activation!r}; allowed: {OUTPUT_ACTIVATIONS}")
        if hidden_size % 4 != 0:
            raise ValueError(f"hidden_size must be divisible by 4 for the 2D sin-cos embedding, got {hidden_size}")
        self.frame_size = (height, width)
        grid_h, grid_w = height // patch_size, width // patch_size

        # Fixed positions: 2D over the token grid + 1D over time, shape (L, H'*W', C'). The native grid's
        # table is a non-persistent buffer; other grids get the same formula, cached per (grid, device).
        self.register_buffer("pos_embed", spacetime_sincos(hidden_size, num_frames, grid_h, grid_w), persistent=False)
        self._pos_cache: dict[tuple[int, int, str], torch.Tensor] = {}

        # Encoder: pre-layer, backbone, importance head (Eq. 3), motion head (Eq. 4).
        self.encoder_pre_layer = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size)
        self.encoder = SpaceTimeTransformer(hidden_size, depth, num_heads, head_dim, mlp_ratio)
        self.importance_head = nn.ConvTranspose2d(hidden_size, in_channels, patch_size, stride=patch_size)
        self.motion_head_x = nn.Conv2d(hidden_size, motion_channels, 1)  # on u averaged over W -> (L, H')
        self.motion_head_y = nn.Conv2d(hidden_size, motion_channels, 1)  # on u averaged over H -> (L, W')

        # Decoder: embed content frame (patchify + linear == conv with kernel = stride = patch) and planes.
        self.embed_content = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size)
        self.embed_motion_x = nn.Conv2d(motion_channels, hidden_size, 1)
        self.embed_motion_y = nn.Conv2d(motion_channels, hidden_size, 1)
        self.decoder = SpaceTimeTransformer(hidden_size, depth, num_heads, head_dim, mlp_ratio)
        self.decoder_post_layer = nn.ConvTranspose2d(hidden_size, in_channels, patch_size, stride=patch_size)

    # -- sizes ----------------------------------------------------------------------------------------
    # ``frame_size`` / ``latent_hw`` / ``motion_shape`` / ``content_shape`` describe the native grid
    # (``sample_size``). Any frame size divisible by ``patch_size`` is accepted; the ``*_for`` helpers give
    # the shapes at another size.
    @property
    def latent_hw(self) -> tuple[int, int]:
        """Token grid (H', W') at the native frame size."""
        return self.grid_for(*self.frame_size)

    @property
    def motion_shape(self) -> tuple[int, int, int]:
        """Motion latent shape per sample at the native size, (D, L, H' + W')."""
        return self.motion_shape_for(*self.frame_size)

    @property
    def content_shape(self) -> tuple[int, int, int]:
        """Content frame shape per sample at the native size, (C, H, W)."""
        return (self.config.in_channels, *self.frame_size)

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        """Token grid (H / patch, W / patch) of frames ``height x width``."""
        p = self.config.patch_size
        return height // p, width // p

    def motion_shape_for(self, height: int, width: int) -> tuple[int, int, int]:
        """Motion latent shape per sample (D, L, H' + W') for frames ``height x width``."""
        h, w = self.grid_for(height, width)
        return self.config.motion_channels, self.config.num_frames, h + w

    def _check_frame_size(self, height: int, width: int, what: str, shape: tuple[int, ...]) -> None:
        p = self.config.patch_size
        if height < p or width < p or height % p or width % p:
            raise ValueError(
                f"CMDAutoencoder: {what} has frame size {height}x{width} (shape {shape}); allowed: height and "
                f"width positive multiples of patch_size={p} (native {self.frame_size[0]}x{self.frame_size[1]})"
            )

    def pos_embed_for(self, grid_h: int, grid_w: int, device: torch.device) -> torch.Tensor:
        """Fixed positions (L, grid_h * grid_w, C') float32 on ``device``; the buffer at the native grid."""
        if (grid_h, grid_w) == self.latent_hw:
            return self.pos_embed
        key = (grid_h, grid_w, str(device))
        if key not in self._pos_cache:
            cfg = self.config
            table = spacetime_sincos(cfg.hidden_size, cfg.num_frames, grid_h, grid_w)
            self._pos_cache[key] = table.to(device)
        return self._pos_cache[key]

    # -- input checks ----------------------------------------------------------------------------------
    def _check_video(self, video: torch.Tensor) -> None:
        cfg = self.config
        shape = tuple(video.shape)
        if video.ndim != 5 or shape[1:3] != (cfg.in_channels, cfg.num_frames):
            raise ValueError(
                f"CMDAutoencoder expects a video (B, C, L, H, W) = (B, {cfg.in_channels}, {cfg.num_frames}, H, W) "
                f"(channels={cfg.in_channels}, num_frames={cfg.num_frames}, H and W multiples of patch "
                f"{cfg.patch_size}, native {self.frame_size}); got shape {shape}"
            )
        self._check_frame_size(shape[3], shape[4], "the video", shape)
        if not video.is_floating_point():
            raise TypeError(f"CMDAutoencoder expects a float video, got dtype {video.dtype}")

    def _check_latents(self, content: torch.Tensor, motion: torch.Tensor) -> None:
        c = self.config.in_channels
        if content.ndim != 4 or content.shape[1] != c:
            raise ValueError(
                f"content frame must be (B, {c}, H, W) (H, W multiples of patch {self.config.patch_size}, "
                f"native {self.frame_size}); got {tuple(content.shape)}"
            )
        self._check_frame_size(content.shape[2], content.shape[3], "the content frame", tuple(content.shape))
        expected = self.motion_shape_for(content.shape[2], content.shape[3])
        if motion.ndim != 4 or tuple(motion.shape[1:]) != expected:
            raise ValueError(
                f"motion latent must be (B, D, L, H'+W') = (B, {', '.join(map(str, expected))}) for a "
                f"{content.shape[2]}x{content.shape[3]} content frame; got {tuple(motion.shape)}"
            )
        if content.shape[0] != motion.shape[0]:
            raise ValueError(f"batch sizes differ: content {content.shape[0]} vs motion {motion.shape[0]}")

    # -- per-frame conv helpers ------------------------------------------------------------------------
    @staticmethod
    def _per_frame(conv: nn.Module, video: torch.Tensor) -> torch.Tensor:
        """Apply a 2D conv to every frame: (B, C_in, L, H, W) -> (B, C_out, L, H_out, W_out)."""
        b, c, length, h, w = video.shape
        frames = video.transpose(1, 2).reshape(b * length, c, h, w)  # (B*L, C_in, H, W)
        out = conv(frames)  # (B*L, C_out, H_out, W_out)
        return out.view(b, length, *out.shape[1:]).transpose(1, 2)  # (B, C_out, L, H_out, W_out)

    def _to_tokens(self, grid: torch.Tensor) -> torch.Tensor:
        """(B, C', L, H', W') -> tokens (B, L, H'*W', C') with positions added."""
        b, c, length, h, w = grid.shape
        tokens = grid.permute(0, 2, 3, 4, 1).reshape(b, length, h * w, c)
        return tokens + self.pos_embed_for(h, w, tokens.device).to(tokens.dtype)

    @staticmethod
    def _from_tokens(tokens: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
        """Tokens (B, L, H'*W', C') -> (B, C', L, H', W') with ``grid_hw = (H', W')``."""
        b, length, _, c = tokens.shape
        h, w = grid_hw
        return tokens.view(b, length, h, w, c).permute(0, 4, 1, 2, 3)

    # -- encoder ---------------------------------------------------------------------------------------
    def _encoder_features(self, video: torch.Tensor) -> torch.Tensor:
        """Backbone f_phiB: (B, C, L, H, W) -> u (B, C', L, H', W')."""
        self._check_video(video)
        patches = self._per_frame(self.encoder_pre_layer, video)  # (B, C', L, H', W')
        return self._from_tokens(self.encoder(self._to_tokens(patches)), patches.shape[-2:])  # (B, C', L, H', W')

    def _importance_weights(self, features: torch.Tensor) -> torch.Tensor:
        """Softmax over time of the importance logits, float32 (B, C, L, H, W) whatever the compute dtype."""
        logits = self._per_frame(self.importance_head, features)  # (B, C, L, H, W)
        return logits.float().softmax(dim=2)

    def content_weights(self, video: torch.Tensor) -> torch.Tensor:
        """Softmax-over-time weights sigma(f_phiI(u)), float32 (B, C, L, H, W); they sum to 1 over L."""
        return self._importance_weights(self._encoder_features(video))

    def _motion(self, features: torch.Tensor) -> torch.Tensor:
        z_x = self.motion_head_x(features.mean(dim=4))  # (B, C', L, H') -> (B, D, L, H')
        z_y = self.motion_head_y(features.mean(dim=3))  # (B, C', L, W') -> (B, D, L, W')
        motion = torch.cat([z_x, z_y], dim=3)  # (B, D, L, H' + W')
        return torch.tanh(motion) if self.config.motion_tanh else motion

    def encode(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Video (B, C, L, H, W) -> (content frame (B, C, H, W), motion latent (B, D, L, H' + W')).

        The importance weights and the weighted sum over time (Eq. 3) are computed in float32 even under
        fp16/bf16 autocast or with half-precision weights (weights rounded to 8 bits no longer sum to 1,
        which shifts every content pixel); the content frame is returned in the video's dtype (float32
        for a float32 video under autocast). The motion latent comes out in the compute dtype.
        """
        features = self._encoder_features(video)  # (B, C', L, H', W')
        weights = self._importance_weights(features)  # (B, C, L, H, W) float32
        content = (weights * video.float()).sum(dim=2)  # (B, C, H, W) float32 (elementwise ops: autocast keeps fp32)
        return content.to(video.dtype), self._motion(features)

    # -- decoder ---------------------------------------------------------------------------------------
    def decode(self, content: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
        """(content (B, C, H, W), motion (B, D, L, H' + W')) -> video (B, C, L, H, W)."""
        self._check_latents(content, motion)
        h, _ = self.grid_for(content.shape[2], content.shape[3])
        v_t = self.embed_content(content)  # (B, C', H', W')
        v_x = self.embed_motion_x(motion[..., :h])  # (B, C', L, H')
        v_y = self.embed_motion_y(motion[..., h:])  # (B, C', L, W')
        v = v_t[:, :, None] + v_x[..., None] + v_y[..., None, :]  # (B, C', L, H', W'), Eq. 5 broadcast sum
        features = self._from_tokens(self.decoder(self._to_tokens(v)), v.shape[-2:])  # (B, C', L, H', W')
        video = self._per_frame(self.decoder_post_layer, features)  # (B, C, L, H, W)
        return torch.tanh(video) if self.config.output_activation == "tanh" else video

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Reconstruction g(f(x)): (B, C, L, H, W) -> (B, C, L, H, W)."""
        content, motion = self.encode(video)
        return self.decode(content, motion)


def compression_ratio(model: CMDAutoencoder) -> float:
    """Input elements per latent element (content + motion), e.g. 9.6 for the UCF-101 pixel setting."""
    c, h, w = model.content_shape
    video = c * model.config.num_frames * h * w
    return video / (c * h * w + math.prod(model.motion_shape))
