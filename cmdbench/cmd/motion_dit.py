"""CMD motion diffusion model p(z | x_bar, c): a DiT over motion-latent patches (Yu et al., ICLR 2024, §3.2).

Implemented from the CMD paper (Eq. 8, App. B.3, Table 6) and the DiT paper (Peebles & Xie, 2023: patchify,
adaLN-Zero blocks, zero-initialised modulation and output); no code from the NVlabs/CMD or DiT releases.
Building blocks come from diffusers: ``Timesteps``/``TimestepEmbedding`` (the DiT timestep embedder: 256
sinusoidal channels, cos first, then Linear-SiLU-Linear), ``PatchEmbed`` (conv patchify),
``LabelEmbedding`` (class table with one extra null row), ``Attention`` (SDPA) and ``FeedForward``; the
adaLN-Zero block, final layer and DiT initialisation are shared with ``ContentDiT`` (``dit_blocks.py``).

Token layout (cmd-paper.md §4.2):
    motion tokens  : z_t (B, D, L, W_m) as a 2D image L x W_m, patch p    -> (L/p) * (W_m/p) tokens
    content tokens : x_bar (B, Cc, Hc, Wc), its own patch embedding, pc  -> (Hc/pc) * (Wc/pc) tokens
    sequence       : [motion ; content], each with its own fixed 2D sin-cos positions on its own grid
    output         : the final adaLN layer reads the motion tokens only -> unpatchify -> (B, D, L, W_m)
Conditioning vector c_emb = t_emb + y_emb enters every block's adaLN-Zero modulation (one shared vector,
not a per-block embedder), where y_emb is:
    - class mode (``num_classes``): a label table with ``num_classes + 1`` rows; the null label used for
      guidance is index ``num_classes`` (``MotionDiT.null_class_label``). In training mode labels are
      replaced by the null label with probability ``class_dropout_prob`` (DiT convention).
    - text mode (``text_embed_dim``): a learned ``Linear(E, hidden)`` of the text encoder's features,
      mean-pooled over tokens when given as (B, S, E) (masked mean if ``encoder_attention_mask`` is given)
      or used as is when (B, E). **Null text = the features of the empty prompt ""** encoded by the same
      text encoder (no extra parameter, like Stable Diffusion's own guidance); condition dropout for
      text is the caller's job (replace captions by "").
    - unconditional (neither): y_emb = 0.
The content frame is a dense condition: it is in both guidance branches and never dropped.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import LabelEmbedding, PatchEmbed, TimestepEmbedding, Timesteps
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from cmdbench.cmd.autoencoder import sincos_embedding_2d
from cmdbench.cmd.dit_blocks import (
    AdaLNFinalLayer,
    AdaLNZeroBlock,
    batch_timesteps,
    grid_positions,
    init_dit_weights,
    unpatchify,
)

__all__ = ["MOTION_DIT_CONFIGS", "AdaLNFinalLayer", "AdaLNZeroBlock", "MotionDiT", "motion_dit_config"]

# DiT sizes (Peebles & Xie, Table 1); "/2" = motion patch 2.
MOTION_DIT_CONFIGS: dict[str, dict[str, int]] = {
    "DiT-S/2": {"depth": 12, "hidden_size": 384, "num_heads": 6, "patch_size": 2},
    "DiT-B/2": {"depth": 12, "hidden_size": 768, "num_heads": 12, "patch_size": 2},
    "DiT-L/2": {"depth": 24, "hidden_size": 1024, "num_heads": 16, "patch_size": 2},
    "DiT-XL/2": {"depth": 28, "hidden_size": 1152, "num_heads": 16, "patch_size": 2},
}


class MotionDiT(ModelMixin, ConfigMixin):
    """CMD's motion-latent denoiser eps_theta_M(z_t, c, x_bar, t) (Eq. 8).

    Args:
        motion_channels: D. num_frames: L. motion_width: W_m = H' + W' of the autoencoder.
        patch_size: motion patch (2). content_channels/content_size/content_patch_size: the content frame
            (C, H, W) and its patch (4 at 64x64 pixels / SD1.5 latents, 8 for 64x128 SD2.1 latents).
            ``motion_width`` and ``content_size`` are the native grid; forward also takes other W_m / content
            sizes divisible by their patches (sin-cos positions computed for the input's grid).
        hidden_size/depth/num_heads/mlp_ratio: DiT width (see ``MOTION_DIT_CONFIGS``).
        num_classes: class-conditional with a null label (index ``num_classes``) for guidance.
        text_embed_dim: text-conditional; width E of the text encoder's features (1024 for OpenCLIP-H).
        learn_sigma: also predict the variance (output 2*D channels; the eps half comes first).
        class_dropout_prob: label dropout in training mode (class mode only).
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        motion_channels: int = 8,
        num_frames: int = 16,
        motion_width: int = 64,
        patch_size: int = 2,
        content_channels: int = 3,
        content_size: tuple[int, int] | list[int] = (64, 64),
        content_patch_size: int = 4,
        hidden_size: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_classes: int | None = None,
        text_embed_dim: int | None = None,
        learn_sigma: bool = False,
        class_dropout_prob: float = 0.1,
    ):
        super().__init__()
        if num_classes is not None and text_embed_dim is not None:
            raise ValueError("MotionDiT is class- or text-conditional, not both: set num_classes or text_embed_dim")
        if num_frames % patch_size or motion_width % patch_size:
            raise ValueError(
                f"motion latent (L={num_frames}, W_m={motion_width}) must be divisible by patch_size={patch_size}"
            )
        content_h, content_w = (
            (content_size, content_size) if isinstance(content_size, int) else tuple(content_size)
        )
        if content_h % content_patch_size or content_w % content_patch_size:
            raise ValueError(
                f"content_size {(content_h, content_w)} must be divisible by content_patch_size={content_patch_size}"
            )
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size={hidden_size} must be divisible by num_heads={num_heads}")
        self.content_hw = (content_h, content_w)
        self.out_channels = motion_channels * (2 if learn_sigma else 1)
        self.motion_grid = (num_frames // patch_size, motion_width // patch_size)
        self.content_grid = (content_h // content_patch_size, content_w // content_patch_size)

        self.motion_embed = PatchEmbed(
            height=num_frames, width=motion_width, patch_size=patch_size, in_channels=motion_channels,
            embed_dim=hidden_size, pos_embed_type=None,
        )
        self.content_embed = PatchEmbed(
            height=content_h, width=content_w, patch_size=content_patch_size, in_channels=content_channels,
            embed_dim=hidden_size, pos_embed_type=None,
        )
        # Fixed positions of the native grids (non-persistent buffers); other grids: same formula, cached.
        self.register_buffer("motion_pos_embed", sincos_embedding_2d(hidden_size, *self.motion_grid), persistent=False)
        self.register_buffer(
            "content_pos_embed", sincos_embedding_2d(hidden_size, *self.content_grid), persistent=False
        )
        self._pos_cache: dict[tuple[int, int, str], torch.Tensor] = {}

        self.time_proj = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(256, hidden_size)
        self.class_embed = (
            LabelEmbedding(num_classes, hidden_size, class_dropout_prob) if num_classes is not None else None
        )
        if self.class_embed is not None and class_dropout_prob <= 0:
            # Guidance needs the null row even when training without dropout.
            self.class_embed.embedding_table = nn.Embedding(num_classes + 1, hidden_size)
        self.text_proj = nn.Linear(text_embed_dim, hidden_size) if text_embed_dim is not None else None

        self.blocks = nn.ModuleList([AdaLNZeroBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        self.final_layer = AdaLNFinalLayer(hidden_size, patch_size, self.out_channels)
        self.gradient_checkpointing = False
        self._init_weights()

    def _init_weights(self) -> None:
        """DiT initialisation (``dit_blocks.init_dit_weights``): xavier linears and patch projections,
        N(0, 0.02) timestep MLP and label table, zero adaLN modulation and output."""
        init_dit_weights(
            self,
            patch_embeds=[self.motion_embed.proj, self.content_embed.proj],
            time_mlp=[self.time_embed.linear_1, self.time_embed.linear_2],
            label_table=self.class_embed.embedding_table if self.class_embed is not None else None,
        )

    # -- sizes ----------------------------------------------------------------------------------------
    @property
    def null_class_label(self) -> int | None:
        """Label index of the null class used for classifier-free guidance (class mode), else None."""
        return self.config.num_classes

    @property
    def num_motion_tokens(self) -> int:
        return self.motion_grid[0] * self.motion_grid[1]

    @property
    def num_content_tokens(self) -> int:
        return self.content_grid[0] * self.content_grid[1]

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """Motion latent per sample, (D, L, W_m)."""
        cfg = self.config
        return cfg.motion_channels, cfg.num_frames, cfg.motion_width

    @property
    def content_shape(self) -> tuple[int, int, int]:
        return (self.config.content_channels, *self.content_hw)

    # -- conditioning ----------------------------------------------------------------------------------
    def _condition(
        self,
        batch: int,
        class_labels: torch.Tensor | None,
        encoder_hidden_states: torch.Tensor | None,
        encoder_attention_mask: torch.Tensor | None,
    ) -> torch.Tensor | None:
        """The condition embedding y_emb (B, hidden), or None when unconditional."""
        cfg = self.config
        if self.class_embed is not None:
            if class_labels is None:
                raise ValueError(
                    f"class-conditional MotionDiT needs class_labels (B,) in [0, {cfg.num_classes}]; "
                    f"{cfg.num_classes} is the null label"
                )
            if encoder_hidden_states is not None:
                raise ValueError("class-conditional MotionDiT takes class_labels, not encoder_hidden_states")
            labels = torch.as_tensor(class_labels, device=self.device).long().reshape(-1)
            if labels.shape[0] != batch:
                raise ValueError(f"class_labels has {labels.shape[0]} entries for a batch of {batch}")
            if labels.device.type != "meta" and labels.numel() and (labels.min() < 0 or labels.max() > cfg.num_classes):
                raise ValueError(
                    f"class_labels must lie in [0, {cfg.num_classes}] ({cfg.num_classes} = null); "
                    f"got {labels.tolist()}"
                )
            return self.class_embed(labels)  # (B, hidden)
        if self.text_proj is not None:
            if encoder_hidden_states is None:
                raise ValueError(
                    f"text-conditional MotionDiT needs encoder_hidden_states (B, S, {cfg.text_embed_dim}) or "
                    f"(B, {cfg.text_embed_dim}); use the empty prompt's features for the unconditional branch"
                )
            if class_labels is not None:
                raise ValueError("text-conditional MotionDiT takes encoder_hidden_states, not class_labels")
            feats = encoder_hidden_states
            if feats.ndim == 3:
                if encoder_attention_mask is None:
                    feats = feats.mean(dim=1)  # (B, E)
                else:
                    mask = encoder_attention_mask.to(feats.dtype)[..., None]  # (B, S, 1)
                    feats = (feats * mask).sum(1) / mask.sum(1).clamp_min(1)  # (B, E)
            if feats.ndim != 2 or feats.shape != (batch, cfg.text_embed_dim):
                raise ValueError(
                    f"encoder_hidden_states must be (B={batch}, S, {cfg.text_embed_dim}) or "
                    f"(B={batch}, {cfg.text_embed_dim}); got {tuple(encoder_hidden_states.shape)}"
                )
            return self.text_proj(feats.to(self.text_proj.weight.dtype))  # (B, hidden)
        if class_labels is not None or encoder_hidden_states is not None:
            raise ValueError("unconditional MotionDiT (num_classes=None, text_embed_dim=None) takes no condition")
        return None

    def _positions(
        self, grid: tuple[int, int], native_grid: tuple[int, int], native: torch.Tensor, device: torch.device
    ) -> torch.Tensor:
        """2D sin-cos positions (grid_h * grid_w, hidden) float32: the ``native`` buffer at ``native_grid``,
        else the same formula for ``grid``, cached per (grid, device)."""
        return grid_positions(self.config.hidden_size, grid, native_grid, native, self._pos_cache, device)

    def _check_inputs(self, sample: torch.Tensor, content: torch.Tensor) -> None:
        cfg = self.config
        d, length, _ = self.sample_shape
        p, pc = cfg.patch_size, cfg.content_patch_size
        if (sample.ndim != 4 or tuple(sample.shape[1:3]) != (d, length) or sample.shape[3] < p
                or sample.shape[3] % p):
            raise ValueError(
                f"MotionDiT sample must be the motion latent (B, D, L, W_m) = (B, {d}, {length}, W_m) with W_m a "
                f"positive multiple of patch_size={p} (native W_m={cfg.motion_width}); got {tuple(sample.shape)}"
            )
        c = cfg.content_channels
        if (content.ndim != 4 or content.shape[1] != c or min(content.shape[2:]) < pc
                or content.shape[2] % pc or content.shape[3] % pc):
            raise ValueError(
                f"MotionDiT content must be the content frame (B, {c}, Hc, Wc) with Hc, Wc positive multiples of "
                f"content_patch_size={pc} (native {self.content_hw[0]}x{self.content_hw[1]}); "
                f"got {tuple(content.shape)}"
            )
        if content.shape[0] != sample.shape[0]:
            raise ValueError(f"batch sizes differ: sample {sample.shape[0]} vs content {content.shape[0]}")

    # -- forward ---------------------------------------------------------------------------------------
    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        content: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        return_dict: bool = False,
        encoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor | Transformer2DModelOutput:
        """Predict noise for z_t.

        Args:
            sample: noisy motion latent z_t (B, D, L, W_m).
            timestep: (B,) or a scalar, diffusion step in [0, num_train_timesteps).
            content: the clean content frame x_bar (B, Cc, Hc, Wc), same dtype/scale the AE produced.
            class_labels: (B,) long, class mode; ``null_class_label`` for the unconditional branch.
            encoder_hidden_states: text features (B, S, E) (mean-pooled) or pooled (B, E), text mode.
            return_dict: wrap the result in ``Transformer2DModelOutput(sample=...)``.
            encoder_attention_mask: optional (B, S) mask (1 = keep) for a masked mean over tokens.
        Returns:
            eps prediction (B, D, L, W_m) (or (B, 2D, L, W_m) with ``learn_sigma``).
        """
        self._check_inputs(sample, content)
        batch = sample.shape[0]
        dtype = self.motion_embed.proj.weight.dtype
        timestep = batch_timesteps(timestep, batch, sample.device)

        cond = self.time_embed(self.time_proj(timestep).to(dtype))  # (B, hidden)
        y_emb = self._condition(batch, class_labels, encoder_hidden_states, encoder_attention_mask)
        if y_emb is not None:
            cond = cond + y_emb.to(cond.dtype)

        p, pc = self.config.patch_size, self.config.content_patch_size
        motion_grid = (sample.shape[2] // p, sample.shape[3] // p)
        content_grid = (content.shape[2] // pc, content.shape[3] // pc)
        motion_pos = self._positions(motion_grid, self.motion_grid, self.motion_pos_embed, sample.device)
        content_pos = self._positions(content_grid, self.content_grid, self.content_pos_embed, sample.device)
        motion_tokens = self.motion_embed(sample.to(dtype)) + motion_pos.to(dtype)  # (B, Nm, C)
        content_tokens = self.content_embed(content.to(dtype)) + content_pos.to(dtype)  # (B, Nc, C)
        x = torch.cat([motion_tokens, content_tokens], dim=1)  # (B, Nm + Nc, C)
        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = self._gradient_checkpointing_func(block, x, cond)
            else:
                x = block(x, cond)
        out = self.final_layer(x[:, : motion_tokens.shape[1]], cond)  # (B, Nm, p*p*out)
        out = self._unpatchify(out, motion_grid)  # (B, out, L, W_m)
        return Transformer2DModelOutput(sample=out) if return_dict else out

    def _unpatchify(self, tokens: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """(B, gh*gw, p*p*out) -> (B, out, gh*p, gw*p), inverse of the conv patchify's token order.

        ``grid``: the token grid (gh, gw) (default: the native motion grid)."""
        return unpatchify(tokens, self.motion_grid if grid is None else grid, self.config.patch_size,
                          self.out_channels)


def motion_dit_config(name: str, **overrides) -> dict:
    """MotionDiT kwargs for a named size (``MOTION_DIT_CONFIGS``) plus overrides."""
    if name not in MOTION_DIT_CONFIGS:
        raise KeyError(f"unknown motion DiT size {name!r}; allowed: {sorted(MOTION_DIT_CONFIGS)}")
    return {**MOTION_DIT_CONFIGS[name], **overrides}
