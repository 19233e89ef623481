"""V-JEPA ViT-H/16 video features with the SSv2 attentive probe's pooler: the feature extractor of JEDi.

JEDi (Luo et al., "Beyond FVD", ICLR 2025; PyPI ``videojedi`` 1.1.0) embeds every clip with V-JEPA
(Bardes et al., "Revisiting Feature Prediction for Learning Visual Representations from Video", 2024):

1. frames in [0, 1], normalised with the ImageNet mean/std per channel, as ``(B, 3, T, H, W)``;
2. the frozen V-JEPA **target encoder** ViT-H/16 (``vith16.pth.tar``, key ``target_encoder``): a 3D patch
   embedding (tubelets of 2 frames x 16 x 16 pixels, one ``Conv3d``), fixed 3D sine-cosine position
   embedding (stored in the checkpoint, trilinearly resized when the clip is not 16 x 224 x 224),
   32 pre-norm transformer blocks (width 1280, 16 heads, MLP 5120, GELU, LayerNorm eps 1e-6), final
   LayerNorm -> tokens ``(B, N, 1280)``;
3. the **pooler of the attentive probe trained on Something-Something-v2** (``ssv2-probe.pth.tar``, key
   ``classifier``): one learned query token cross-attends to all tokens (LayerNorm eps 1e-5 on the
   tokens, 16 heads), then a residual MLP -> ``(B, 1280)``. The probe's linear classifier (174 SSv2
   classes) is loaded but not used: videojedi's ``VJEPA.get_feats`` returns the pooler output
   (``finetuned=True``, its default), not the logits and not the mean of the encoder tokens.

Everything is written for cmdbench from the paper and the checkpoints' published layout. Module and
parameter names follow the checkpoints (read in videojedi 1.1.0, Apache-2.0, and the PyPI ``vjepa``
0.1.2 code, CC-BY-NC-4.0: facts only, nothing copied; see ``ORIGIN.md``), so both files load with
``strict=True`` after removing the ``module.`` / ``backbone.`` wrapper prefixes of the training code.
The V-JEPA weights are CC-BY-NC-4.0 (``cmdbench weights``).

:class:`VJEPAExtractor` follows the FVD extractor protocol (:class:`cmdbench.metrics.i3d.FeatureExtractor`):
uint8 ``(B, T, 3, H, W)`` -> float64 ``(B, 1280)``. ``vjepa-random-tiny`` is a random-weight miniature of
the same code path for CPU tests; ``vjepa-random`` the full-size network with random weights (cost).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cmdbench.metrics.i3d import file_sha256, state_dict_sha256
from cmdbench.metrics.preprocess import Preprocessing, to_extractor_input
from cmdbench.metrics.vit_blocks import MLP, Block
from cmdbench.video import VideoFormatError, validate_video

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ENCODER_WEIGHTS = "vjepa_vith16"  # cmdbench.weights names of the two files
PROBE_WEIGHTS = "vjepa_vith16_ssv2_probe"
REAL_NAME = "vjepa_vith16_ssv2"  # extractor name: encoder + SSv2 probe pooler
EXTRACTOR_NAMES = (REAL_NAME, "vjepa-random", "vjepa-random-tiny")


@dataclass(frozen=True)
class VJEPAConfig:
    """Sizes of the encoder and its attentive probe (defaults: V-JEPA ViT-H/16 at 224, 16 frames).

    ``uniform_power``: the 3D sine-cosine position embedding gives time, height and width equal shares
    of the channels (V-JEPA's evaluation config for ViT-H/16 sets it); it only matters for random
    weights, the checkpoint stores the embedding.
    """

    img_size: int = 224
    patch_size: int = 16
    num_frames: int = 16
    tubelet_size: int = 2
    embed_dim: int = 1280
    depth: int = 32
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_classes: int = 174  # SSv2 probe head (loaded, unused for features)
    uniform_power: bool = True

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid ``(t, h, w)`` the stored position embedding is laid out on."""
        side = self.img_size // self.patch_size
        return self.num_frames // self.tubelet_size, side, side


VIT_H16 = VJEPAConfig()
TINY = VJEPAConfig(embed_dim=48, depth=2, num_heads=3, num_classes=5)  # same input protocol, tiny width


# --- position embedding ---------------------------------------------------------------------------------
def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """float64 ``(M, dim)``: ``[sin(p·ω_k), cos(p·ω_k)]`` with ``ω_k = 10000^(-k / (dim/2))``, k < dim/2."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.reshape(-1, 1).double() * omega  # (M, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_3d(dim: int, grid: tuple[int, int, int], *, uniform_power: bool) -> torch.Tensor:
    """float64 ``(t*h*w, dim)`` position embedding of a ``(t, h, w)`` token grid, tokens in (t, h, w) order.

    Channels are ``[time | height | width]`` sine-cosine blocks: dim/2, dim/4, dim/4 wide, or three equal
    blocks of ``2·ceil(dim/6)`` (``uniform_power``), truncated to ``dim``.
    """
    t, h, w = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in grid), indexing="ij")
    if uniform_power:
        dt = dh = dw = 2 * math.ceil(dim / 6)
    else:
        dt, dh, dw = dim // 2, dim // 4, dim // 4
    emb = torch.cat([sincos_1d(dt, t), sincos_1d(dh, h), sincos_1d(dw, w)], dim=1)
    return emb[:, :dim]


# --- the encoder ----------------------------------------------------------------------------------------
class PatchEmbed3D(nn.Module):
    """Tubelets of ``tubelet x patch x patch`` pixels -> tokens: ``(B, 3, T, H, W)`` -> ``(B, N, D)``."""

    def __init__(self, patch_size: int, tubelet_size: int, embed_dim: int) -> None:
        super().__init__()
        kernel = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(3, embed_dim, kernel_size=kernel, stride=kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, D, t, h, w) -> (B, t*h*w, D)


class VJEPAEncoder(nn.Module):
    """V-JEPA video ViT: ``(B, 3, T, H, W)`` normalised frames -> tokens ``(B, N, D)`` after the final norm.

    Keys: ``patch_embed.proj``, ``pos_embed`` (1, N, D), ``blocks.{i}.{norm1, attn.qkv, attn.proj, norm2,
    mlp.fc1, mlp.fc2}``, ``norm``.
    """

    def __init__(self, config: VJEPAConfig = VIT_H16) -> None:
        super().__init__()
        c = self.config = config
        self.patch_embed = PatchEmbed3D(c.patch_size, c.tubelet_size, c.embed_dim)
        pos = sincos_3d(c.embed_dim, c.grid, uniform_power=c.uniform_power).float().unsqueeze(0)
        self.pos_embed = nn.Parameter(pos, requires_grad=False)  # (1, t*h*w, D), fixed but stored
        self.blocks = nn.ModuleList(Block(c.embed_dim, c.num_heads, c.mlp_ratio, eps=1e-6) for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.embed_dim, eps=1e-6)

    def position_embedding(self, t: int, h: int, w: int) -> torch.Tensor:
        """The stored embedding for a ``(t, h, w)`` input clip: as stored for the training size, else
        resized trilinearly by the factors ``(t/T0, h/H0, w/W0)`` in token units (as V-JEPA does)."""
        c = self.config
        if (t, h, w) == (c.num_frames, c.img_size, c.img_size):
            return self.pos_embed
        grid = c.grid
        scale = (t // c.tubelet_size / grid[0], h // c.patch_size / grid[1], w // c.patch_size / grid[2])
        pos = self.pos_embed.reshape(1, *grid, -1).permute(0, 4, 1, 2, 3)  # (1, D, T0, H0, W0)
        pos = F.interpolate(pos, scale_factor=scale, mode="trilinear")
        return pos.permute(0, 2, 3, 4, 1).reshape(1, -1, pos.shape[1])  # (1, t'*h'*w', D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != 3:
            raise VideoFormatError(f"V-JEPA input must be (B, 3, T, H, W), got {tuple(x.shape)}")
        c = self.config
        t, h, w = x.shape[2:]
        if t < c.tubelet_size or h < c.patch_size or w < c.patch_size:
            raise VideoFormatError(
                f"V-JEPA input (T={t}, H={h}, W={w}) is smaller than one {c.tubelet_size}x{c.patch_size}x"
                f"{c.patch_size} tubelet"
            )
        tokens = self.patch_embed(x) + self.position_embedding(t, h, w)  # (B, N, D)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)


# --- the SSv2 attentive probe ---------------------------------------------------------------------------
class CrossAttention(nn.Module):
    """Queries attend to tokens: separate ``q`` and fused ``kv`` projections, scale ``head_dim^-1/2``."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, queries: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        b, nq, d = queries.shape
        n, hd = tokens.shape[1], d // self.num_heads
        q = self.q(queries).reshape(b, nq, self.num_heads, hd).transpose(1, 2)  # (B, heads, nq, hd)
        k, v = self.kv(tokens).reshape(b, n, 2, self.num_heads, hd).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, nq, hd)
        return self.proj(out.transpose(1, 2).reshape(b, nq, d))


class CrossAttentionBlock(nn.Module):
    """``q + xattn(q, norm1(tokens))``, then ``q + mlp(norm2(q))`` (LayerNorm eps 1e-5, torch's default)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.xattn = CrossAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, queries: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        queries = queries + self.xattn(queries, self.norm1(tokens))
        return queries + self.mlp(self.norm2(queries))


class AttentivePooler(nn.Module):
    """One learned query token cross-attends to all tokens: ``(B, N, D)`` -> ``(B, 1, D)``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.query_tokens = nn.Parameter(torch.zeros(1, 1, dim))
        self.cross_attention_block = CrossAttentionBlock(dim, num_heads, mlp_ratio)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.cross_attention_block(self.query_tokens.expand(tokens.shape[0], -1, -1), tokens)


class AttentiveProbe(nn.Module):
    """The SSv2 classifier: ``pooler`` + ``linear`` (174 classes). Keys ``pooler.*``, ``linear.*``."""

    def __init__(self, config: VJEPAConfig = VIT_H16) -> None:
        super().__init__()
        self.pooler = AttentivePooler(config.embed_dim, config.num_heads, config.mlp_ratio)
        self.linear = nn.Linear(config.embed_dim, config.num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.linear(self.pooler(tokens).squeeze(1))  # (B, classes)


class VJEPAFeatureNet(nn.Module):
    """Encoder + probe pooler: normalised ``(B, 3, T, H, W)`` -> JEDi features ``(B, D)`` float."""

    def __init__(self, config: VJEPAConfig = VIT_H16) -> None:
        super().__init__()
        self.config = config
        self.encoder = VJEPAEncoder(config)
        self.probe = AttentiveProbe(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.probe.pooler(self.encoder(x)).squeeze(1)  # (B, N, D) -> (B, D)


def init_random_(net: VJEPAFeatureNet) -> VJEPAFeatureNet:
    """ViT initialisation in place (truncated normal std 0.02 for linear/conv weights, zero biases, query
    tokens std 0.02, LayerNorm 1/0) so random-weight features vary with the input; the stored position
    embedding keeps its sine-cosine values."""
    for m in net.modules():
        if isinstance(m, (nn.Linear, nn.Conv3d)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
    nn.init.trunc_normal_(net.probe.pooler.query_tokens, std=0.02)
    return net


# --- checkpoints ----------------------------------------------------------------------------------------
def _strip(state: Mapping[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Keys without the leading wrapper prefixes (``module.`` of DDP, ``backbone.`` of V-JEPA's MultiMask)."""
    out = {}
    for key, value in state.items():
        while key.startswith(prefixes):
            key = key.split(".", 1)[1]
        out[key] = value
    return out


def _read(path: str | Path, keys: tuple[str, ...], what: str) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{what} file {path} cannot be read as a torch checkpoint: {err}") from None
    for key in keys:
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            return ckpt[key]
    found = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
    raise ValueError(f"{what} file {path} has none of the keys {list(keys)}; found {found}")


def load_vjepa(encoder_path: str | Path, probe_path: str | Path, config: VJEPAConfig = VIT_H16) -> VJEPAFeatureNet:
    """Load ``vith16.pth.tar`` (``target_encoder``, else ``encoder``) and ``ssv2-probe.pth.tar``
    (``classifier``) into :class:`VJEPAFeatureNet` with ``strict=True``; a mismatch names the file."""
    net = VJEPAFeatureNet(config)
    enc = _strip(_read(encoder_path, ("target_encoder", "encoder"), "V-JEPA encoder"), ("module.", "backbone."))
    probe = _strip(_read(probe_path, ("classifier",), "V-JEPA SSv2 probe"), ("module.",))
    for module, state, path in ((net.encoder, enc, encoder_path), (net.probe, probe, probe_path)):
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ValueError(f"{path} does not match the V-JEPA layout {config}: {err}") from None
    return net.eval()


def save_vjepa(net: VJEPAFeatureNet, encoder_path: str | Path, probe_path: str | Path) -> None:
    """Write ``net`` in the published files' layout (``target_encoder`` with ``module.backbone.`` keys;
    ``classifier`` with ``module.`` keys; ``epoch``), e.g. a random stand-in for tests."""
    enc = {f"module.backbone.{k}": v for k, v in net.encoder.state_dict().items()}
    torch.save({"target_encoder": enc, "epoch": 0}, encoder_path)
    torch.save({"classifier": {f"module.{k}": v for k, v in net.probe.state_dict().items()}, "epoch": 0}, probe_path)


# --- the extractor ----------------------------------------------------------------------------------------
class VJEPAExtractor:
    """uint8 ``(B, T, 3, H, W)`` -> float64 V-JEPA/SSv2-pooler features ``(B, D)`` (FVD extractor protocol).

    ``preprocessing`` resizes and maps to [0, 1] (:func:`~cmdbench.metrics.preprocess.to_extractor_input`);
    the ImageNet mean/std normalisation is part of this extractor, as in videojedi's ``get_feats``.
    """

    def __init__(self, net: VJEPAFeatureNet, preprocessing: Preprocessing, *, name: str, checksum: str,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, batch_size: int = 4,
                 weights_path: str | None = None, file_checksums: Mapping[str, str] | None = None) -> None:
        if preprocessing.resize == "detector" or tuple(preprocessing.value_range) != (0.0, 1.0):
            raise ValueError(f"V-JEPA takes frames resized here and scaled to [0, 1]; got {preprocessing}")
        self.net = net.to(device=device, dtype=dtype).eval()
        self.preprocessing, self.name, self.checksum = preprocessing, name, checksum
        self.device, self.dtype, self.batch_size = torch.device(device), dtype, batch_size
        self.dim, self.min_frames = net.config.embed_dim, net.config.tubelet_size
        self.weights_path = weights_path
        self.file_checksums = dict(file_checksums or {})
        self._mean = torch.tensor(IMAGENET_MEAN, device=device, dtype=dtype).reshape(1, 3, 1, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=device, dtype=dtype).reshape(1, 3, 1, 1, 1)

    @torch.inference_mode()
    def extract(self, videos: torch.Tensor) -> np.ndarray:
        validate_video(videos, min_frames=self.min_frames)
        out = []
        for chunk in videos.split(self.batch_size):
            x = to_extractor_input(chunk, self.preprocessing).to(self.device, self.dtype)  # (b, 3, T, s, s) [0, 1]
            x = (x - self._mean) / self._std
            out.append(self.net(x).double().cpu())  # (b, D)
        return torch.cat(out).numpy()


def _paths(encoder_path: str | Path | None, probe_path: str | Path | None) -> tuple[Path, Path]:
    from cmdbench import weights  # lazy: the registry of known weight files

    enc = Path(encoder_path) if encoder_path is not None else weights.require(ENCODER_WEIGHTS)
    probe = Path(probe_path) if probe_path is not None else weights.require(PROBE_WEIGHTS)
    for p in (enc, probe):
        if not p.is_file():
            raise FileNotFoundError(f"V-JEPA weight file {p} does not exist")
    return enc, probe


def combined_checksum(encoder_sha256: str, probe_sha256: str) -> str:
    """Identity of the (encoder, probe) pair: sha256 of ``"<encoder sha256>:<probe sha256>"``."""
    return hashlib.sha256(f"{encoder_sha256}:{probe_sha256}".encode()).hexdigest()


def make_vjepa_extractor(name: str, preprocessing: Preprocessing, *, path: str | Path | None = None,
                         probe_path: str | Path | None = None, device: str = "cpu",
                         dtype: torch.dtype = torch.float32, batch_size: int = 4, seed: int = 0,
                         config: VJEPAConfig = VIT_H16) -> VJEPAExtractor:
    """A named extractor: ``vjepa_vith16_ssv2`` (real weights: ``path`` = ``vith16.pth.tar`` and
    ``probe_path`` = ``ssv2-probe.pth.tar``, default from ``cmdbench.weights``, laid out as ``config``), ``vjepa-random``
    (full size, seeded random weights) or ``vjepa-random-tiny`` (:data:`TINY`, CPU tests). Random
    extractors' checksums are the sha256 of their state dicts, so their statistics never mix with real ones.
    """
    if name == REAL_NAME:
        enc, probe = _paths(path, probe_path)
        sums = {ENCODER_WEIGHTS: file_sha256(enc), PROBE_WEIGHTS: file_sha256(probe)}
        return VJEPAExtractor(load_vjepa(enc, probe, config), preprocessing, name=name,
                              checksum=combined_checksum(*sums.values()), device=device, dtype=dtype,
                              batch_size=batch_size, weights_path=f"{enc};{probe}", file_checksums=sums)
    if name in ("vjepa-random", "vjepa-random-tiny"):
        with torch.random.fork_rng(devices=[]):  # seeded without touching the caller's RNG
            torch.manual_seed(seed)
            net = init_random_(VJEPAFeatureNet(TINY if name.endswith("tiny") else VIT_H16))
        return VJEPAExtractor(net, preprocessing, name=name, checksum=state_dict_sha256(net), device=device,
                              dtype=dtype, batch_size=batch_size)
    raise ValueError(f"unknown V-JEPA extractor {name!r}; allowed {EXTRACTOR_NAMES}")

