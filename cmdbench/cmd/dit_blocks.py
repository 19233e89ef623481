"""DiT building blocks shared by CMD's two DiTs (``ContentDiT`` and ``MotionDiT``).

Implemented from the DiT paper (Peebles & Xie, ICCV 2023, §3.2 "adaLN-Zero" and App. "Model details"); no
code from the DiT release (non-commercial). Attention and MLP come from diffusers (``Attention``: SDPA,
``FeedForward``: Linear-GELU(tanh)-Linear).

- :class:`AdaLNZeroBlock`: self-attention and MLP, each after a LayerNorm modulated by (shift, scale) and
  followed by a gate, all six regressed from the conditioning vector; the regression is zero-initialised so
  the block starts as the identity.
- :class:`AdaLNFinalLayer`: modulated LayerNorm and a zero-initialised linear to ``p * p * C_out`` per token.
- :func:`init_dit_weights`: DiT's initialisation of a whole model.
- :func:`grid_positions` / :func:`unpatchify`: fixed 2D sin-cos positions for any token grid, and the
  inverse of the conv patchify.
"""

from __future__ import annotations

import torch
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from torch import nn

from cmdbench.cmd.autoencoder import sincos_embedding_2d


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x (B, N, C) * (1 + scale) + shift, with shift/scale (B, C)."""
    return x * (1 + scale[:, None]) + shift[:, None]


class AdaLNZeroBlock(nn.Module):
    """DiT block: self-attention and MLP, each pre-normed, modulated and gated by an external vector.

    ``x (B, N, C), cond (B, C) -> (B, N, C)``. The modulation is zero-initialised, so the block starts as
    the identity (adaLN-Zero).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads=num_heads, dim_head=dim // num_heads, bias=True, out_bias=True)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = FeedForward(dim, mult=mlp_ratio, activation_fn="gelu-approximate")
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.modulation[1].weight)
        nn.init.zeros_(self.modulation[1].bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.modulation(cond).chunk(6, dim=1)  # 6 x (B, C)
        x = x + gate_a[:, None] * self.attn(modulate(self.norm1(x), shift_a, scale_a))
        x = x + gate_m[:, None] * self.mlp(modulate(self.norm2(x), shift_m, scale_m))
        return x


class AdaLNFinalLayer(nn.Module):
    """Final DiT layer: adaLN (shift, scale) then a zero-initialised linear to ``p*p*out`` per token."""

    def __init__(self, dim: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        for layer in (self.modulation[1], self.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(cond).chunk(2, dim=1)  # 2 x (B, C)
        return self.linear(modulate(self.norm(x), shift, scale))  # (B, N, p*p*out)


def _xavier_uniform_fused_qkv(attn: Attention) -> None:
    """DiT's attention has one fused ``qkv`` Linear (C -> 3C) initialised as one xavier-uniform matrix
    (bound sqrt(6 / (C + 3C))). diffusers' ``Attention`` keeps q, k, v apart, so they are drawn as the
    three row blocks of one such matrix rather than as three (C -> C) matrices (bound sqrt(6 / 2C))."""
    q, k, v = attn.to_q.weight, attn.to_k.weight, attn.to_v.weight
    fused = torch.empty(q.shape[0] + k.shape[0] + v.shape[0], q.shape[1], device=q.device, dtype=q.dtype)
    nn.init.xavier_uniform_(fused)
    with torch.no_grad():
        q.copy_(fused[: q.shape[0]])
        k.copy_(fused[q.shape[0] : q.shape[0] + k.shape[0]])
        v.copy_(fused[q.shape[0] + k.shape[0] :])


def init_dit_weights(
    model: nn.Module,
    *,
    patch_embeds: list[nn.Conv2d],
    time_mlp: list[nn.Linear],
    label_table: nn.Embedding | None,
) -> None:
    """DiT's initialisation (Peebles & Xie, §3.2 and App.):

    - every Linear xavier-uniform, bias 0 (attention q/k/v as one fused (3C x C) matrix);
    - patch embeddings like a Linear: xavier-uniform on the (C_out, C_in * p * p) view, bias 0;
    - timestep MLP weights N(0, 0.02) (biases 0); label table N(0, 0.02);
    - adaLN-Zero: every block's modulation and the final layer's modulation and linear are 0, so the
      model outputs exactly zero at initialisation.
    """
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    for module in model.modules():
        if isinstance(module, Attention):
            _xavier_uniform_fused_qkv(module)
    for conv in patch_embeds:
        nn.init.xavier_uniform_(conv.weight.view(conv.weight.shape[0], -1))
        nn.init.zeros_(conv.bias)
    for layer in time_mlp:
        nn.init.normal_(layer.weight, std=0.02)
    if label_table is not None:
        nn.init.normal_(label_table.weight, std=0.02)
    for module in model.modules():
        if isinstance(module, AdaLNZeroBlock):
            nn.init.zeros_(module.modulation[1].weight)
            nn.init.zeros_(module.modulation[1].bias)
        elif isinstance(module, AdaLNFinalLayer):
            for layer in (module.modulation[1], module.linear):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)


def batch_timesteps(timestep: torch.Tensor | float | int, batch: int, device: torch.device) -> torch.Tensor:
    """A scalar or ``(B,)`` timestep -> ``(B,)`` on ``device``; any other shape is refused."""
    timestep = torch.as_tensor(timestep, device=device)
    if timestep.ndim == 0:
        return timestep.expand(batch)
    if timestep.shape != (batch,):
        raise ValueError(f"timestep must be a scalar or (B={batch},); got shape {tuple(timestep.shape)}")
    return timestep


def grid_positions(
    hidden_size: int,
    grid: tuple[int, int],
    native_grid: tuple[int, int],
    native: torch.Tensor,
    cache: dict[tuple[int, int, str], torch.Tensor],
    device: torch.device,
) -> torch.Tensor:
    """Fixed 2D sin-cos positions ``(grid_h * grid_w, hidden)`` float32: the ``native`` table at
    ``native_grid``, else the same formula (``sincos_embedding_2d``) for ``grid``, cached per (grid, device)."""
    if tuple(grid) == tuple(native_grid):
        return native
    key = (*grid, str(device))
    if key not in cache:
        cache[key] = sincos_embedding_2d(hidden_size, *grid).to(device)
    return cache[key]


def unpatchify(tokens: torch.Tensor, grid: tuple[int, int], patch_size: int, out_channels: int) -> torch.Tensor:
    """(B, gh*gw, p*p*out) -> (B, out, gh*p, gw*p): the inverse of a conv patchify's row-major token order."""
    b = tokens.shape[0]
    gh, gw = grid
    p = patch_size
    x = tokens.view(b, gh, gw, p, p, out_channels)  # (B, gh, gw, p, p, out)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, out_channels, gh * p, gw * p)
