"""CMD content-frame model p(x_bar | c) and the Stable Diffusion parts around it (Yu et al., ICLR 2024, §3.2).

The content frame x_bar has the shape of one frame, so an image diffusion model generates it directly:

- text-to-video: a Stable Diffusion ``UNet2DConditionModel`` fine-tuned on content frames **with no new
  parameters** (Eq. 7): SD 2.1-base for 512x1024 (content frame = a 4x64x128 SD latent) and SD 1.5 for the
  512x512 zero-shot UCF-101 setting. Text enters through SD's own cross-attention.
- class-conditional UCF-101: a pixel-space DiT-XL/2 over 3x64x64 content frames, trained from scratch,
  built as DiT builds it (``content_dit.ContentDiT``: one shared timestep and label embedder, adaLN-Zero,
  DiT's initialisation; 673.8M parameters at UCF-101's sizes, see its docstring for the relation to 675M).

Every builder loads real weights with ``from_pretrained`` (offline, ``local_files_only=True``) when a
checkpoint is given, and otherwise builds the published architecture with random weights from the config
dicts below (``device="meta"`` builds without allocating memory, for parameter and FLOP counts).
``tiny=True`` builds a random miniature for CPU tests.

Config sources: ``../shared/reference/baselines.md`` §5.1 (SD 1.5), §5.2 (SD 2.1-base), §2.1 (the 23-layer
OpenCLIP-H text tower shared by SD 2.x and ModelScope), §5.3 (DiT sizes).

The content DiT's label table has ``num_classes + 1`` rows; **the null label for guidance is
``num_classes``** (101 for UCF-101). The model never drops labels itself: training replaces labels by the
null label at its own rate.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from cmdbench.cmd.content_dit import ContentDiT

SD_VERSIONS = ("2.1-base", "1.5")

# ---------------------------------------------------------------------------------------------------------
# Published configs (baselines.md §5)
# ---------------------------------------------------------------------------------------------------------

_SD15_UNET = {
    "act_fn": "silu",
    "addition_embed_type": None,
    "addition_embed_type_num_heads": 64,
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "class_embed_type": None,
    "class_embeddings_concat": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_dim": 768,
    "cross_attention_norm": None,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "encoder_hid_dim": None,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": None,
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default",
    "sample_size": 64,
    "time_cond_proj_dim": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "upcast_attention": False,
    "use_linear_projection": False,
}
# SD 2.1-base = SD 1.5 except head dim 64 (5/10/20/20 heads), 1024-d cross-attention, linear projections.
_SD21_BASE_UNET = {
    **_SD15_UNET,
    "attention_head_dim": [5, 10, 20, 20],
    "cross_attention_dim": 1024,
    "use_linear_projection": True,
}

_CLIP_L_TEXT = {  # SD 1.5: CLIP ViT-L/14 text tower
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "projection_dim": 768,
    "max_position_embeddings": 77,
    "vocab_size": 49408,
    "layer_norm_eps": 1e-05,
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}
_OPENCLIP_H_TEXT = {  # SD 2.x: OpenCLIP ViT-H/14 text tower without its last layer (23 of 24)
    **_CLIP_L_TEXT,
    "hidden_act": "gelu",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_attention_heads": 16,
    "num_hidden_layers": 23,
    "projection_dim": 512,
}

_SD_VAE = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

_UNET = {"1.5": _SD15_UNET, "2.1-base": _SD21_BASE_UNET}
_TEXT = {"1.5": _CLIP_L_TEXT, "2.1-base": _OPENCLIP_H_TEXT}
_VAE = {"1.5": _SD_VAE, "2.1-base": {**_SD_VAE, "sample_size": 768}}

# Random miniatures for CPU tests: same structure (f = 8 VAE, 4 latent channels, cross-attention).
TINY_TEXT_HIDDEN = 32
_TINY_UNET = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "cross_attention_dim": TINY_TEXT_HIDDEN,
}
_TINY_TEXT = {
    **_CLIP_L_TEXT,
    "hidden_size": TINY_TEXT_HIDDEN,
    "intermediate_size": 64,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "projection_dim": TINY_TEXT_HIDDEN,
}
_TINY_VAE = {
    **_SD_VAE,
    "block_out_channels": [16, 16, 16, 16],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 64,
}

# DiT sizes (Peebles & Xie, Table 1): depth, width, heads; "/2" = patch 2. "tiny": CPU-test miniature.
CONTENT_DIT_SIZES: dict[str, dict[str, int]] = {
    "S/2": {"depth": 12, "hidden_size": 384, "num_heads": 6, "patch_size": 2},
    "B/2": {"depth": 12, "hidden_size": 768, "num_heads": 12, "patch_size": 2},
    "L/2": {"depth": 24, "hidden_size": 1024, "num_heads": 16, "patch_size": 2},
    "XL/2": {"depth": 28, "hidden_size": 1152, "num_heads": 16, "patch_size": 2},
    "tiny": {"depth": 2, "hidden_size": 32, "num_heads": 2, "patch_size": 2},
}


def _check_version(version: str) -> str:
    if version not in SD_VERSIONS:
        raise ValueError(f"unknown Stable Diffusion version {version!r}; allowed: {SD_VERSIONS}")
    return version


def sd_unet_config(version: str = "2.1-base") -> dict:
    """The published ``unet/config.json`` values of SD 2.1-base or SD 1.5 (a fresh copy)."""
    return copy.deepcopy(_UNET[_check_version(version)])


def sd_text_encoder_config(version: str = "2.1-base") -> dict:
    """``CLIPTextConfig`` values: OpenCLIP-H (23 layers, 1024-d) for 2.1-base, CLIP-L (768-d) for 1.5."""
    return copy.deepcopy(_TEXT[_check_version(version)])


def sd_vae_config(version: str = "2.1-base") -> dict:
    """``AutoencoderKL`` values (f = 8, 4 latent channels, scaling factor 0.18215)."""
    return copy.deepcopy(_VAE[_check_version(version)])


def tiny_unet_config() -> dict:
    return copy.deepcopy(_TINY_UNET)


def tiny_text_encoder_config() -> dict:
    return copy.deepcopy(_TINY_TEXT)


def tiny_vae_config() -> dict:
    return copy.deepcopy(_TINY_VAE)


# ---------------------------------------------------------------------------------------------------------
# Loading helpers
# ---------------------------------------------------------------------------------------------------------


def _construct(factory, device, dtype):
    """Run ``factory()`` (meta device: inside ``torch.device('meta')``), then move to device/dtype."""
    if device is not None and torch.device(device).type == "meta":
        with torch.device("meta"):
            model = factory()
    else:
        model = factory()
        if device is not None:
            model = model.to(device)
    if dtype is not None:
        model = model.to(dtype=dtype)
    return model.eval()


def _load_pretrained(load, checkpoint: str | Path, subfolder: str, what: str):
    """Call ``load(checkpoint, subfolder)`` offline; a missing checkpoint gives a clear FileNotFoundError."""
    path = Path(checkpoint).expanduser()
    if path.exists():
        sub = subfolder if (path / subfolder).is_dir() else None
        if sub is None and not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{what}: checkpoint folder {path} has neither a '{subfolder}/' subfolder nor a config.json"
            )
        source, sub_arg = str(path), sub
    else:
        source, sub_arg = str(checkpoint), subfolder
    try:
        return load(source, sub_arg)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"{what}: could not load {checkpoint!r} (subfolder {subfolder!r}) offline. Pass a local folder in "
            f"the diffusers layout or a hub id already in the Hugging Face cache. Cause: {err}"
        ) from err


def _check_matches(loaded: dict, expected: dict, keys: tuple[str, ...], what: str, checkpoint) -> None:
    """Raise when a loaded config disagrees with the published architecture on ``keys``."""
    def norm(value):
        return list(value) if isinstance(value, (tuple, list)) else value

    bad = {k: (norm(loaded.get(k)), norm(expected[k])) for k in keys if norm(loaded.get(k)) != norm(expected[k])}
    if bad:
        details = ", ".join(f"{k}={got!r} (expected {want!r})" for k, (got, want) in bad.items())
        raise ValueError(f"{what} from {checkpoint!r} does not match the expected architecture: {details}")


# ---------------------------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------------------------


def build_content_unet(
    version: str = "2.1-base",
    checkpoint: str | Path | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    tiny: bool = False,
) -> UNet2DConditionModel:
    """The text-conditional content-frame model: SD's ``UNet2DConditionModel``, no new parameters.

    ``checkpoint``: a local SD folder (``unet/`` subfolder) or a cached hub id, loaded offline; None builds
    the published config with random weights; ``tiny=True`` a random miniature (cross-attention width
    ``TINY_TEXT_HIDDEN``). Input: latents (B, 4, h, w) with h, w divisible by 8 (64x128 at 512x1024).
    """
    _check_version(version)
    if tiny:
        if checkpoint is not None:
            raise ValueError("tiny=True builds random weights; do not pass a checkpoint")
        return _construct(lambda: UNet2DConditionModel.from_config(tiny_unet_config()), device, dtype)
    if checkpoint is None:
        return _construct(lambda: UNet2DConditionModel.from_config(sd_unet_config(version)), device, dtype)
    unet = _load_pretrained(
        lambda src, sub: UNet2DConditionModel.from_pretrained(
            src, subfolder=sub, local_files_only=True, torch_dtype=dtype
        ),
        checkpoint, "unet", f"SD {version} UNet",
    )
    keys = ("in_channels", "out_channels", "block_out_channels", "cross_attention_dim", "layers_per_block",
            "attention_head_dim", "use_linear_projection")
    _check_matches(dict(unet.config), sd_unet_config(version), keys, f"SD {version} UNet", checkpoint)
    return _construct(lambda: unet, device, None)


def build_text_encoder(
    version: str = "2.1-base",
    checkpoint: str | Path | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    tiny: bool = False,
) -> CLIPTextModel:
    """SD's text encoder (``CLIPTextModel``): OpenCLIP-H 23 layers (2.1-base) or CLIP-L (1.5).

    Loaded offline from ``checkpoint`` (``text_encoder/`` subfolder) or built with random weights. Output
    ``last_hidden_state`` (B, 77, 1024 | 768) feeds the UNet's cross-attention and, mean-pooled, the
    motion DiT's text projection.
    """
    _check_version(version)
    if tiny:
        if checkpoint is not None:
            raise ValueError("tiny=True builds random weights; do not pass a checkpoint")
        return _construct(lambda: CLIPTextModel(CLIPTextConfig(**tiny_text_encoder_config())), device, dtype)
    if checkpoint is None:
        return _construct(lambda: CLIPTextModel(CLIPTextConfig(**sd_text_encoder_config(version))), device, dtype)
    encoder = _load_pretrained(
        lambda src, sub: CLIPTextModel.from_pretrained(src, subfolder=sub, local_files_only=True, dtype=dtype),
        checkpoint, "text_encoder", f"SD {version} text encoder",
    )
    keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    _check_matches(encoder.config.to_dict(), sd_text_encoder_config(version), keys,
                   f"SD {version} text encoder", checkpoint)
    return _construct(lambda: encoder, device, None)


def build_vae(
    version: str = "2.1-base",
    checkpoint: str | Path | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    tiny: bool = False,
) -> AutoencoderKL:
    """SD's image VAE (``AutoencoderKL``, f = 8, 4 latent channels, ``config.scaling_factor`` 0.18215).

    Latent-mode CMD encodes each frame with it and multiplies by the scaling factor (done by the pipeline).
    """
    _check_version(version)
    if tiny:
        if checkpoint is not None:
            raise ValueError("tiny=True builds random weights; do not pass a checkpoint")
        return _construct(lambda: AutoencoderKL.from_config(tiny_vae_config()), device, dtype)
    if checkpoint is None:
        return _construct(lambda: AutoencoderKL.from_config(sd_vae_config(version)), device, dtype)
    vae = _load_pretrained(
        lambda src, sub: AutoencoderKL.from_pretrained(src, subfolder=sub, local_files_only=True, torch_dtype=dtype),
        checkpoint, "vae", f"SD {version} VAE",
    )
    keys = ("latent_channels", "block_out_channels", "in_channels")
    _check_matches(dict(vae.config), sd_vae_config(version), keys, f"SD {version} VAE", checkpoint)
    return _construct(lambda: vae, device, None)


def content_dit_config(
    size: str = "XL/2",
    num_classes: int = 101,
    in_channels: int = 3,
    sample_size: int | list[int] = 64,
    learn_sigma: bool = False,
) -> dict:
    """``ContentDiT`` kwargs of a class-conditional pixel content DiT (3x64x64 for UCF-101).

    ``sample_size``: the native frame size, an int (square) or ``[H, W]``."""
    if size not in CONTENT_DIT_SIZES:
        raise ValueError(f"unknown content DiT size {size!r}; allowed: {sorted(CONTENT_DIT_SIZES)}")
    dims = CONTENT_DIT_SIZES[size]
    sides = [sample_size] * 2 if isinstance(sample_size, int) else list(sample_size)
    if any(side % dims["patch_size"] for side in sides):
        raise ValueError(f"sample_size={sample_size} must be divisible by the patch size {dims['patch_size']}")
    return {
        **dims,
        "in_channels": in_channels,
        "sample_size": sample_size,
        "num_classes": num_classes,
        "learn_sigma": learn_sigma,
    }


def content_dit_null_label(model: ContentDiT) -> int:
    """The null-class label index used for guidance: ``num_classes`` (the table's extra last row)."""
    num_classes = int(model.config.num_classes)
    rows = model.class_embed.num_embeddings
    if rows != num_classes + 1:
        raise ValueError(f"content DiT has no null-class row ({rows} rows for {num_classes} classes)")
    return num_classes


def build_content_dit(
    size: str = "XL/2",
    num_classes: int = 101,
    checkpoint: str | Path | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    tiny: bool = False,
    in_channels: int = 3,
    sample_size: int | list[int] = 64,
    learn_sigma: bool = False,
) -> ContentDiT:
    """The class-conditional content-frame model: a pixel-space ``ContentDiT`` over (B, 3, 64, 64) frames.

    ``forward(hidden_states (B, C, H, W), timestep (B,), class_labels (B,) in [0, num_classes],
    return_dict=False)[0] -> eps (B, C, H, W)`` (first C channels when ``learn_sigma``). Label
    ``num_classes`` is the null class. ``checkpoint``: a local folder with ``transformer/`` (or a
    config.json at its root), loaded offline. ``tiny=True`` uses the size ``"tiny"``.
    """
    if tiny:
        if checkpoint is not None:
            raise ValueError("tiny=True builds random weights; do not pass a checkpoint")
        size = "tiny"
    config = content_dit_config(size, num_classes, in_channels, sample_size, learn_sigma)
    if checkpoint is None:
        return _construct(lambda: ContentDiT(**config), device, dtype)
    loaded = _load_pretrained(
        lambda src, sub: ContentDiT.from_pretrained(src, subfolder=sub, local_files_only=True, torch_dtype=dtype),
        checkpoint, "transformer", f"content DiT-{size}",
    )
    keys = ("depth", "hidden_size", "num_heads", "in_channels", "learn_sigma", "sample_size", "patch_size",
            "num_classes")
    _check_matches(dict(loaded.config), config, keys, f"content DiT-{size}", checkpoint)
    return _construct(lambda: loaded, device, None)
