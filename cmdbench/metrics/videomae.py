"""VideoMAE-v2 ViT-g/14 (SSv2 fine-tuned) features and the content-debiased FVD built on them.

Content-debiased FVD (Ge et al., "On the Content Bias in Fréchet Video Distance", CVPR 2024; PyPI
``cd-fvd`` 0.1.1, MIT) replaces I3D by a video transformer whose features react to temporal quality:
VideoMAE-v2 ViT-g/14 (Wang et al., CVPR 2023), self-supervised on a hybrid video set and fine-tuned on
Something-Something-v2 (``vit_g_hybrid_pt_1200e_ssv2_ft.pth``). cd-fvd's feature path, reproduced here:

1. uint8 frames -> float / 255 (no mean/std normalisation), the **whole frame** resized to 224 x 224
   (bilinear, ``align_corners=False``, no antialias), as ``(B, 3, T, 224, 224)``; cd-fvd takes every frame
   it is given, and the network's position table holds 16 frames (8 tubelets), so the protocol here cuts
   16 consecutive frames (the FVD clip);
2. tubelet embedding (one ``Conv3d``, 2 frames x 14 x 14 pixels, width 1408) + a fixed 1D sine-cosine
   position table over the 8 x 16 x 16 = 2048 tokens (computed, not stored in the checkpoint);
3. 40 pre-norm blocks (16 heads, MLP 6144 = 1408·48/11, GELU, LayerNorm eps 1e-6; the ``qkv`` projection
   has separate ``q_bias`` and ``v_bias``, no key bias; no layer scale);
4. the mean of all tokens, then ``fc_norm`` (LayerNorm) -> features ``(B, 1408)`` (``forward_features``;
   the 174-way SSv2 ``head`` is loaded but not used).

The Fréchet distance then uses cd-fvd's statistics: mean and the **biased** (/N) covariance accumulated in
float64 from float32 features, and ``scipy.linalg.sqrtm`` (StyleGAN-V's ``compute_fvd``), i.e. cmdbench's
:class:`~cmdbench.metrics.frechet.FeatureStats` with ``ddof=0`` and ``sqrtm="scipy"`` -- the one Fréchet
implementation, reused through :class:`~cmdbench.metrics.fvd.FVD`. cd-fvd's other path, I3D, is not repeated
here: its features are the ``tats`` preset's (``i3d_pretrained_400``, whole frame to 224 bilinear, [-1, 1]),
its distance the same /N covariance and scipy ``sqrtm`` as above.

Architecture written for cmdbench; module and parameter names follow the checkpoint (read in cd-fvd's
vendored ``VideoMAEv2/videomaev2_finetune.py``, MIT, itself from BEiT/timm), so the file loads with
``strict=True`` (cd-fvd's own loader is strict too; it unwraps a ``model`` or ``module`` entry).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cmdbench.config import EvalProtocol
from cmdbench.interfaces import MetricValue
from cmdbench.metrics.fvd import FVD, preprocessing_of
from cmdbench.metrics.i3d import file_sha256, state_dict_sha256
from cmdbench.metrics.preprocess import Preprocessing, to_extractor_input
from cmdbench.metrics.vit_blocks import Block
from cmdbench.video import VideoFormatError, validate_video

WEIGHTS_NAME = "videomae_v2_vitg14_ssv2"  # cmdbench.weights entry and extractor name of the real network
EXTRACTOR_NAMES = (WEIGHTS_NAME, "videomae-random", "videomae-random-tiny")


@dataclass(frozen=True)
class VideoMAEConfig:
    """Sizes of the VideoMAE-v2 fine-tuned ViT (defaults: ViT-g/14 at 224, 16 frames, 174 SSv2 classes)."""

    img_size: int = 224
    patch_size: int = 14
    num_frames: int = 16
    tubelet_size: int = 2
    embed_dim: int = 1408
    depth: int = 40
    num_heads: int = 16
    mlp_ratio: float = 48 / 11
    num_classes: int = 174

    @property
    def num_patches(self) -> int:
        return (self.num_frames // self.tubelet_size) * (self.img_size // self.patch_size) ** 2


VIT_G14 = VideoMAEConfig()
TINY = VideoMAEConfig(embed_dim=48, depth=2, num_heads=3, num_classes=5)  # same input protocol, tiny width


def sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    """float32 ``(1, N, dim)``: channel j of position p is ``sin`` (j even) / ``cos`` (j odd) of
    ``p / 10000^(2·floor(j/2) / dim)`` (Vaswani et al.), computed in float64."""
    j = torch.arange(dim, dtype=torch.float64)
    angles = torch.arange(num_positions, dtype=torch.float64)[:, None] / 10000 ** (2 * (j // 2) / dim)
    table = torch.where(j.long() % 2 == 0, angles.sin(), angles.cos())  # (N, dim)
    return table.float().unsqueeze(0)


class PatchEmbed(nn.Module):
    """Tubelets -> tokens: ``(B, 3, T, H, W)`` -> ``(B, N, D)``; the frame size must be the model's."""

    def __init__(self, config: VideoMAEConfig) -> None:
        super().__init__()
        kernel = (config.tubelet_size, config.patch_size, config.patch_size)
        self.img_size = config.img_size
        self.proj = nn.Conv3d(3, config.embed_dim, kernel_size=kernel, stride=kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, D, t, h, w) -> (B, t*h*w, D)


class VideoMAEv2(nn.Module):
    """VideoMAE-v2 fine-tuned ViT. :meth:`forward_features`: ``(B, 3, 16, 224, 224)`` in [0, 1] -> ``(B, D)``.

    Keys: ``patch_embed.proj``, ``blocks.{i}.{norm1, attn.qkv.weight, attn.q_bias, attn.v_bias, attn.proj,
    norm2, mlp.fc1, mlp.fc2}``, ``fc_norm``, ``head``. The position table is a non-persistent buffer.
    """

    def __init__(self, config: VideoMAEConfig = VIT_G14) -> None:
        super().__init__()
        c = self.config = config
        self.patch_embed = PatchEmbed(c)
        self.register_buffer("pos_embed", sinusoid_table(c.num_patches, c.embed_dim), persistent=False)
        self.blocks = nn.ModuleList(Block(c.embed_dim, c.num_heads, c.mlp_ratio, eps=1e-6, qkv_bias="qv")
                                    for _ in range(c.depth))
        self.fc_norm = nn.LayerNorm(c.embed_dim, eps=1e-6)
        self.head = nn.Linear(c.embed_dim, c.num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        if x.ndim != 5 or tuple(x.shape[1:]) != (3, c.num_frames, c.img_size, c.img_size):
            raise VideoFormatError(
                f"VideoMAE-v2 input must be (B, 3, {c.num_frames}, {c.img_size}, {c.img_size}) (its position "
                f"table holds {c.num_frames} frames at {c.img_size}x{c.img_size}); got {tuple(x.shape)}"
            )
        tokens = self.patch_embed(x) + self.pos_embed  # (B, N, D)
        for block in self.blocks:
            tokens = block(tokens)
        return self.fc_norm(tokens.mean(dim=1))  # (B, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))  # (B, classes)


def init_random_(model: VideoMAEv2) -> VideoMAEv2:
    """ViT initialisation in place (truncated normal std 0.02, zero biases, LayerNorm 1/0)."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv3d)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


def load_videomae(path: str | Path, config: VideoMAEConfig = VIT_G14) -> VideoMAEv2:
    """Load ``vit_g_hybrid_pt_1200e_ssv2_ft.pth`` (a state dict, or one under ``model`` / ``module``)
    into :class:`VideoMAEv2` with ``strict=True``; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VideoMAE-v2 weight file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"VideoMAE-v2 weight file {path} cannot be read as a torch checkpoint: {err}") from None
    for key in ("model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    model = VideoMAEv2(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path} does not match the VideoMAE-v2 layout {config}: {err}") from None
    return model.eval()


class VideoMAEExtractor:
    """uint8 ``(B, 16, 3, H, W)`` -> float64 VideoMAE-v2 features ``(B, D)`` (FVD extractor protocol)."""

    def __init__(self, model: VideoMAEv2, preprocessing: Preprocessing, *, name: str, checksum: str,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, batch_size: int = 4,
                 weights_path: str | Path | None = None) -> None:
        size = model.config.img_size
        if (preprocessing.resize, preprocessing.size, tuple(preprocessing.value_range)) != ("whole", size, (0.0, 1.0)):
            raise ValueError(f"VideoMAE-v2 takes whole frames resized to {size}x{size} in [0, 1]; got {preprocessing}")
        self.model = model.to(device=device, dtype=dtype).eval()
        self.preprocessing, self.name, self.checksum = preprocessing, name, checksum
        self.device, self.dtype, self.batch_size = torch.device(device), dtype, batch_size
        self.dim, self.min_frames = model.config.embed_dim, model.config.num_frames
        self.weights_path = str(weights_path) if weights_path is not None else None

    @torch.inference_mode()
    def extract(self, videos: torch.Tensor) -> np.ndarray:
        validate_video(videos, min_frames=self.min_frames)
        out = []
        for chunk in videos.split(self.batch_size):
            x = to_extractor_input(chunk, self.preprocessing).to(self.device, self.dtype)  # (b, 3, T, 224, 224)
            out.append(self.model.forward_features(x).double().cpu())  # (b, D)
        return torch.cat(out).numpy()


def make_videomae_extractor(name: str, preprocessing: Preprocessing, *, path: str | Path | None = None,
                            device: str = "cpu", dtype: torch.dtype = torch.float32, batch_size: int = 4,
                            seed: int = 0) -> VideoMAEExtractor:
    """``videomae_v2_vitg14_ssv2`` (real weights from ``path`` or ``cmdbench.weights``), ``videomae-random``
    (full size, seeded random weights) or ``videomae-random-tiny`` (:data:`TINY`, CPU tests)."""
    if name == WEIGHTS_NAME:
        if path is None:
            from cmdbench import weights

            path = weights.require(WEIGHTS_NAME)
        p = Path(path)
        return VideoMAEExtractor(load_videomae(p), preprocessing, name=name, checksum=file_sha256(p), device=device,
                                 dtype=dtype, batch_size=batch_size, weights_path=p)
    if name in ("videomae-random", "videomae-random-tiny"):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = init_random_(VideoMAEv2(TINY if name.endswith("tiny") else VIT_G14))
        return VideoMAEExtractor(model, preprocessing, name=name, checksum=state_dict_sha256(model), device=device,
                                 dtype=dtype, batch_size=batch_size)
    raise ValueError(f"unknown VideoMAE-v2 extractor {name!r}; allowed {EXTRACTOR_NAMES}")


# --- content-debiased FVD -------------------------------------------------------------------------------
# cd-fvd's feature and statistics settings as a cmdbench protocol: 2048 generated clips (cd-fvd's n_fake
# default) against 2048 real ones, 16 frames from frame 0, whole-frame bilinear resize to 224 in [0, 1],
# biased covariance, scipy's sqrtm.
PROTOCOL = EvalProtocol(
    name="videomae", extractor=WEIGHTS_NAME, num_real=2048, num_fake=2048, num_frames=16, frame_stride=1,
    size=224, resize="whole", resize_kernel="torch", antialias=False, value_range=(0.0, 1.0), ddof=0,
    sqrtm="scipy",
)
FOLLOWS = "cd-fvd 0.1.1 VideoMAE-v2 path (content-debiased FVD, Ge et al. CVPR 2024)"
WEIGHT_FILE = "vit_g_hybrid_pt_1200e_ssv2_ft.pth (VideoMAE-v2 ViT-g/14, hybrid pre-training, SSv2 fine-tuned)"


class ContentDebiasedFVD(FVD):
    """FVD on VideoMAE-v2 features under :data:`PROTOCOL` (``fvd_videomae``).

    All of FVD's bookkeeping (reference checks, counts, numerics, storage, bootstrap) applies; only the
    extractor and the protocol differ. ``extractor``: a name of :data:`EXTRACTOR_NAMES` (default the real
    network) or an extractor object; ``extractor_path``: the weight file.
    """

    def __init__(self, protocol: str | EvalProtocol | None = None, *, extractor: Any = None,
                 extractor_path: str | Path | None = None, device: str = "cpu", batch_size: int = 4,
                 num_real: int | None = None, num_fake: int | None = None, **options: Any) -> None:
        if protocol not in (None, PROTOCOL.name) and not isinstance(protocol, EvalProtocol):
            raise ValueError(f"fvd-videomae has one protocol, {PROTOCOL.name!r}; got protocol={protocol!r} "
                             "(the I3D presets belong to the fvd-* metrics)")
        p = protocol if isinstance(protocol, EvalProtocol) else PROTOCOL
        p = replace(p, num_real=p.num_real if num_real is None else num_real,
                    num_fake=p.num_fake if num_fake is None else num_fake)
        if extractor is None or isinstance(extractor, str):
            name = extractor or p.extractor
            if name not in EXTRACTOR_NAMES:
                raise ValueError(f"fvd-videomae extractor {name!r}; allowed {EXTRACTOR_NAMES}")
            extractor = make_videomae_extractor(name, preprocessing_of(p), path=extractor_path, device=device,
                                                batch_size=batch_size)
        super().__init__(p, extractor=extractor, device=device, batch_size=batch_size, **options)  # name fvd_videomae

    def compute(self) -> MetricValue:
        mv = super().compute()
        extra = dict(mv.extra, follows=FOLLOWS,
                     weight_file=WEIGHT_FILE if self.extractor.name == WEIGHTS_NAME else self.extractor.name)
        return replace(mv, extra=extra)


def fvd_videomae(protocol: str | None = None, **options: Any) -> ContentDebiasedFVD:
    """Registry factory of ``fvd-videomae``; ``ref_stats`` is the CLI spelling of ``reference``."""
    if "ref_stats" in options:
        if "reference" in options:
            raise ValueError("options ref_stats and reference name the same thing; give one")
        options["reference"] = options.pop("ref_stats")
    return ContentDebiasedFVD(protocol, **options)


FACTORY_OPTIONS: Sequence[str] = (
    "protocol", "reference", "ref_stats", "extractor", "extractor_path", "device", "batch_size", "num_real",
    "num_fake", "strict", "bootstrap_rounds", "bootstrap_seed", "allow_singular", "storage",
)
fvd_videomae.options = FACTORY_OPTIONS  # type: ignore[attr-defined]  (what `bench --metric-option` accepts)
