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
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL

from baselines._common.loading import MissingWeightsError, load_component, require_subfolders
from baselines._common.text_video import (
    CLIP_L_TEXT_CONFIG,
    END_TOKEN,
    SD_VAE_CONFIG,
    TINY_CLIP_L_TEXT_CONFIG,
    TINY_VAE_CONFIG,
    TextToVideoLatentGenerator,
    clip_bpe_tokenizer,
    hf_tokenizer,
    place,
    seeded_init,
)
from baselines.lvdm.unet3d import LVDMUNet3D
from cmdbench.interfaces import GeneratorSpec, SamplingDefaults, UnsupportedSettingError
from cmdbench.registry import GENERATORS

NAME = "lvdm-t2v"
WEIGHTS = "Yingqing/LVDM lvdm_short/t2v.ckpt"
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
EVAL_PROMPTS = (
    "a panda playing guitar in a bamboo forest",
    "waves crashing on a rocky beach at sunset",
    "a person riding a bicycle on a mountain road",
    "fireworks over a city skyline at night",
)
LAYOUT = "LVDM's t2v.ckpt, or a directory with unet/, vae/, text_encoder/ written by save_pretrained"


class LVDMT2V(TextToVideoLatentGenerator):
    """LVDM text-to-video sampler around :class:`LVDMUNet3D`."""

    def check_frames(self, num_frames: int) -> None:
        # Relative positions are clipped at +-temporal_length, so any length runs; LVDM trained on 16.
        if num_frames < 1:
            raise UnsupportedSettingError(f"{self.name}: num_frames={num_frames}; allowed >= 1")

    def predict_noise(self, latents, t, text_states, text_mask):
        return self.denoiser(latents, t, text_states)  # (N, 4, T, h, w)

    def denoiser_inputs(self, batch: int, num_frames: int, h: int, w: int) -> dict[str, Any]:
        p = next(self.denoiser.parameters())
        width = self.denoiser.config.context_dim
        return {
            "x": torch.zeros(batch, 4, num_frames, h, w, device=p.device, dtype=p.dtype),
            "timesteps": torch.tensor(999, device=p.device),
            "context": torch.zeros(batch, TEXT_LENGTH, width, device=p.device, dtype=p.dtype),
        }


def build_random(tiny: bool, device: str) -> tuple[LVDMUNet3D, AutoencoderKL, torch.nn.Module]:
    """The published architecture (or its miniature) with random weights drawn from :data:`WEIGHT_SEED`."""
    from transformers import CLIPTextConfig, CLIPTextModel

    with seeded_init(device, WEIGHT_SEED):
        unet = LVDMUNet3D(**(TINY_UNET_CONFIG if tiny else UNET_CONFIG))
        vae = AutoencoderKL(**(TINY_VAE_CONFIG if tiny else SD_VAE_CONFIG))
        text = CLIPTextModel(CLIPTextConfig(**(TINY_TEXT_CONFIG if tiny else TEXT_CONFIG)))
    return unet, vae, text


def load_lightning_ckpt(path: Path, tiny: bool = False) -> tuple[LVDMUNet3D, AutoencoderKL, torch.nn.Module]:
    """LVDM's ``t2v.ckpt`` -> the three networks (strict key matching: a mismatch is an error).

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
    text = CLIPTextModel(CLIPTextConfig(**(TINY_TEXT_CONFIG if tiny else TEXT_CONFIG)))
    text_state = part("cond_stage_model.transformer.")
    text_state.pop("text_model.embeddings.position_ids", None)  # a buffer in older transformers
    text.load_state_dict(text_state, strict=True)
    return unet, vae, text


def build(spec: GeneratorSpec) -> LVDMT2V:
    """Random weights (``checkpoint=None``; miniature when ``tiny``) or a real checkpoint (file or dir)."""
    dtype = spec.torch_dtype
    tokenizer = None
    tokenize = clip_bpe_tokenizer(TEXT_LENGTH, pad_id=END_TOKEN)  # FrozenCLIPEmbedder pads with </s>
    if spec.checkpoint is None:
        unet, vae, text = build_random(spec.tiny, spec.device)
    else:
        from transformers import CLIPTextModel, CLIPTokenizer

        ckpt = Path(spec.checkpoint).expanduser()
        if ckpt.is_file():
            unet, vae, text = load_lightning_ckpt(ckpt, tiny=spec.tiny)
        elif ckpt.is_dir():
            require_subfolders(NAME, str(ckpt), ["unet", "vae", "text_encoder"], LAYOUT)
            unet = load_component(NAME, LVDMUNet3D, str(ckpt), "unet")
            vae = load_component(NAME, AutoencoderKL, str(ckpt), "vae")
            text = load_component(NAME, CLIPTextModel, str(ckpt), "text_encoder")
            if (ckpt / "tokenizer").is_dir():
                tokenizer = load_component(NAME, CLIPTokenizer, str(ckpt), "tokenizer")
                tokenize = hf_tokenizer(tokenizer, TEXT_LENGTH)
        else:
            raise MissingWeightsError(f"{NAME}: checkpoint {ckpt} does not exist; expected {LAYOUT} ({WEIGHTS})")
    return LVDMT2V(
        name=NAME,
        denoiser=place(unet, spec.device, dtype),
        vae=place(vae, spec.device, dtype),
        text_encoder=place(text, spec.device, dtype),
        tokenize=tokenize,
        tokenizer=tokenizer,
        text_length=TEXT_LENGTH,
        scheduler_config=SCHEDULER_CONFIG,
        defaults=TINY_DEFAULTS if spec.tiny else DEFAULTS,
        spatial_multiple=8 * 2 ** (len(unet.config.channel_mult) - 1),
        eval_prompts=EVAL_PROMPTS,
        device=spec.device,
        dtype=dtype,
        eta=ETA,
    )


GENERATORS.register(
    NAME,
    build,
    description="LVDM text-to-video (own port of the 3D UNet, text2video.yaml) + SD VAE + CLIP-L text, "
    "DDIM eta 1, cfg 15",
)
