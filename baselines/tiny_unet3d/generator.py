"""tiny-unet3d: a random-weight miniature video diffusion model, the harness's reference generator.

It runs the whole path (conditioning -> per-sample noise -> DDIM denoising with classifier-free
guidance -> uint8 video) on a CPU in about a second, so the harness, CLI and contract tests work
before any real model exists. It is a *reference miniature*: ``GeneratorSpec(tiny=False,
checkpoint=None)`` builds the same small architecture (there is no larger published config), and a
checkpoint is a directory written by :meth:`TinyUNet3DGenerator.save_pretrained`.

Model (all diffusers / transformers building blocks, random init with a fixed seed):

- denoiser: ``diffusers.UNet3DConditionModel`` sampling directly in pixel space (3 channels),
  ``block_out_channels=(32, 64)``, one layer per block, cross-attention only at the lower resolution;
- text conditioning: a 2-layer ``transformers.CLIPTextModel`` (width 32) fed by ``clip.tokenize`` ids
  (the BPE vocabulary ships with clip-anytorch, so nothing is downloaded); the empty prompt is the
  unconditional input for guidance;
- class conditioning (``tiny-unet3d-class``): a learned label embedding with one extra "null" label;
- unconditional (``tiny-unet3d-uncond``): one learned token;
- sampler: ``diffusers.DDIMScheduler`` (eta = 0, deterministic given the initial noise).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import DDIMScheduler, UNet3DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from baselines._common.sampling import CheckedSampler
from baselines._common.text_video import seeded_init
from cmdbench.interfaces import (
    Conditioning,
    CostStage,
    GeneratorSpec,
    SamplingDefaults,
    StageHook,
    UnsupportedSettingError,
    stage,
)
from cmdbench.registry import GENERATORS
from cmdbench.seeding import randn_per_sample
from cmdbench.video import float_to_uint8

# --- Architecture (the one config; tiny and "full" are the same miniature) ---------------------------

EMBED_DIM = 32  # cross-attention width = text/label embedding width
TEXT_LENGTH = 77  # CLIP context length
WEIGHT_SEED = 0  # random weights are drawn from this seed, so every build is the same model

UNET_CONFIG: dict[str, Any] = {
    "sample_size": 16,
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownBlock3D", "CrossAttnDownBlock3D"),
    "up_block_types": ("CrossAttnUpBlock3D", "UpBlock3D"),
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "cross_attention_dim": EMBED_DIM,
    "attention_head_dim": 8,
}
SPATIAL_MULTIPLE = 2 ** (len(UNET_CONFIG["block_out_channels"]) - 1)  # one downsampling stage

TEXT_CONFIG: dict[str, Any] = {
    "vocab_size": 49408,  # CLIP BPE vocabulary
    "hidden_size": EMBED_DIM,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": TEXT_LENGTH,
    "projection_dim": EMBED_DIM,
}

SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "clip_sample": True,
    "clip_sample_range": 1.0,
    "set_alpha_to_one": False,
    "prediction_type": "epsilon",
}

NUM_CLASSES = 10
EVAL_PROMPTS = (
    "a person riding a bicycle",
    "waves crashing on a beach",
    "a dog running in the park",
    "fireworks over a city at night",
)
# Subfolders of a checkpoint directory written by save_pretrained.
UNET_DIR, SCHEDULER_DIR, TEXT_DIR, LABEL_DIR = "unet", "scheduler", "text_encoder", "condition_encoder"


class TokenEncoder(ModelMixin, ConfigMixin):
    """Learned condition tokens for class labels (``num_labels = classes + 1``, last = null) or none.

    forward: int64 ``(B,)`` label ids -> float ``(B, 1, dim)`` cross-attention states.
    """

    @register_to_config
    def __init__(self, num_labels: int = NUM_CLASSES + 1, dim: int = EMBED_DIM) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(num_labels, dim)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding(labels)[:, None, :]  # (B,) -> (B, 1, dim)


# --- The generator -------------------------------------------------------------------------------------


class TinyUNet3DGenerator(CheckedSampler):
    """Pixel-space video DDIM sampler around a tiny ``UNet3DConditionModel`` (see module docstring)."""

    def __init__(
        self,
        name: str,
        conditioning: Conditioning,
        unet: UNet3DConditionModel,
        scheduler: DDIMScheduler,
        condition_encoder: torch.nn.Module,
        *,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.name = name
        self.conditioning: Conditioning = conditioning
        self.num_classes = NUM_CLASSES if conditioning == "class" else None
        guidance = None if conditioning == "none" else 3.0
        self.defaults = SamplingDefaults(num_frames=8, height=16, width=16, steps=4, guidance_scale=guidance)
        self.eval_prompts = EVAL_PROMPTS if conditioning == "text" else None
        self.stage_hook: StageHook | None = None
        self.device = torch.device(device)
        self.dtype = dtype
        self.unet = unet.eval()
        self.scheduler_config = dict(scheduler.config)
        self.condition_encoder = condition_encoder.eval()

    # --- conditioning --------------------------------------------------------------------------------

    def _encode(self, prompts: Sequence[str] | None, labels: Sequence[int] | None, batch: int) -> torch.Tensor:
        """Conditions -> cross-attention states ``(B, L, EMBED_DIM)``; ``None`` means the null condition."""
        if self.conditioning == "text":
            import clip  # clip-anytorch: BPE tokenizer with its vocabulary in the wheel

            texts = list(prompts) if prompts is not None else [""] * batch
            ids = clip.tokenize(texts, context_length=TEXT_LENGTH, truncate=True).to(self.device)  # (B, 77)
            return self.condition_encoder(input_ids=ids).last_hidden_state  # (B, 77, D)
        if self.conditioning == "class":
            null = self.condition_encoder.config.num_labels - 1
            ids = list(labels) if labels is not None else [null] * batch
            return self.condition_encoder(torch.tensor(ids, dtype=torch.long, device=self.device))  # (B, 1, D)
        return self.condition_encoder(torch.zeros(batch, dtype=torch.long, device=self.device))  # (B, 1, D)

    # --- sampling ------------------------------------------------------------------------------------

    def _check_settings(self, num_frames: int, height: int, width: int, steps: int, guidance: float | None) -> None:
        train_steps = self.scheduler_config["num_train_timesteps"]
        for what, v in (("num_frames", num_frames), ("height", height), ("width", width), ("steps", steps)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise UnsupportedSettingError(f"{self.name}: {what}={v!r}; allowed: a positive integer")
        for what, v in (("height", height), ("width", width)):
            if v % SPATIAL_MULTIPLE:
                raise UnsupportedSettingError(
                    f"{self.name}: {what}={v} is not a multiple of {SPATIAL_MULTIPLE}; allowed multiples of "
                    f"{SPATIAL_MULTIPLE} (the UNet downsamples once)"
                )
        if steps > train_steps:
            raise UnsupportedSettingError(f"{self.name}: steps={steps}; allowed 1..{train_steps}")
        if self.conditioning == "none" and guidance not in (None, 1.0):
            raise UnsupportedSettingError(
                f"{self.name} is unconditional: guidance_scale={guidance!r}; allowed None (no guidance)"
            )
        if guidance is not None and guidance < 1.0:
            raise UnsupportedSettingError(f"{self.name}: guidance_scale={guidance}; allowed None or >= 1.0")

    def generate(self, *, prompts: Sequence[str] | None, labels: Sequence[int] | None, num_frames: int,
                 height: int, width: int, steps: int, generator: Sequence[torch.Generator],
                 guidance_scale: float | None) -> torch.Tensor:
        """:meth:`CheckedSampler.sample` after its checks: uint8 ``(B, T, 3, H, W)`` on the CPU."""
        batch = len(generator)
        self._check_settings(num_frames, height, width, steps, guidance_scale)
        use_cfg = guidance_scale is not None and guidance_scale != 1.0

        with stage(self.stage_hook, "text_encoder"):
            cond = self._encode(prompts, labels, batch).to(self.dtype)  # (B, L, D)
            if use_cfg:
                uncond = self._encode(None, None, batch).to(self.dtype)  # (B, L, D)
                states = torch.cat([uncond, cond])  # (2B, L, D)
            else:
                states = cond

        # A fresh scheduler per call: DDIMScheduler keeps per-run state (timesteps).
        scheduler = DDIMScheduler.from_config(self.scheduler_config)
        scheduler.set_timesteps(steps, device=self.device)
        # Per-sample initial noise, each from its own CPU generator: batch-size invariant.
        x = randn_per_sample(generator, (3, num_frames, height, width), device=self.device, dtype=self.dtype)
        x = x * scheduler.init_noise_sigma  # (B, 3, T, H, W)

        with stage(self.stage_hook, "denoiser"):
            for t in scheduler.timesteps:
                model_in = torch.cat([x, x]) if use_cfg else x  # (2B|B, 3, T, H, W)
                eps = self.unet(model_in, t, encoder_hidden_states=states).sample
                if use_cfg:
                    eps_uncond, eps_cond = eps.chunk(2)
                    eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)  # classifier-free guidance
                x = scheduler.step(eps.float(), t, x.float(), eta=0.0).prev_sample.to(self.dtype)

        video = x.float().clamp(-1.0, 1.0).permute(0, 2, 1, 3, 4)  # (B, T, 3, H, W) in [-1, 1]
        return float_to_uint8(video.cpu(), value_range=(-1.0, 1.0))

    # --- cost description ----------------------------------------------------------------------------

    def cost_stages(self, *, num_frames: int, height: int, width: int, steps: int) -> list[CostStage]:
        """The condition encoder (once per video) and the UNet (``steps`` calls, 2 passes with guidance)."""
        device = next(self.unet.parameters()).device
        dtype = next(self.unet.parameters()).dtype
        guided = self.defaults.guidance_scale is not None
        cond_len = TEXT_LENGTH if self.conditioning == "text" else 1

        def unet_inputs(batch: int) -> dict[str, Any]:
            return {
                "sample": torch.zeros(batch, 3, num_frames, height, width, device=device, dtype=dtype),
                "timestep": torch.tensor(999, device=device),
                "encoder_hidden_states": torch.zeros(batch, cond_len, EMBED_DIM, device=device, dtype=dtype),
            }

        def encoder_inputs(batch: int) -> dict[str, Any]:
            if self.conditioning == "text":
                return {"input_ids": torch.zeros(batch, TEXT_LENGTH, dtype=torch.long, device=device)}
            return {"labels": torch.zeros(batch, dtype=torch.long, device=device)}

        return [
            CostStage("text_encoder", self.condition_encoder, encoder_inputs, calls=1,
                      guidance_passes=2 if guided else 1, paper_convention=False),
            CostStage("denoiser", self.unet, unet_inputs, calls=steps, guidance_passes=2 if guided else 1),
        ]

    # --- checkpoints ---------------------------------------------------------------------------------

    def save_pretrained(self, path: str | Path) -> Path:
        """Write ``unet/``, ``scheduler/`` and the condition encoder (diffusers/transformers layout)."""
        path = Path(path)
        self.unet.save_pretrained(path / UNET_DIR)
        DDIMScheduler.from_config(self.scheduler_config).save_pretrained(path / SCHEDULER_DIR)
        sub = TEXT_DIR if self.conditioning == "text" else LABEL_DIR
        self.condition_encoder.save_pretrained(path / sub)
        return path


# --- Factories -----------------------------------------------------------------------------------------


def _build_condition_encoder(conditioning: Conditioning) -> torch.nn.Module:
    if conditioning == "text":
        from transformers import CLIPTextConfig, CLIPTextModel

        return CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
    return TokenEncoder(num_labels=NUM_CLASSES + 1 if conditioning == "class" else 1, dim=EMBED_DIM)


def _load_condition_encoder(conditioning: Conditioning, path: Path) -> torch.nn.Module:
    if conditioning == "text":
        from transformers import CLIPTextModel

        return CLIPTextModel.from_pretrained(path / TEXT_DIR, local_files_only=True)
    return TokenEncoder.from_pretrained(path / LABEL_DIR, local_files_only=True)


def build(name: str, conditioning: Conditioning, spec: GeneratorSpec) -> TinyUNet3DGenerator:
    """Random weights (seed :data:`WEIGHT_SEED`) or a local checkpoint directory; ``tiny`` changes nothing."""
    if spec.checkpoint is None:
        with seeded_init(spec.device, WEIGHT_SEED):
            unet = UNet3DConditionModel(**UNET_CONFIG)
            encoder = _build_condition_encoder(conditioning)
        scheduler = DDIMScheduler(**SCHEDULER_CONFIG)
    else:
        path = Path(spec.checkpoint)
        sub = TEXT_DIR if conditioning == "text" else LABEL_DIR
        missing = [d for d in (UNET_DIR, SCHEDULER_DIR, sub) if not (path / d).is_dir()]
        if missing:
            raise FileNotFoundError(
                f"{name}: checkpoint {path} lacks {missing}; expected a directory written by "
                f"TinyUNet3DGenerator.save_pretrained with subfolders {UNET_DIR}/, {SCHEDULER_DIR}/, {sub}/"
            )
        unet = UNet3DConditionModel.from_pretrained(path / UNET_DIR, local_files_only=True)
        scheduler = DDIMScheduler.from_pretrained(path / SCHEDULER_DIR, local_files_only=True)
        encoder = _load_condition_encoder(conditioning, path)
    dtype = spec.torch_dtype
    if spec.device != "meta":
        unet, encoder = unet.to(spec.device), encoder.to(spec.device)
    if dtype != torch.float32:  # float32 is the build dtype; casting to it again only logs a warning
        unet, encoder = unet.to(dtype), encoder.to(dtype)
    return TinyUNet3DGenerator(name, conditioning, unet, scheduler, encoder, device=spec.device, dtype=dtype)


@GENERATORS.register("tiny-unet3d", description="reference miniature: random-weight text-to-video UNet3D, "
                     "pixel space 8x16x16, DDIM, CPU in ~1 s")
def tiny_unet3d(spec: GeneratorSpec) -> TinyUNet3DGenerator:
    return build("tiny-unet3d", "text", spec)


@GENERATORS.register("tiny-unet3d-class", description="reference miniature, class-conditional (10 classes)")
def tiny_unet3d_class(spec: GeneratorSpec) -> TinyUNet3DGenerator:
    return build("tiny-unet3d-class", "class", spec)


@GENERATORS.register("tiny-unet3d-uncond", description="reference miniature, unconditional")
def tiny_unet3d_uncond(spec: GeneratorSpec) -> TinyUNet3DGenerator:
    return build("tiny-unet3d-uncond", "none", spec)
