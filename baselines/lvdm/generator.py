"""lvdm-t2v: LVDM text-to-video (He et al., arXiv:2211.13221), ``configs/lvdm_short/text2video.yaml``.

- denoiser: :class:`baselines.lvdm.unet3d.LVDMUNet3D` (SD 1.x trunk, per-frame 1x3x3 convolutions,
  spatio-temporal transformers with relative temporal positions), 958.9M params;
- text encoder: CLIP ViT-L/14 text model (``FrozenCLIPEmbedder``: last hidden state, 77 tokens padded
  with the end token), 123.06M params;
- VAE: per-frame SD ``AutoencoderKL`` (``ch=128, ch_mult=[1,2,4,4], z=4``), ``scale_factor=0.18215``;
- sampler: DDIM on the 1000-step schedule with betas ``linspace(sqrt 0.00085, sqrt 0.012)^2`` (LDM's
  "linear" = diffusers' "scaled_linear"), uniform timesteps offset by 1; the LVDM sampling script's
  defaults: 50 steps, ``eta = 1.0``, guidance 15.0, 16 frames of 256x256 (latent 32x32).

A real checkpoint is either LVDM's own ``t2v.ckpt`` (PyTorch Lightning; ``model.diffusion_model.*``,
``first_stage_model.*`` and ``cond_stage_model.transformer.*`` are mapped onto the three networks) or
a diffusers-layout directory written by :meth:`save_pretrained` (``unet/``, ``vae/``, ``text_encoder/``).
A ``t2v.ckpt`` without the CLIP text weights takes them (and the tokenizer) from
``"<t2v.ckpt>::<CLIP folder or hub id>"``, else from ``openai/clip-vit-large-patch14`` (LVDM's own
``FrozenCLIPEmbedder`` version, from the local Hugging Face cache), else stops saying what to pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL

from baselines._common.builder import Networks, Part, Recipe, load_diffusers_checkpoint, register
from baselines._common.loading import MissingWeightsError, load_component
from baselines._common.text_video import (
    CLIP_L_TEXT_CONFIG,
    END_TOKEN,
    SD_VAE_CONFIG,
    T2V_EVAL_PROMPTS,
    TINY_CLIP_L_TEXT_CONFIG,
    TINY_VAE_CONFIG,
    VAE_SCALE,
    TextToVideoLatentGenerator,
    clip_bpe_tokenizer,
    hf_tokenizer,
)
from baselines.lvdm.unet3d import LVDMUNet3D
from cmdbench.interfaces import GeneratorSpec, SamplingDefaults, UnsupportedSettingError

NAME = "lvdm-t2v"
WEIGHTS = "Yingqing/LVDM lvdm_short/t2v.ckpt"
CLIP_PREFIX = "cond_stage_model.transformer."
DEFAULT_CLIP = "openai/clip-vit-large-patch14"  # FrozenCLIPEmbedder's version (lvdm/models/modules/condition_modules.py)
TEXT_LENGTH = 77
WEIGHT_SEED = 0

# unet_config.params of configs/lvdm_short/text2video.yaml (YingqingHe/LVDM @ 4117a2a); the keys that
# do not change the network (image_size, use_checkpoint, legacy=False -> ch // num_heads per head,
# kernel_size_t=1 / padding_t=0 -> 1x3x3 convolutions, use_temporal_transformer=True) are built in.
UNET_CONFIG: dict[str, Any] = {
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "channel_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attention_resolutions": [4, 2, 1],
    "num_heads": 8,
    "transformer_depth": 1,
    "context_dim": 768,
    "temporal_length": 16,
    "use_relative_position": True,
}
TEXT_CONFIG = CLIP_L_TEXT_CONFIG  # CLIP ViT-L/14 text tower (SD 1.5's)
SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}
TINY_UNET_CONFIG: dict[str, Any] = {
    **UNET_CONFIG,
    "model_channels": 16,
    "channel_mult": [1, 2],
    "num_res_blocks": 1,
    "attention_resolutions": [2],
    "num_heads": 2,
    "context_dim": 16,
    "temporal_length": 4,
    "norm_num_groups": 8,
}
TINY_TEXT_CONFIG = TINY_CLIP_L_TEXT_CONFIG

DEFAULTS = SamplingDefaults(num_frames=16, height=256, width=256, steps=50, guidance_scale=15.0)
TINY_DEFAULTS = SamplingDefaults(num_frames=4, height=32, width=32, steps=2, guidance_scale=15.0)
ETA = 1.0  # scripts/sample_text2video.py --eta default
EVAL_PROMPTS = T2V_EVAL_PROMPTS
LAYOUT = ("LVDM's t2v.ckpt (or '<t2v.ckpt>::<CLIP ViT-L/14 text folder or hub id>' when the file lacks the "
          "CLIP weights), or a directory with unet/, vae/, text_encoder/ written by save_pretrained")


class LVDMT2V(TextToVideoLatentGenerator):
    """LVDM text-to-video sampler around :class:`LVDMUNet3D`."""

    def check_frames(self, num_frames: int) -> None:
        # Relative positions are clipped at +-temporal_length, so any length runs; LVDM trained on 16.
        if num_frames < 1:
            raise UnsupportedSettingError(f"{self.name}: num_frames={num_frames}; allowed >= 1")

    def predict_noise(self, latents, t, text_states, text_mask):
        return self.denoiser(latents, t, text_states)  # (N, 4, T, h, w)

    def denoiser_inputs(self, batch: int, num_frames: int, h: int, w: int) -> dict[str, Any]:
        z, t, states = self.cost_tensors(batch, num_frames, h, w, self.denoiser.config.context_dim)
        return {"x": z, "timesteps": t, "context": states}


def random_networks(tiny: bool) -> Networks:
    """The published architecture (or its miniature); random weights (drawn under the builder's seed)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return Networks(
        denoiser=LVDMUNet3D(**(TINY_UNET_CONFIG if tiny else UNET_CONFIG)),
        vae=AutoencoderKL(**(TINY_VAE_CONFIG if tiny else SD_VAE_CONFIG)),
        text_encoder=CLIPTextModel(CLIPTextConfig(**(TINY_TEXT_CONFIG if tiny else TEXT_CONFIG))),
        tokenize=clip_bpe_tokenizer(TEXT_LENGTH, pad_id=END_TOKEN),  # FrozenCLIPEmbedder pads with </s>
    )


def load_clip(source: str, dtype: torch.dtype) -> tuple[torch.nn.Module, Any]:
    """CLIP ViT-L/14 text model and tokenizer from a folder or hub id: ``text_encoder/`` + ``tokenizer/``
    subfolders (an SD 1.x checkpoint) or both at the top (``openai/clip-vit-large-patch14``)."""
    from transformers import CLIPTextModel, CLIPTokenizer

    nested = Path(source).expanduser().joinpath("text_encoder").is_dir()
    text = load_component(NAME, CLIPTextModel, source, "text_encoder" if nested else None, dtype=dtype)
    tokenizer = load_component(NAME, CLIPTokenizer, source, "tokenizer" if nested else None)
    return text, tokenizer


def load_lightning_ckpt(path: Path, tiny: bool = False, clip: str | None = None,
                        dtype: torch.dtype = torch.float32) -> Networks:
    """LVDM's ``t2v.ckpt`` -> the three networks (strict key matching: a mismatch is an error).

    The CLIP text weights are ``cond_stage_model.transformer.*``; a file without them takes the text
    encoder and tokenizer from ``clip`` (default :data:`DEFAULT_CLIP`, the model LVDM's
    ``FrozenCLIPEmbedder`` loads), and says what to pass when that cannot be loaded.
    ``tiny``: the file holds the miniature configuration (tests write such files).
    """
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel

    state = torch.load(path, map_location="cpu", weights_only=False)
    state = state.get("state_dict", state)

    def part(prefix: str) -> dict[str, torch.Tensor]:
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not sub:
            raise MissingWeightsError(f"{NAME}: {path} has no '{prefix}*' weights; expected {WEIGHTS}")
        return sub

    unet = LVDMUNet3D(**(TINY_UNET_CONFIG if tiny else UNET_CONFIG))
    unet.load_state_dict(part("model.diffusion_model."), strict=True)
    vae = AutoencoderKL(**(TINY_VAE_CONFIG if tiny else SD_VAE_CONFIG))
    vae.load_state_dict(convert_ldm_vae_checkpoint(part("first_stage_model."), vae.config), strict=True)
    text_state = {k[len(CLIP_PREFIX):]: v for k, v in state.items() if k.startswith(CLIP_PREFIX)}
    if text_state:
        if clip is not None:
            raise ValueError(f"{NAME}: {path} holds its own CLIP text weights ('{CLIP_PREFIX}*'); "
                             f"drop '::{clip}' from the checkpoint")
        text = CLIPTextModel(CLIPTextConfig(**(TINY_TEXT_CONFIG if tiny else TEXT_CONFIG)))
        text_state.pop("text_model.embeddings.position_ids", None)  # a buffer in older transformers
        text.load_state_dict(text_state, strict=True)
        return Networks(denoiser=unet, vae=vae, text_encoder=text,
                        tokenize=clip_bpe_tokenizer(TEXT_LENGTH, pad_id=END_TOKEN))
    try:
        text, tokenizer = load_clip(clip or DEFAULT_CLIP, dtype)
    except MissingWeightsError as err:
        raise MissingWeightsError(
            f"{NAME}: {path} has no CLIP text weights ('{CLIP_PREFIX}*') and "
            f"{'the given' if clip else 'the default'} CLIP text model {clip or DEFAULT_CLIP!r} could not be "
            f"loaded; pass '<t2v.ckpt>::<folder or hub id of CLIP ViT-L/14 text>' (e.g. {DEFAULT_CLIP}, or an "
            f"SD 1.x folder with text_encoder/ and tokenizer/). Cause: {err}"
        ) from err
    return Networks(denoiser=unet, vae=vae, text_encoder=text, tokenize=hf_tokenizer(tokenizer, TEXT_LENGTH),
                    tokenizer=tokenizer)


def load_networks(spec: GeneratorSpec) -> Networks:
    """LVDM's ``t2v.ckpt`` (optionally ``"t2v.ckpt::<CLIP>"``) or a directory written by save_pretrained."""
    from transformers import CLIPTextModel, CLIPTokenizer

    path, _, clip = str(spec.checkpoint).partition("::")
    ckpt = Path(path).expanduser()
    if ckpt.is_file():
        return load_lightning_ckpt(ckpt, tiny=spec.tiny, clip=clip or None, dtype=spec.torch_dtype)
    if not ckpt.is_dir():
        raise MissingWeightsError(f"{NAME}: checkpoint {ckpt} does not exist; expected {LAYOUT} ({WEIGHTS})")
    return load_diffusers_checkpoint(
        NAME, str(ckpt), spec.torch_dtype, denoiser=Part("unet", LVDMUNet3D),
        text_encoder=Part("text_encoder", CLIPTextModel), tokenizer=Part("tokenizer", CLIPTokenizer),
        tokenize=lambda tok: hf_tokenizer(tok, TEXT_LENGTH), layout=LAYOUT,
        fallback_tokenize=clip_bpe_tokenizer(TEXT_LENGTH, pad_id=END_TOKEN),
    )


RECIPE = Recipe(
    name=NAME, generator=LVDMT2V, text_length=TEXT_LENGTH, scheduler_config=SCHEDULER_CONFIG,
    defaults=DEFAULTS, tiny_defaults=TINY_DEFAULTS, eval_prompts=EVAL_PROMPTS,
    random_networks=random_networks, load_networks=load_networks,
    spatial_multiple=lambda denoiser: VAE_SCALE * 2 ** (len(denoiser.config.channel_mult) - 1),
    eta=ETA, weight_seed=WEIGHT_SEED,
)


build = register(
    RECIPE,
    description="LVDM text-to-video (own port of the 3D UNet, text2video.yaml) + SD VAE + CLIP-L text, "
    "DDIM eta 1, cfg 15",
)
