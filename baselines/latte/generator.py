"""latte-1: Latte-1 (Ma et al., "Latte: Latent Diffusion Transformer for Video Generation", arXiv:2401.03048).

Architecture (published configs, ``shared/reference/baselines.md`` §6.5), from diffusers/transformers:

- denoiser: ``LatteTransformer3DModel`` (28 spatial + 28 temporal DiT blocks, width 1152, patch 2,
  PixArt-alpha ``ada_norm_single``, cross-attention to the caption), 1057.25M params; it predicts noise
  and a variance (8 channels), of which the sampler uses the noise half, as ``LattePipeline`` does;
- text encoder: T5 v1.1 XXL encoder (4096 wide, 24 layers, 4.76B params), 120 tokens. It is built only
  when first needed (prompt encoding or its cost description), so cost counting of the denoiser never
  allocates it;
- VAE: SD ``AutoencoderKL`` per frame;
- sampler: DDIM with Latte's schedule (linear betas 0.0001-0.02; ``configs/t2x/t2v_sample.yaml``),
  eta 0; 16 frames (fixed by the learned temporal position table), 50 steps, guidance 7.5, 512x512.

Caption masking: ``LattePipeline`` crops the batch's T5 states to the longest prompt in the batch
(``mask_feature``), which makes a sample depend on its batch. Here every prompt keeps all 120 tokens and
its padding is masked out of the cross-attention (an additive -10000 bias), i.e. each prompt is cropped to
its own length; batch-size invariant.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL, LatteTransformer3DModel

from baselines._common.loading import load_component, require_subfolders
from baselines._common.text_video import (
    SD_VAE_CONFIG,
    TINY_VAE_CONFIG,
    TextToVideoLatentGenerator,
    clip_bpe_tokenizer,
    hf_tokenizer,
    place,
    seeded_init,
)
from cmdbench.interfaces import GeneratorSpec, SamplingDefaults, UnsupportedSettingError
from cmdbench.registry import GENERATORS

NAME = "latte-1"
HUB_ID = "maxin-cn/Latte-1"
TEXT_LENGTH = 120  # LattePipeline max_sequence_length
WEIGHT_SEED = 0
MASKED = -10000.0  # additive cross-attention bias of padding tokens

# transformer/config.json (HF maxin-cn/Latte-1, diffusers 0.30.0); video_length = the __init__ default.
TRANSFORMER_CONFIG: dict[str, Any] = {
    "activation_fn": "gelu-approximate",
    "attention_bias": True,
    "attention_head_dim": 72,
    "caption_channels": 4096,
    "cross_attention_dim": 1152,
    "dropout": 0.0,
    "in_channels": 4,
    "norm_elementwise_affine": False,
    "norm_eps": 1e-06,
    "norm_type": "ada_norm_single",
    "num_attention_heads": 16,
    "num_embeds_ada_norm": 1000,
    "num_layers": 28,
    "out_channels": 8,
    "patch_size": 2,
    "sample_size": 64,
    "video_length": 16,
}
# google/t5-v1_1-xxl encoder (the text encoder of maxin-cn/Latte-1).
T5_CONFIG: dict[str, Any] = {
    "vocab_size": 32128,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "dropout_rate": 0.1,
    "layer_norm_epsilon": 1e-06,
    "feed_forward_proj": "gated-gelu",
    "is_encoder_decoder": True,
    "tie_word_embeddings": False,
}
SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "clip_sample": False,
    "prediction_type": "epsilon",
}
TINY_TRANSFORMER_CONFIG: dict[str, Any] = {
    **TRANSFORMER_CONFIG,
    "attention_head_dim": 8,
    "caption_channels": 16,
    "cross_attention_dim": 16,
    "num_attention_heads": 2,
    "num_layers": 1,
    "sample_size": 4,
    "video_length": 4,
}
TINY_T5_CONFIG: dict[str, Any] = {
    **T5_CONFIG,
    "vocab_size": 49408,  # the CLIP BPE ids of the random-weight tokenizer fit without folding
    "d_model": 16,
    "d_kv": 8,
    "d_ff": 32,
    "num_layers": 1,
    "num_heads": 2,
}

DEFAULTS = SamplingDefaults(num_frames=16, height=512, width=512, steps=50, guidance_scale=7.5)
TINY_DEFAULTS = SamplingDefaults(num_frames=4, height=32, width=32, steps=2, guidance_scale=7.5)
EVAL_PROMPTS = (
    "Yellow and black tropical fish dart through the sea.",
    "An epic tornado attacking above a glowing city at night.",
    "Slow pan upward of blazing oak fire in an indoor fireplace.",
    "Sunset over the sea.",
)
LAYOUT = "diffusers layout of maxin-cn/Latte-1: transformer/, vae/, text_encoder/, tokenizer/"


class Latte1(TextToVideoLatentGenerator):
    """Latte-1: a spatial/temporal DiT over ``(B, 4, T, H/8, W/8)`` latents, T5 caption states."""

    def check_frames(self, num_frames: int) -> None:
        length = self.denoiser.config.video_length
        if num_frames != length:
            raise UnsupportedSettingError(
                f"{self.name}: num_frames={num_frames}; allowed {length} (the learned temporal position "
                "table has that many entries)"
            )

    def encode_text(self, prompts):
        tokens = {k: v.to(self.device) for k, v in self.tokenize(prompts).items()}
        states = self.text_encoder(input_ids=tokens["input_ids"],
                                   attention_mask=tokens["attention_mask"]).last_hidden_state  # (B, L, 4096)
        return states.to(self.dtype), tokens["attention_mask"]

    def predict_noise(self, latents, t, text_states, text_mask):
        n, _, frames = latents.shape[:3]
        bias = (1.0 - text_mask.to(latents.dtype)) * MASKED  # (N, L): 0 keep, -10000 padding
        bias = bias[:, None, :].repeat_interleave(frames, dim=0)  # (N T, 1, L): per frame, like the states
        out = self.denoiser(latents, timestep=t.expand(n), encoder_hidden_states=text_states,
                            encoder_attention_mask=bias).sample  # (N, 8, T, h, w)
        return out[:, : latents.shape[1]]  # the noise half; the other half is the learned variance

    def denoiser_inputs(self, batch: int, num_frames: int, h: int, w: int) -> dict[str, Any]:
        p = next(self.denoiser.parameters())
        width = self.denoiser.config.caption_channels
        return {
            "hidden_states": torch.zeros(batch, 4, num_frames, h, w, device=p.device, dtype=p.dtype),
            "timestep": torch.full((batch,), 999, device=p.device),
            "encoder_hidden_states": torch.zeros(batch, TEXT_LENGTH, width, device=p.device, dtype=p.dtype),
        }

    def components(self) -> dict[str, Any]:
        return {"transformer": self.denoiser, "vae": self.vae, "text_encoder": self.text_encoder}


def build(spec: GeneratorSpec) -> Latte1:
    """Random weights (``checkpoint=None``; miniature when ``tiny``) or a real checkpoint (dir or hub id)."""
    from transformers import T5Config, T5EncoderModel

    dtype = spec.torch_dtype
    tokenizer = None
    if spec.checkpoint is None:
        t5_config = TINY_T5_CONFIG if spec.tiny else T5_CONFIG
        with seeded_init(spec.device, WEIGHT_SEED):
            transformer = LatteTransformer3DModel(**(TINY_TRANSFORMER_CONFIG if spec.tiny else TRANSFORMER_CONFIG))
            vae = AutoencoderKL(**(TINY_VAE_CONFIG if spec.tiny else SD_VAE_CONFIG))

        def make_text_encoder() -> torch.nn.Module:
            with seeded_init(spec.device, WEIGHT_SEED + 1):
                return place(T5EncoderModel(T5Config(**t5_config)), spec.device, dtype)

        text: Any = make_text_encoder
        # No T5 tokenizer offline: the CLIP BPE ids (folded into T5's vocabulary) drive random weights.
        bpe = clip_bpe_tokenizer(TEXT_LENGTH)

        def tokenize(prompts):
            ids = bpe(prompts)["input_ids"]  # (B, 120), 0 = padding
            return {"input_ids": ids % t5_config["vocab_size"], "attention_mask": (ids != 0).long()}
    else:
        from transformers import AutoTokenizer

        ckpt = spec.checkpoint
        require_subfolders(NAME, ckpt, ["transformer", "vae", "text_encoder", "tokenizer"], LAYOUT)
        transformer = load_component(NAME, LatteTransformer3DModel, ckpt, "transformer")
        vae = load_component(NAME, AutoencoderKL, ckpt, "vae")
        text = place(load_component(NAME, T5EncoderModel, ckpt, "text_encoder"), spec.device, dtype)
        tokenizer = load_component(NAME, AutoTokenizer, ckpt, "tokenizer")
        tokenize = hf_tokenizer(tokenizer, TEXT_LENGTH, with_mask=True)
    return Latte1(
        name=NAME,
        denoiser=place(transformer, spec.device, dtype),
        vae=place(vae, spec.device, dtype),
        text_encoder=text,
        tokenize=tokenize,
        tokenizer=tokenizer,
        text_length=TEXT_LENGTH,
        scheduler_config=SCHEDULER_CONFIG,
        defaults=TINY_DEFAULTS if spec.tiny else DEFAULTS,
        spatial_multiple=8 * transformer.config.patch_size,
        eval_prompts=EVAL_PROMPTS,
        device=spec.device,
        dtype=dtype,
    )



GENERATORS.register(
    NAME,
    build,
    description="Latte-1 (diffusers LatteTransformer3DModel, T5-XXL text built on demand, SD VAE), DDIM, cfg 7.5",
)
