"""animatediff-v152: AnimateDiff (Guo et al., arXiv:2307.04725) = Stable Diffusion 1.5 + motion adapter v1-5-2.

Architecture (published configs, ``shared/reference/baselines.md`` §5.1 and §6.2), from diffusers:

- denoiser: ``UNetMotionModel.from_unet2d(UNet2DConditionModel(SD 1.5 config), MotionAdapter(v1-5-2
  config))``: the SD 1.5 UNet applied per frame with motion modules (temporal transformers with two
  temporal self-attention layers and sinusoidal positions up to 32 frames) in every down, mid and up
  block; 1312.73M params;
- text encoder: CLIP ViT-L/14 text model, last hidden state, 77 tokens (123.06M);
- VAE: SD ``AutoencoderKL`` per frame (83.65M);
- sampler: DDIM with AnimateDiff's schedule (``configs/inference/inference-v2.yaml``: linear betas
  0.00085-0.012, ``steps_offset=1``, ``clip_sample=False``), eta 0; defaults of the AnimateDiff
  repository's prompt configs for ``mm_sd_v15_v2.ckpt``: **25 steps, guidance 7.5**, 16 frames of
  512x512 (``configs/prompts/2_motionlora/2_motionlora_RealisticVision.yaml``, ``scripts/animate.py``).

Real checkpoints (``GeneratorSpec.checkpoint``):

- ``"<base>"``: an SD 1.5 diffusers folder or hub id (``unet/``, ``vae/``, ``text_encoder/``,
  ``tokenizer/``) with the motion adapter from the hub id ``guoyww/animatediff-motion-adapter-v1-5-2``;
  a folder that also has ``motion_adapter/`` uses that one; a folder written by :meth:`save_pretrained`
  (``unet/`` holding a ``UNetMotionModel``) is loaded as it is;
- ``"<base>::<adapter>"``: the motion adapter given separately, as a ``MotionAdapter`` folder or hub id,
  or as the original AnimateDiff file ``mm_sd_v15_v2.ckpt`` (``.ckpt``/``.pth``/``.pt``/``.safetensors``),
  whose keys are converted with diffusers' own ``convert_animatediff_checkpoint_to_diffusers``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel, UNetMotionModel

from baselines._common.builder import Networks, Part, Recipe, load_diffusers_checkpoint, register
from baselines._common.loading import MissingWeightsError, load_component, require_subfolders
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
    init_kwargs,
)
from cmdbench.interfaces import GeneratorSpec, SamplingDefaults, UnsupportedSettingError

NAME = "animatediff-v152"
WEIGHTS = "runwayml/stable-diffusion-v1-5 + guoyww/animatediff-motion-adapter-v1-5-2"
DEFAULT_ADAPTER = "guoyww/animatediff-motion-adapter-v1-5-2"
ORIGINAL_SUFFIXES = (".ckpt", ".pth", ".pt", ".safetensors")
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
# configs/inference/inference-v2.yaml noise_scheduler_kwargs (guoyww/AnimateDiff @ e92bd56).
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

# guoyww/AnimateDiff @ e92bd56: every mm_sd_v15_v2.ckpt entry of configs/prompts/2_motionlora/*.yaml has
# steps 25, guidance_scale 7.5 (the 1_animate configs use 25 and 7.5-8); scripts/animate.py: L=16, W=H=512.
DEFAULTS = SamplingDefaults(num_frames=16, height=512, width=512, steps=25, guidance_scale=7.5)
TINY_DEFAULTS = SamplingDefaults(num_frames=4, height=32, width=32, steps=2, guidance_scale=7.5)
EVAL_PROMPTS = T2V_EVAL_PROMPTS
LAYOUT = ("'<SD 1.5 folder or hub id>[::<MotionAdapter folder, hub id or mm_sd_v15_v2.ckpt>]' (default "
          f"adapter {DEFAULT_ADAPTER}), a folder with unet/ + motion_adapter/, or one written by save_pretrained")


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
        z, t, states = self.cost_tensors(batch, num_frames, h, w, self.denoiser.config.cross_attention_dim,
                                         text_batch=batch * num_frames)  # states repeated per frame
        return {"sample": z, "timestep": t, "encoder_hidden_states": states}


def random_networks(tiny: bool) -> Networks:
    """``UNetMotionModel.from_unet2d`` on the published configs (or miniatures); random weights."""
    from transformers import CLIPTextConfig, CLIPTextModel

    unet2d = UNet2DConditionModel(**init_kwargs(UNet2DConditionModel, TINY_UNET_CONFIG if tiny else SD15_UNET_CONFIG))
    adapter = MotionAdapter(**(TINY_ADAPTER_CONFIG if tiny else ADAPTER_CONFIG))
    # load_weights=False on meta: only the architecture (copying weights is impossible there)
    unet = UNetMotionModel.from_unet2d(unet2d, adapter, load_weights=unet2d.device.type != "meta")
    return Networks(
        denoiser=unet,
        vae=AutoencoderKL(**(TINY_VAE_CONFIG if tiny else SD_VAE_CONFIG)),
        text_encoder=CLIPTextModel(CLIPTextConfig(**(TINY_TEXT_CONFIG if tiny else TEXT_CONFIG))),
        tokenize=clip_bpe_tokenizer(TEXT_LENGTH, pad_id=END_TOKEN),  # SD 1.5's CLIPTokenizer pads with </s>
    )


def motion_adapter_from_original(path: Path, tiny: bool = False) -> MotionAdapter:
    """AnimateDiff's own motion-module file (``mm_sd_v15_v2.ckpt``) -> a diffusers ``MotionAdapter``.

    Keys are converted by diffusers' ``convert_animatediff_checkpoint_to_diffusers`` (what
    ``MotionAdapter.from_single_file`` uses). The sinusoidal position tables (``pos_encoder.pe``) are
    not weights: their length sets ``motion_max_seq_length`` and they must equal the table the adapter
    computes. Every other key must match the adapter exactly. ``tiny``: the miniature configuration.
    """
    from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    tables = {k: v for k, v in state.items() if k.endswith("pos_encoder.pe")}
    config = dict(TINY_ADAPTER_CONFIG if tiny else ADAPTER_CONFIG)
    config["use_motion_mid_block"] = any(k.startswith("mid_block.") for k in state)
    if tables:
        config["motion_max_seq_length"] = next(iter(tables.values())).shape[1]  # (1, max_len, C)
    adapter = MotionAdapter(**config)
    result = adapter.load_state_dict(convert_animatediff_checkpoint_to_diffusers(state), strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("pos_embed.pe")]
    if missing or result.unexpected_keys:
        raise MissingWeightsError(
            f"{NAME}: {path} is not an AnimateDiff SD 1.5 motion module ({config}): missing {missing[:5]} "
            f"({len(missing)}), unexpected {result.unexpected_keys[:5]} ({len(result.unexpected_keys)})"
        )
    computed = adapter.state_dict()
    for key, table in tables.items():  # down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0...
        block = key.replace(".temporal_transformer", "").split(".attention_blocks.")[0]
        if not torch.allclose(table.float(), computed[f"{block}.pos_embed.pe"].float(), atol=1e-5):
            raise ValueError(f"{NAME}: {path}: {key} is not the sinusoidal table MotionAdapter computes")
    return adapter


def load_motion_adapter(source: str, dtype: torch.dtype, tiny: bool) -> MotionAdapter:
    """A ``MotionAdapter`` folder or hub id, or AnimateDiff's original motion-module file."""
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix not in ORIGINAL_SUFFIXES:
            raise MissingWeightsError(f"{NAME}: motion adapter file {path} is not one of {ORIGINAL_SUFFIXES}")
        return motion_adapter_from_original(path, tiny=tiny).to(dtype)
    return load_component(NAME, MotionAdapter, source, None, dtype=dtype)


def load_networks(spec: GeneratorSpec) -> Networks:
    """The networks of ``spec.checkpoint`` (layouts in the module docstring)."""
    from transformers import CLIPTextModel, CLIPTokenizer

    base, separate, adapter = str(spec.checkpoint).partition("::")
    dtype = spec.torch_dtype
    config = Path(base).expanduser() / "unet" / "config.json"
    saved_motion_unet = config.is_file() and json.loads(config.read_text()).get("_class_name") == "UNetMotionModel"
    if saved_motion_unet and not separate:
        denoiser: Any = Part("unet", UNetMotionModel)
    else:
        if not separate:
            local_adapter = Path(base).expanduser() / "motion_adapter"
            adapter = str(local_adapter) if local_adapter.is_dir() else DEFAULT_ADAPTER
        require_subfolders(NAME, base, ["unet"], LAYOUT)
        unet2d = load_component(NAME, UNet2DConditionModel, base, "unet", dtype=dtype)
        denoiser = UNetMotionModel.from_unet2d(unet2d, load_motion_adapter(adapter, dtype, spec.tiny))
    return load_diffusers_checkpoint(
        NAME, base, dtype, denoiser=denoiser, text_encoder=Part("text_encoder", CLIPTextModel),
        tokenizer=Part("tokenizer", CLIPTokenizer), tokenize=lambda tok: hf_tokenizer(tok, TEXT_LENGTH),
        layout=LAYOUT, fallback_tokenize=clip_bpe_tokenizer(TEXT_LENGTH, pad_id=END_TOKEN),
        scheduler=False,  # AnimateDiff's own schedule, not the SD 1.5 base's PNDM
    )


RECIPE = Recipe(
    name=NAME, generator=AnimateDiffV152, text_length=TEXT_LENGTH, scheduler_config=SCHEDULER_CONFIG,
    defaults=DEFAULTS, tiny_defaults=TINY_DEFAULTS, eval_prompts=EVAL_PROMPTS,
    random_networks=random_networks, load_networks=load_networks,
    # the UNet resizes odd-sized skip connections, so any multiple of the VAE's 8 works (as in the pipeline)
    spatial_multiple=lambda denoiser: VAE_SCALE,
    weight_seed=WEIGHT_SEED,
)


build = register(
    RECIPE,
    description="AnimateDiff: SD 1.5 + motion adapter v1-5-2 (diffusers UNetMotionModel), DDIM 25 steps, cfg 7.5",
)
