"""modelscope-t2v: ModelScope text-to-video ("text-to-video-ms-1.7b", Wang et al., arXiv:2308.06571).

Architecture (published configs, ``shared/reference/baselines.md`` §2.1), all from diffusers/transformers:

- denoiser: ``UNet3DConditionModel`` (SD-2.x trunk 320/640/1280/1280, temporal convolutions after every
  ResNet, temporal transformers after every spatial transformer and after ``conv_in``), 1411.23M params;
- text encoder: the 23-layer, 1024-wide ``CLIPTextModel`` (OpenCLIP ViT-H/14 text tower minus its last
  layer), last hidden state, 77 tokens, 340.39M params;
- VAE: SD ``AutoencoderKL`` (f = 8, 4 channels), per frame, 83.65M params;
- sampler: ``DDIMScheduler`` with the published config, eta = 0; guidance 9.0, 50 steps, 16 frames,
  256x256 (the diffusers pipeline's defaults; CMD's efficiency setting is 512x1024x16).

The sampling loop is :class:`baselines._common.text_video.TextToVideoLatentGenerator`, the same maths as
the deprecated ``TextToVideoSDPipeline`` (CFG with the empty prompt as the unconditional input); height and
width may be any multiple of 8, as the pipeline allows. Real checkpoints: a diffusers folder or hub id,
loaded in the compute dtype, in float16 from its ``fp16`` variant files (``variant="fp16"``, as the model
card loads it) where it has them.
"""

from __future__ import annotations

from typing import Any

from diffusers import AutoencoderKL, UNet3DConditionModel

from baselines._common.builder import Networks, Part, Recipe, load_diffusers_checkpoint, register
from baselines._common.text_video import (
    SD_VAE_CONFIG,
    T2V_EVAL_PROMPTS,
    TINY_VAE_CONFIG,
    VAE_SCALE,
    TextToVideoLatentGenerator,
    clip_bpe_tokenizer,
    hf_tokenizer,
    init_kwargs,
)
from cmdbench.interfaces import GeneratorSpec, SamplingDefaults

NAME = "modelscope-t2v"
HUB_ID = "ali-vilab/text-to-video-ms-1.7b"  # formerly damo-vilab/text-to-video-ms-1.7b
TEXT_LENGTH = 77
WEIGHT_SEED = 0

# unet/config.json (theonlyengine/text-to-video-ms-1.7b @ 6027d84; = UNet3DConditionModel() defaults).
UNET_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "attention_head_dim": 64,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "class_embed_type": None,
    "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock3DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": None,
    "resnet_time_scale_shift": "default",
    "sample_size": 32,
    "time_cond_proj_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"],
    "upcast_attention": False,
    "use_linear_projection": True,
}
# text_encoder/config.json (theonlyengine/text-to-video-ms-1.7b @ 0951da4).
TEXT_CONFIG: dict[str, Any] = {
    "hidden_act": "gelu",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "max_position_embeddings": 77,
    "num_attention_heads": 16,
    "num_hidden_layers": 23,
    "projection_dim": 512,
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
# scheduler/scheduler_config.json (HF vdo/text-to-video-ms-1.7b @ a20bbd8).
SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "clip_sample_range": 1.0,
    "dynamic_thresholding_ratio": 0.995,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "thresholding": False,
    "trained_betas": None,
}

# Miniature of the same classes for CPU tests (two UNet levels: one downsampling).
TINY_UNET_CONFIG: dict[str, Any] = {
    **UNET_CONFIG,
    "attention_head_dim": 8,
    "block_out_channels": [16, 32],
    "cross_attention_dim": 16,
    "down_block_types": ["CrossAttnDownBlock3D", "DownBlock3D"],
    "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D"],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 4,
}
TINY_TEXT_CONFIG: dict[str, Any] = {
    **TEXT_CONFIG,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_attention_heads": 2,
    "num_hidden_layers": 2,
    "projection_dim": 16,
}

DEFAULTS = SamplingDefaults(num_frames=16, height=256, width=256, steps=50, guidance_scale=9.0)
TINY_DEFAULTS = SamplingDefaults(num_frames=4, height=32, width=32, steps=2, guidance_scale=9.0)
EVAL_PROMPTS = T2V_EVAL_PROMPTS
LAYOUT = "diffusers layout of ali-vilab/text-to-video-ms-1.7b: unet/, vae/, text_encoder/, tokenizer/, scheduler/"


class ModelScopeT2V(TextToVideoLatentGenerator):
    """ModelScope T2V: ``UNet3DConditionModel`` over ``(B, 4, T, H/8, W/8)`` latents, CLIP-H text states."""

    def predict_noise(self, latents, t, text_states, text_mask):
        return self.denoiser(latents, t, encoder_hidden_states=text_states).sample  # (N, 4, T, h, w)

    def denoiser_inputs(self, batch: int, num_frames: int, h: int, w: int) -> dict[str, Any]:
        z, t, states = self.cost_tensors(batch, num_frames, h, w, self.denoiser.config.cross_attention_dim)
        return {"sample": z, "timestep": t, "encoder_hidden_states": states}


def random_networks(tiny: bool) -> Networks:
    """The published architecture (or its miniature); random weights (drawn under the builder's seed)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return Networks(
        denoiser=UNet3DConditionModel(**init_kwargs(UNet3DConditionModel, TINY_UNET_CONFIG if tiny else UNET_CONFIG)),
        vae=AutoencoderKL(**(TINY_VAE_CONFIG if tiny else SD_VAE_CONFIG)),
        text_encoder=CLIPTextModel(CLIPTextConfig(**(TINY_TEXT_CONFIG if tiny else TEXT_CONFIG))),
        tokenize=clip_bpe_tokenizer(TEXT_LENGTH),
    )


def load_networks(spec: GeneratorSpec) -> Networks:
    """A diffusers-layout directory or hub id (ali-vilab/text-to-video-ms-1.7b); in float16 its ``fp16``
    variant files, as the model card loads them (``variant="fp16"``)."""
    from transformers import CLIPTextModel, CLIPTokenizer

    return load_diffusers_checkpoint(
        NAME, spec.checkpoint, spec.torch_dtype, denoiser=Part("unet", UNet3DConditionModel),
        text_encoder=Part("text_encoder", CLIPTextModel), tokenizer=Part("tokenizer", CLIPTokenizer),
        tokenize=lambda tok: hf_tokenizer(tok, TEXT_LENGTH), layout=LAYOUT,
        fallback_tokenize=clip_bpe_tokenizer(TEXT_LENGTH), required=["scheduler"],
    )


RECIPE = Recipe(
    name=NAME, generator=ModelScopeT2V, text_length=TEXT_LENGTH, scheduler_config=SCHEDULER_CONFIG,
    defaults=DEFAULTS, tiny_defaults=TINY_DEFAULTS, eval_prompts=EVAL_PROMPTS,
    random_networks=random_networks, load_networks=load_networks,
    # the UNet resizes odd-sized skip connections (forward_upsample_size), so any multiple of the VAE's 8
    # works, as in TextToVideoSDPipeline.check_inputs
    spatial_multiple=lambda denoiser: VAE_SCALE,
    weight_seed=WEIGHT_SEED,
)


build = register(
    RECIPE,
    description="ModelScope text-to-video 1.7B (diffusers UNet3DConditionModel + SD VAE + CLIP-H text, "
    "DDIM, cfg 9.0)",
)
