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

Captions as ``LattePipeline`` (diffusers 0.42.1, ``encode_prompt`` with ``mask_feature=True``) treats a
single prompt: lower-cased and stripped (``_text_preprocessing`` without ``clean_caption``, which needs
bs4 and ftfy), T5 states of the prompt's own tokens (the pipeline crops them to the attention mask's
length), and for guidance the empty prompt's T5 states cropped to **the prompt's** token count. Here
every prompt keeps all 120 positions and the cross-attention masks the positions past its token count
(an additive -10000 bias, which is exact zero weight in float32), for the conditional and the
unconditional branch alike: the same numbers as the pipeline at batch 1, for every sample of any batch
(the pipeline at batch > 1 instead zeroes padding states and keeps all 120, so its samples depend on
their batch).

T5-XXL is loaded with ``from_pretrained(dtype=...)`` in the compute dtype, so transformers keeps its
``_keep_in_fp32_modules`` (``wo``) in float32 in float16, as the pipeline's own loading does; random
weights get the same split (:func:`baselines._common.loading.place`).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL, LatteTransformer3DModel

from baselines._common.builder import Networks, Part, Recipe, load_diffusers_checkpoint, register
from baselines._common.text_video import (
    SD_VAE_CONFIG,
    TINY_VAE_CONFIG,
    VAE_SCALE,
    TextToVideoLatentGenerator,
    clip_bpe_tokenizer,
    hf_tokenizer,
    seeded_init,
)
from cmdbench.interfaces import GeneratorSpec, SamplingDefaults, UnsupportedSettingError

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
        """Lower-cased, stripped prompts -> T5 states ``(B, 120, 4096)`` and their ``(B, 120)`` token mask."""
        prompts = [p.lower().strip() for p in prompts]  # LattePipeline._text_preprocessing
        tokens = {k: v.to(self.device) for k, v in self.tokenize(prompts).items()}
        states = self.text_encoder(input_ids=tokens["input_ids"],
                                   attention_mask=tokens["attention_mask"]).last_hidden_state  # (B, L, 4096)
        return states.to(self.dtype), tokens["attention_mask"]

    def encode_unconditional(self, states, mask):
        """The empty prompt's T5 states, seen through each prompt's mask: the first ``n_i`` positions of
        "" for a prompt of ``n_i`` tokens, as ``LattePipeline.encode_prompt`` crops them."""
        null_states, _ = self.encode_text([""] * states.shape[0])  # (B, 120, 4096)
        return null_states, mask

    def predict_noise(self, latents, t, text_states, text_mask):
        n, _, frames = latents.shape[:3]
        bias = (1.0 - text_mask.to(latents.dtype)) * MASKED  # (N, L): 0 keep, -10000 padding
        bias = bias[:, None, :].repeat_interleave(frames, dim=0)  # (N T, 1, L): per frame, like the states
        out = self.denoiser(latents, timestep=t.expand(n), encoder_hidden_states=text_states,
                            encoder_attention_mask=bias).sample  # (N, 8, T, h, w)
        return out[:, : latents.shape[1]]  # the noise half; the other half is the learned variance

    def denoiser_inputs(self, batch: int, num_frames: int, h: int, w: int) -> dict[str, Any]:
        z, t, states = self.cost_tensors(batch, num_frames, h, w, self.denoiser.config.caption_channels)
        return {"hidden_states": z, "timestep": t.expand(batch), "encoder_hidden_states": states}

    def components(self) -> dict[str, Any]:
        return {"transformer": self.denoiser, "vae": self.vae, "text_encoder": self.text_encoder}


def random_networks(tiny: bool) -> Networks:
    """The published architecture (or its miniature); random weights. T5 is built on first use."""
    from transformers import T5Config, T5EncoderModel

    t5_config = TINY_T5_CONFIG if tiny else T5_CONFIG
    device = torch.get_default_device()  # the builder's device: random_networks runs under seeded_init

    def make_text_encoder() -> torch.nn.Module:
        with seeded_init(str(device), WEIGHT_SEED + 1):
            return T5EncoderModel(T5Config(**t5_config))

    # No T5 tokenizer offline: the CLIP BPE ids (folded into T5's vocabulary) drive random weights.
    bpe = clip_bpe_tokenizer(TEXT_LENGTH)

    def tokenize(prompts):
        ids = bpe(prompts)["input_ids"]  # (B, 120), 0 = padding
        return {"input_ids": ids % t5_config["vocab_size"], "attention_mask": (ids != 0).long()}

    return Networks(
        denoiser=LatteTransformer3DModel(**(TINY_TRANSFORMER_CONFIG if tiny else TRANSFORMER_CONFIG)),
        vae=AutoencoderKL(**(TINY_VAE_CONFIG if tiny else SD_VAE_CONFIG)),
        text_encoder=make_text_encoder,
        tokenize=tokenize,
    )


def load_networks(spec: GeneratorSpec) -> Networks:
    """A diffusers-layout directory or hub id (maxin-cn/Latte-1); T5 in the compute dtype (see above)."""
    from transformers import AutoTokenizer, T5EncoderModel

    return load_diffusers_checkpoint(
        NAME, spec.checkpoint, spec.torch_dtype, denoiser=Part("transformer", LatteTransformer3DModel),
        text_encoder=Part("text_encoder", T5EncoderModel), tokenizer=Part("tokenizer", AutoTokenizer),
        tokenize=lambda tok: hf_tokenizer(tok, TEXT_LENGTH, with_mask=True), layout=LAYOUT,
    )


RECIPE = Recipe(
    name=NAME, generator=Latte1, text_length=TEXT_LENGTH, scheduler_config=SCHEDULER_CONFIG,
    defaults=DEFAULTS, tiny_defaults=TINY_DEFAULTS, eval_prompts=EVAL_PROMPTS,
    random_networks=random_networks, load_networks=load_networks,
    spatial_multiple=lambda denoiser: VAE_SCALE * denoiser.config.patch_size,
    weight_seed=WEIGHT_SEED,
)


build = register(
    RECIPE,
    description="Latte-1 (diffusers LatteTransformer3DModel, T5-XXL text built on demand, SD VAE), DDIM, cfg 7.5",
)
