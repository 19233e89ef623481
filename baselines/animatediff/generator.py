"""animatediff-v152: AnimateDiff (Guo et al., arXiv:2307.04725) = Stable Diffusion 1.5 + motion adapter v1-5-2.

Architecture (published configs, ``shared/reference/baselines.md`` §5.1 and §6.2), from diffusers:

- denoiser: ``UNetMotionModel.from_unet2d(UNet2DConditionModel(SD 1.5 config), MotionAdapter(v1-5-2
  config))``: the SD 1.5 UNet applied per frame with motion modules (temporal transformers with two
  temporal self-attention layers and sinusoidal positions up to 32 frames) in every down, mid and up
  block; 1312.73M params;
- text encoder: CLIP ViT-L/14 text model, last hidden state, 77 tokens (123.06M);
- VAE: SD ``AutoencoderKL`` per frame (83.65M);
- sampler: DDIM with AnimateDiff's schedule (linear betas 0.00085-0.012, ``steps_offset=1``,
  ``clip_sample=False``; the diffusers AnimateDiff docs), eta 0; the pipeline's defaults 16 frames,
  50 steps, guidance 7.5, 512x512.

Real checkpoints: a directory with ``vae/``, ``text_encoder/`` (+ optional ``tokenizer/``) and either
``unet/`` holding a ``UNetMotionModel`` (as :meth:`save_pretrained` writes) or ``unet/`` holding the SD 1.5
``UNet2DConditionModel`` plus ``motion_adapter/`` (guoyww/animatediff-motion-adapter-v1-5-2).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel, UNetMotionModel

from baselines._common.loading import load_component, require_subfolders
from baselines._common.text_video import (
    CLIP_L_TEXT_CONFIG,
    SD_VAE_CONFIG,
    TINY_CLIP_L_TEXT_CONFIG,
    TINY_VAE_CONFIG,
    TextToVideoLatentGenerator,
    clip_bpe_tokenizer,
    hf_tokenizer,
    init_kwargs,
    place,
    seeded_init,
)
from cmdbench.interfaces import GeneratorSpec, SamplingDefaults, UnsupportedSettingError
from cmdbench.registry import GENERATORS

NAME = "animatediff-v152"
WEIGHTS = "runwayml/stable-diffusion-v1-5 + guoyww/animatediff-motion-adapter-v1-5-2"
TEXT_LENGTH = 77
WEIGHT_SEED = 0

# SD 1.5 unet/config.json (HDRJ-One/runwayml-stable-diffusion-v1-5 @ 2e7465d).
SD15_UNET_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "use_linear_projection": False,
}
# guoyww/animatediff-motion-adapter-v1-5-2 config.json (keys the current MotionAdapter takes).
ADAPTER_CONFIG: dict[str, Any] = {
    "block_out_channels": [320, 640, 1280, 1280],
    "motion_layers_per_block": 2,
    "motion_max_seq_length": 32,
    "motion_mid_block_layers_per_block": 1,
    "motion_norm_num_groups": 32,
    "motion_num_attention_heads": 8,
    "use_motion_mid_block": True,
}
TEXT_CONFIG = CLIP_L_TEXT_CONFIG  # CLIP ViT-L/14 text tower (SD 1.5's)
SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "linear",
    "steps_offset": 1,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "prediction_type": "epsilon",
}
TINY_UNET_CONFIG: dict[str, Any] = {
    **SD15_UNET_CONFIG,
    "attention_head_dim": 2,
    "block_out_channels": [16, 32],
    "cross_attention_dim": 16,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 4,
}
TINY_ADAPTER_CONFIG: dict[str, Any] = {
    **ADAPTER_CONFIG,
    "block_out_channels": [16, 32],
    "motion_layers_per_block": 1,
    "motion_norm_num_groups": 8,
    "motion_num_attention_heads": 2,
}
TINY_TEXT_CONFIG = TINY_CLIP_L_TEXT_CONFIG

DEFAULTS = SamplingDefaults(num_frames=16, height=512, width=512, steps=50, guidance_scale=7.5)
TINY_DEFAULTS = SamplingDefaults(num_frames=4, height=32, width=32, steps=2, guidance_scale=7.5)
EVAL_PROMPTS = (
    "a panda playing guitar in a bamboo forest",
    "waves crashing on a rocky beach at sunset",
    "a person riding a bicycle on a mountain road",
    "fireworks over a city skyline at night",
)
LAYOUT = ("vae/, text_encoder/, and unet/ (UNetMotionModel) or unet/ (SD 1.5 UNet2DConditionModel) + "
          "motion_adapter/")


class AnimateDiffV152(TextToVideoLatentGenerator):
    """SD 1.5 + motion modules; text states are repeated per frame (the UNet sees frames as images)."""

    def check_frames(self, num_frames: int) -> None:
        limit = self.denoiser.config.motion_max_seq_length
        if num_frames > limit:
            raise UnsupportedSettingError(
                f"{self.name}: num_frames={num_frames}; allowed 1..{limit} (motion_max_seq_length of the "
                "motion modules' position encoding)"
            )

    def predict_noise(self, latents, t, text_states, text_mask):
        frames = latents.shape[2]
        states = text_states.repeat_interleave(frames, dim=0)  # (N T, L, D): one copy per frame
        return self.denoiser(latents, t, encoder_hidden_states=states).sample  # (N, 4, T, h, w)

    def denoiser_inputs(self, batch: int, num_frames: int, h: int, w: int) -> dict[str, Any]:
        p = next(self.denoiser.parameters())
        width = self.denoiser.config.cross_attention_dim
        return {
            "sample": torch.zeros(batch, 4, num_frames, h, w, device=p.device, dtype=p.dtype),
            "timestep": torch.tensor(999, device=p.device),
            "encoder_hidden_states": torch.zeros(batch * num_frames, TEXT_LENGTH, width, device=p.device,
                                                 dtype=p.dtype),
        }


def build_random(tiny: bool, device: str) -> tuple[UNetMotionModel, AutoencoderKL, torch.nn.Module]:
    """``UNetMotionModel.from_unet2d`` on the published configs (or miniatures), random weights."""
    from transformers import CLIPTextConfig, CLIPTextModel

    with seeded_init(device, WEIGHT_SEED):
        unet2d = UNet2DConditionModel(**init_kwargs(UNet2DConditionModel, TINY_UNET_CONFIG if tiny else SD15_UNET_CONFIG))
        adapter = MotionAdapter(**(TINY_ADAPTER_CONFIG if tiny else ADAPTER_CONFIG))
        # load_weights=False: only the architecture (copying weights is impossible on meta)
        unet = UNetMotionModel.from_unet2d(unet2d, adapter, load_weights=device != "meta")
        vae = AutoencoderKL(**(TINY_VAE_CONFIG if tiny else SD_VAE_CONFIG))
        text = CLIPTextModel(CLIPTextConfig(**(TINY_TEXT_CONFIG if tiny else TEXT_CONFIG)))
    return unet, vae, text


def load_unet(ckpt: str) -> UNetMotionModel:
    """``unet/`` as a saved UNetMotionModel, or SD 1.5 ``unet/`` + ``motion_adapter/`` joined by from_unet2d."""
    config = Path(ckpt).expanduser() / "unet" / "config.json"
    if config.is_file() and json.loads(config.read_text()).get("_class_name") == "UNetMotionModel":
        return load_component(NAME, UNetMotionModel, ckpt, "unet")
    require_subfolders(NAME, ckpt, ["unet", "motion_adapter"], LAYOUT)
    unet2d = load_component(NAME, UNet2DConditionModel, ckpt, "unet")
    adapter = load_component(NAME, MotionAdapter, ckpt, "motion_adapter")
    return UNetMotionModel.from_unet2d(unet2d, adapter)


def build(spec: GeneratorSpec) -> AnimateDiffV152:
    """Random weights (``checkpoint=None``; miniature when ``tiny``) or a real checkpoint directory."""
    dtype = spec.torch_dtype
    tokenizer = None
    tokenize = clip_bpe_tokenizer(TEXT_LENGTH, pad_id=49407)  # SD 1.5's CLIPTokenizer pads with </s>
    if spec.checkpoint is None:
        unet, vae, text = build_random(spec.tiny, spec.device)
    else:
        from transformers import CLIPTextModel, CLIPTokenizer

        ckpt = spec.checkpoint
        require_subfolders(NAME, ckpt, ["unet", "vae", "text_encoder"], LAYOUT)
        unet = load_unet(ckpt)
        vae = load_component(NAME, AutoencoderKL, ckpt, "vae")
        text = load_component(NAME, CLIPTextModel, ckpt, "text_encoder")
        if (Path(ckpt).expanduser() / "tokenizer").is_dir():
            tokenizer = load_component(NAME, CLIPTokenizer, ckpt, "tokenizer")
            tokenize = hf_tokenizer(tokenizer, TEXT_LENGTH)
    return AnimateDiffV152(
        name=NAME,
        denoiser=place(unet, spec.device, dtype),
        vae=place(vae, spec.device, dtype),
        text_encoder=place(text, spec.device, dtype),
        tokenize=tokenize,
        tokenizer=tokenizer,
        text_length=TEXT_LENGTH,
        scheduler_config=SCHEDULER_CONFIG,
        defaults=TINY_DEFAULTS if spec.tiny else DEFAULTS,
        spatial_multiple=8 * 2 ** (len(unet.config.block_out_channels) - 1),
        eval_prompts=EVAL_PROMPTS,
        device=spec.device,
        dtype=dtype,
    )


GENERATORS.register(
    NAME,
    build,
    description="AnimateDiff: SD 1.5 + motion adapter v1-5-2 (diffusers UNetMotionModel), DDIM, cfg 7.5",
)
