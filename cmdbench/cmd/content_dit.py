"""CMD's class-conditional content-frame model p(x_bar | c) for UCF-101: a pixel-space DiT, built as DiT builds it.

The paper trains DiT-XL/2 from scratch on 3x64x64 content frames (cmd-paper.md §3, Table 7). Implemented
from the DiT paper (Peebles & Xie, ICCV 2023: patchify, adaLN-Zero, the initialisation of §3.2/App.) and
the facts in ``shared/reference/baselines.md`` §5.3; no code from the DiT release (non-commercial). The
blocks are CMD's shared DiT blocks (``dit_blocks.py``, also used by ``MotionDiT``); the embedders come from
diffusers (``PatchEmbed``, ``Timesteps``/``TimestepEmbedding``).

Layout, as in DiT (one shared embedder each, unlike diffusers' ``DiTTransformer2DModel``, which puts a
timestep and label embedder inside every block):
    tokens   x (B, C, H, W) -> conv patchify (kernel = stride = p) -> (B, H/p * W/p, hidden)
             + fixed 2D sin-cos positions of the token grid (not parameters)
    cond     c = TimestepMLP(sinusoid_256(t)) + LabelTable[y]               (B, hidden), ONE of each
    blocks   depth x adaLN-Zero(attention, MLP), all modulated by c
    output   adaLN final layer -> linear to p*p*C_out per token -> unpatchify -> eps (B, C_out, H, W)
Labels: a table of ``num_classes + 1`` rows; **row ``num_classes`` is the null label** used for guidance
(``null_class_label``). The model never drops labels itself: training replaces labels with the null label
at its configured rate (so the dropout rate is set in one place).

Initialisation (``dit_blocks.init_dit_weights``): xavier-uniform linears (q/k/v as DiT's fused qkv),
patch embedding xavier on its flattened weight, timestep MLP N(0, 0.02), label table N(0, 0.02),
adaLN modulation and output layer zero: the output is exactly zero at initialisation.

Parameter count, DiT-XL/2 (depth 28, hidden 1152, 16 heads, patch 2, MLP ratio 4), per part with
h = 1152: blocks 28 x (18 h^2 + 15 h) = 669,344,256; timestep MLP 256 h + h^2 + 2 h = 1,624,320; final layer
2 h^2 + 2 h + 4 h C_out + 4 C_out; patch embedding 4 h C_in + h; label table (classes + 1) h.
- UCF-101 setting here (3x64x64 pixels, 101 classes, ``learn_sigma=False``):
  **673,771,404** = 669,344,256 + 1,624,320 + 2,670,348 (final, C_out = 3) + 14,976 (patch, C_in = 3)
  + 117,504 (102 label rows) + 0 (positions are a buffer).
- DiT's own XL/2 (256x256 images = 4x32x32 SD latents, ``learn_sigma=True`` so C_out = 8, 1000 classes):
  674,834,720 trainable = the same blocks and timestep MLP + 2,693,408 (final, C_out = 8) + 19,584 (patch,
  C_in = 4) + 1,153,152 (1001 label rows): the paper's "675M". (DiT's code holds its fixed 256 x 1152
  position table as a frozen parameter; counting it gives 675,129,632.)
- The difference, 1,063,316, is all input/output width and label rows: 899 fewer label rows (1,035,648),
  one fewer input channel (4,608) and 20 fewer outputs per token (23,060). Depth, width and blocks are the
  paper's DiT-XL/2 exactly. (diffusers' per-block embedders would add 27 x (timestep MLP + label table).)

Positions: ``sincos_embedding_2d`` (the first half of the channels encodes the row, the second the column;
DiT's table orders the halves the other way, a fixed channel permutation that a model trained from scratch
absorbs exactly). Frames of any size divisible by the patch are accepted; the table is computed for the
input's grid (the native grid's table is the ``pos_embed`` buffer).
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import PatchEmbed, TimestepEmbedding, Timesteps
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

# Parameters of ``ContentDiT`` for UCF-101 (3x64x64, 101 classes, learn_sigma=False) at DiT-XL/2 (see above).
UCF101_XL2_PARAMETERS = 673_771_404


class ContentDiT(ModelMixin, ConfigMixin):
    """Class-conditional DiT eps_theta_I(x_bar_t, c, t) over content frames (B, C, H, W).

    Args:
        sample_size: native frame size (int for square, or (H, W)); both divisible by ``patch_size``.
        patch_size: p (2 for ".../2").
        in_channels: C (3 for RGB pixels).
        hidden_size/depth/num_heads/mlp_ratio: DiT width (``content.CONTENT_DIT_SIZES``).
        num_classes: real classes; the label table has ``num_classes + 1`` rows, the last is the null label.
        learn_sigma: also predict the variance (output 2C channels, eps first); False for DDIM sampling.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        sample_size: int | tuple[int, int] | list[int] = 64,
        patch_size: int = 2,
        in_channels: int = 3,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_classes: int = 101,
        learn_sigma: bool = False,
    ):
        super().__init__()
        height, width = (sample_size, sample_size) if isinstance(sample_size, int) else tuple(sample_size)
        if height % patch_size or width % patch_size:
            raise ValueError(f"sample_size {(height, width)} must be divisible by patch_size={patch_size}")
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size={hidden_size} must be divisible by num_heads={num_heads}")
        if hidden_size % 4:
            raise ValueError(f"hidden_size={hidden_size} must be divisible by 4 for the 2D sin-cos positions")
        if num_classes < 1:
            raise ValueError(f"num_classes={num_classes}; ContentDiT is class-conditional (num_classes >= 1)")
        self.frame_size = (height, width)
        self.out_channels = in_channels * (2 if learn_sigma else 1)
        self.grid = (height // patch_size, width // patch_size)

        self.patch_embed = PatchEmbed(
            height=height, width=width, patch_size=patch_size, in_channels=in_channels, embed_dim=hidden_size,
            pos_embed_type=None,
        )
        self.register_buffer("pos_embed", sincos_embedding_2d(hidden_size, *self.grid), persistent=False)
        self._pos_cache: dict[tuple[int, int, str], torch.Tensor] = {}
        # One shared timestep embedder (256 sinusoidal channels, cos first -> Linear-SiLU-Linear) ...
        self.time_proj = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(256, hidden_size)
        # ... and one shared label table; row ``num_classes`` is the null label. No internal dropout.
        self.class_embed = nn.Embedding(num_classes + 1, hidden_size)
        self.blocks = nn.ModuleList([AdaLNZeroBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        self.final_layer = AdaLNFinalLayer(hidden_size, patch_size, self.out_channels)
        self.gradient_checkpointing = False
        init_dit_weights(
            self,
            patch_embeds=[self.patch_embed.proj],
            time_mlp=[self.time_embed.linear_1, self.time_embed.linear_2],
            label_table=self.class_embed,
        )

    @property
    def null_class_label(self) -> int:
        """Label index of the null class used for classifier-free guidance: ``num_classes``."""
        return int(self.config.num_classes)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """Native content frame per sample, (C, H, W)."""
        return (self.config.in_channels, *self.frame_size)

    def _check_inputs(self, x: torch.Tensor, labels: torch.Tensor) -> None:
        c, p = self.config.in_channels, self.config.patch_size
        if x.ndim != 4 or x.shape[1] != c or min(x.shape[2:]) < p or x.shape[2] % p or x.shape[3] % p:
            raise ValueError(
                f"ContentDiT expects content frames (B, {c}, H, W) with H, W positive multiples of patch_size={p} "
                f"(native {self.frame_size[0]}x{self.frame_size[1]}); got {tuple(x.shape)}"
            )
        n = self.config.num_classes
        if labels.shape != (x.shape[0],):
            raise ValueError(f"class_labels must be (B={x.shape[0]},) ints; got shape {tuple(labels.shape)}")
        if labels.device.type != "meta" and labels.numel() and (labels.min() < 0 or labels.max() > n):
            raise ValueError(f"class_labels must lie in [0, {n}] ({n} = null label); got {labels.tolist()}")

    def forward(
        self,
        hidden_states: torch.Tensor | None = None,
        timestep: torch.Tensor | float | int | None = None,
        class_labels: torch.Tensor | None = None,
        return_dict: bool = True,
        *,
        sample: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor] | Transformer2DModelOutput:
        """Predict the noise of a noisy content frame.

        Args:
            hidden_states (or ``sample=``): x_bar_t (B, C, H, W) (diffusers' DiT keyword and interface C's name).
            timestep: (B,) or a scalar, diffusion step in [0, num_train_timesteps).
            class_labels: (B,) long in [0, num_classes]; ``num_classes`` is the null label.
            return_dict: ``Transformer2DModelOutput(sample=eps)``; else the tuple ``(eps,)``.
        Returns:
            eps (B, C, H, W) float in the model's dtype ((B, 2C, H, W) with ``learn_sigma``, eps first).
        """
        if (hidden_states is None) == (sample is None):
            raise TypeError("ContentDiT.forward takes the noisy frame once: hidden_states= (or sample=)")
        x = hidden_states if hidden_states is not None else sample
        if timestep is None or class_labels is None:
            raise TypeError(
                "ContentDiT.forward needs timestep= and class_labels= "
                f"(null label {self.config.num_classes} for the unconditional branch)"
            )
        labels = torch.as_tensor(class_labels, device=x.device).long().reshape(-1)
        self._check_inputs(x, labels)
        batch = x.shape[0]
        dtype = self.patch_embed.proj.weight.dtype
        timestep = batch_timesteps(timestep, batch, x.device)

        cond = self.time_embed(self.time_proj(timestep).to(dtype)) + self.class_embed(labels)  # (B, hidden)
        p = self.config.patch_size
        grid = (x.shape[2] // p, x.shape[3] // p)
        pos = grid_positions(self.config.hidden_size, grid, self.grid, self.pos_embed, self._pos_cache, x.device)
        tokens = self.patch_embed(x.to(dtype)) + pos.to(dtype)  # (B, gh*gw, hidden)
        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                tokens = self._gradient_checkpointing_func(block, tokens, cond)
            else:
                tokens = block(tokens, cond)
        out = unpatchify(self.final_layer(tokens, cond), grid, p, self.out_channels)  # (B, C_out, H, W)
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)
