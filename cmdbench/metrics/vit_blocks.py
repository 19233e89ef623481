"""The plain pre-norm ViT block shared by the video feature extractors (V-JEPA for JEDi, VideoMAE-v2 for
content-debiased FVD): ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``, GELU MLP, fused SDPA attention.

Both checkpoints name the block's parts the same way (``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``,
``mlp.fc1``, ``mlp.fc2``, timm's layout); they differ only in the ``qkv`` bias, chosen by ``qkv_bias``:
``"full"`` (V-JEPA: ``attn.qkv.bias``) or ``"qv"`` (VideoMAE-v2: ``attn.q_bias`` and ``attn.v_bias``, no key
bias, as BEiT introduced). Written here from those layouts; no peer code copied.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

QKV_BIASES = ("full", "qv")


class Attention(nn.Module):
    """Multi-head self-attention, one fused ``qkv`` projection, scale ``head_dim^-1/2``:
    ``(B, N, D) -> (B, N, D)``. The attention runs in torch's fused SDPA (the same softmax(q k^T / sqrt(d)) v
    as an explicit product, without materialising the (heads, N, N) matrix)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: str = "full") -> None:
        super().__init__()
        if qkv_bias not in QKV_BIASES:
            raise ValueError(f"qkv_bias={qkv_bias!r}; allowed {QKV_BIASES}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias == "full")
        if qkv_bias == "qv":
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        bias = self.qkv.bias
        if bias is None:  # "qv": q_bias, no key bias, v_bias
            bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # 3 x (B, heads, N, d/heads)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class MLP(nn.Module):
    """``fc2(GELU(fc1(x)))``: ``(..., D) -> (..., D)``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block ``(B, N, D) -> (B, N, D)`` (LayerNorm ``eps``; both extractors use 1e-6)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, *, eps: float = 1e-6,
                 qkv_bias: str = "full") -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))
