"""Text-to-video latent diffusion with classifier-free-guided DDIM and a per-frame SD VAE decoder.

The sampling path every text-conditional latent baseline shares (ModelScope, LVDM, AnimateDiff, Latte):

1. text encoding: prompts -> token ids (the checkpoint's tokenizer, or the CLIP BPE of clip-anytorch for
   random weights) -> ``(B, L, D)`` states; the empty prompt gives the unconditional states;
2. per-sample initial noise ``(B, 4, T, H/8, W/8)`` from one CPU generator per sample
   (:func:`cmdbench.seeding.randn_per_sample`), so a sample never depends on its batch;
3. DDIM (eta = 0 by default; with eta > 0 the per-step noise is drawn per sample too) with classifier-free guidance ``eps = eps_u + s (eps_c - eps_u)`` (Ho & Salimans 2022);
4. per-frame VAE decoding of ``z / scaling_factor``, one sample at a time in equal calls of
   :func:`decode_chunk` frames (at most :data:`DECODE_FRAMES_PER_CALL`), then uint8 ``(B, T, 3, H, W)``.

Subclasses supply the denoiser call (:meth:`predict_noise`), its cost inputs (:meth:`denoiser_inputs`)
and the settings they cannot take (:meth:`check_frames`).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler

from baselines._common.sampling import CheckedSampler, check_latent_setting
from cmdbench.interfaces import (
    CostStage,
    SamplingDefaults,
    StageHook,
    stage,
)
from cmdbench.seeding import randn_per_sample
from cmdbench.video import float_to_uint8

VAE_SCALE = 8  # SD VAE: 3 downsamplings, f = 8
LATENT_CHANNELS = 4
DECODE_FRAMES_PER_CALL = 8  # most frames of one sample per SD VAE decode call (bounds the decoder's activations)
END_TOKEN = 49407  # CLIP BPE <|endoftext|>

# The published SD VAE (ModelScope / SD 1.5 / SD 2.1-base `vae/config.json`, baselines.md §2.1).
SD_VAE_CONFIG: dict[str, Any] = {
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
# A miniature of the same class for CPU tests (f = 8 kept: 4 blocks, 3 downsamplings).
TINY_VAE_CONFIG: dict[str, Any] = {
    **SD_VAE_CONFIG,
    "block_out_channels": [8, 8, 8, 8],
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "sample_size": 32,
}

Tokenize = Callable[[Sequence[str]], dict[str, torch.Tensor]]
# Prompts a text-to-video baseline samples when none are given (everyday scenes, one subject each).
T2V_EVAL_PROMPTS = (
    "a panda playing guitar in a bamboo forest",
    "waves crashing on a rocky beach at sunset",
    "a person riding a bicycle on a mountain road",
    "fireworks over a city skyline at night",
)


# CLIP ViT-L/14 text tower (openai/clip-vit-large-patch14 = SD 1.5 text_encoder/config.json): the text
# encoder of LVDM and AnimateDiff.
CLIP_L_TEXT_CONFIG: dict[str, Any] = {
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "projection_dim": 768,
    "max_position_embeddings": 77,
    "vocab_size": 49408,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 1,
}
TINY_CLIP_L_TEXT_CONFIG: dict[str, Any] = {
    **CLIP_L_TEXT_CONFIG,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_attention_heads": 2,
    "num_hidden_layers": 2,
    "projection_dim": 16,
}


@contextmanager
def seeded_init(device: str, seed: int) -> Iterator[None]:
    """Build modules on ``device`` with random weights drawn from ``seed``, leaving the global RNG as it was."""
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        yield


def clip_bpe_tokenizer(length: int, vocab_size: int | None = None, pad_id: int = 0) -> Tokenize:
    """The CLIP BPE (clip-anytorch ships its vocabulary): prompts -> ``{"input_ids": (B, length)}``.

    Used for random-weight models, which have no tokenizer files. Prompts longer than ``length`` tokens
    are cut to ``length`` (as every CLIP-conditioned model does) with a warning naming them.
    ``vocab_size``: fold ids into a smaller vocabulary (random-weight T5, whose real tokenizer is not
    available offline). ``pad_id``: the id after the end token (0 as in OpenCLIP; 49407, the end token,
    as the Hugging Face tokenizer of openai/clip-vit-large-patch14 pads).
    """
    import clip
    from clip.clip import _tokenizer as bpe

    def tokenize(prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        ids = clip.tokenize(list(prompts), context_length=length, truncate=True)  # (B, length) int
        long = [i for i, p in enumerate(prompts) if len(bpe.encode(p)) + 2 > length]
        if long:
            warnings.warn(f"prompts {long} exceed {length} tokens and were cut to {length}", stacklevel=3)
        ids = ids.long()
        if pad_id != 0:
            after_end = torch.cumsum(ids == END_TOKEN, dim=1) - (ids == END_TOKEN).long() > 0
            ids = ids.masked_fill(after_end, pad_id)
        if vocab_size is not None:
            ids = ids % vocab_size
        return {"input_ids": ids}

    return tokenize


def hf_tokenizer(tokenizer: Any, length: int, *, with_mask: bool = False) -> Tokenize:
    """A Hugging Face tokenizer padded/cut to ``length``: prompts -> ``{"input_ids", ["attention_mask"]}``."""

    def tokenize(prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        out = tokenizer(list(prompts), padding="max_length", max_length=length, truncation=True,
                        return_tensors="pt")
        full = tokenizer(list(prompts), padding=False, truncation=False)["input_ids"]
        long = [i for i, ids in enumerate(full) if len(ids) > length]
        if long:
            warnings.warn(f"prompts {long} exceed {length} tokens and were cut to {length}", stacklevel=3)
        result = {"input_ids": out["input_ids"].long()}
        if with_mask:
            result["attention_mask"] = out["attention_mask"].long()
        return result

    return tokenize


class TextToVideoLatentGenerator(CheckedSampler):
    """Base of the text-to-video latent baselines (see module docstring). Not registered itself.

    Args:
        name: registry key.
        denoiser, vae, text_encoder: the networks (already on ``device`` in ``dtype``; or on meta);
            ``text_encoder`` may be a zero-argument factory, called on first use.
        tokenize: prompts -> token-id dict for ``text_encoder``.
        text_length: tokens per prompt (77 for CLIP, 120 for Latte's T5).
        scheduler_config: ``DDIMScheduler`` config dict (a fresh scheduler is built per call).
        defaults: natural sampling setting.
        spatial_multiple: height and width must be multiples of this (pixels).
    """

    conditioning = "text"
    num_classes = None

    def __init__(
        self,
        *,
        name: str,
        denoiser: torch.nn.Module,
        vae: AutoencoderKL,
        text_encoder: torch.nn.Module | Callable[[], torch.nn.Module],
        tokenize: Tokenize,
        text_length: int,
        scheduler_config: dict[str, Any],
        defaults: SamplingDefaults,
        spatial_multiple: int,
        eval_prompts: Sequence[str],
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        tokenizer: Any = None,
        eta: float = 0.0,
    ) -> None:
        self.name = name
        self.denoiser = denoiser.eval()
        self.vae = vae.eval()
        # A module, or a zero-argument factory built on first use (a huge encoder such as T5-XXL is then
        # only materialised when prompts are encoded or its cost is described).
        self._text_encoder = text_encoder.eval() if isinstance(text_encoder, torch.nn.Module) else None
        self._text_encoder_factory = None if isinstance(text_encoder, torch.nn.Module) else text_encoder
        self.tokenize = tokenize
        self.tokenizer = tokenizer  # the HF tokenizer object when loaded from a checkpoint (saved with it)
        self.text_length = text_length
        self.scheduler_config = dict(scheduler_config)
        self.defaults = defaults
        self.spatial_multiple = spatial_multiple
        self.eval_prompts = tuple(eval_prompts)
        self.device = torch.device(device)
        self.dtype = dtype
        self.eta = eta  # DDIM eta: 0 deterministic; > 0 draws per-sample noise every step
        self.stage_hook: StageHook | None = None

    @property
    def text_encoder(self) -> torch.nn.Module:
        if self._text_encoder is None:
            assert self._text_encoder_factory is not None
            with torch.inference_mode(False):  # first use may be inside sample(); keep normal parameters
                self._text_encoder = self._text_encoder_factory().eval()
        return self._text_encoder

    # --- hooks for subclasses --------------------------------------------------------------------------

    def check_frames(self, num_frames: int) -> None:
        """Raise :class:`UnsupportedSettingError` for frame counts the denoiser cannot take."""

    def predict_noise(
        self, latents: torch.Tensor, t: torch.Tensor, text_states: torch.Tensor, text_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """``(N, 4, T, h, w)`` noisy latents, scalar timestep, ``(N, L, D)`` states -> ``(N, 4, T, h, w)`` eps."""
        raise NotImplementedError

    def denoiser_inputs(self, batch: int, num_frames: int, h: int, w: int) -> dict[str, Any]:
        """Keyword inputs of one ``denoiser(**kwargs)`` call at latent size ``(num_frames, h, w)``."""
        raise NotImplementedError

    def cost_tensors(self, batch: int, num_frames: int, h: int, w: int, text_width: int,
                     text_batch: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Zero latents ``(B, 4, T, h, w)``, timestep 999 and text states ``(text_batch or B, L, text_width)``
        on the denoiser's device and dtype: the pieces of :meth:`denoiser_inputs`."""
        p = next(self.denoiser.parameters())
        latents = torch.zeros(batch, LATENT_CHANNELS, num_frames, h, w, device=p.device, dtype=p.dtype)
        states = torch.zeros(text_batch or batch, self.text_length, text_width, device=p.device, dtype=p.dtype)
        return latents, torch.tensor(999, device=p.device), states

    def encode_text(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Prompts -> ``(B, L, D)`` states (and an optional ``(B, L)`` mask); the text encoder's last layer."""
        tokens = {k: v.to(self.device) for k, v in self.tokenize(prompts).items()}
        states = self.text_encoder(**tokens).last_hidden_state  # (B, L, D)
        return states.to(self.dtype), tokens.get("attention_mask")

    def encode_unconditional(self, states: torch.Tensor, mask: torch.Tensor | None
                             ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The guidance branch's conditioning for prompts encoded as ``states``/``mask``: the empty prompt."""
        return self.encode_text([""] * states.shape[0])

    # --- settings --------------------------------------------------------------------------------------

    def check_settings(self, num_frames: int, height: int, width: int, steps: int,
                       guidance: float | None) -> None:
        check_latent_setting(self.name, num_frames=num_frames, height=height, width=width, steps=steps,
                             guidance=guidance, multiple=self.spatial_multiple,
                             multiple_reason=f"VAE factor {VAE_SCALE} x the denoiser's downsampling",
                             train_steps=self.scheduler_config["num_train_timesteps"])
        self.check_frames(num_frames)

    # --- sampling --------------------------------------------------------------------------------------

    def generate(self, *, prompts: Sequence[str] | None, labels: Sequence[int] | None, num_frames: int,
                 height: int, width: int, steps: int, generator: Sequence[torch.Generator],
                 guidance_scale: float | None) -> torch.Tensor:
        """:meth:`CheckedSampler.sample` after its checks: uint8 ``(B, T, 3, H, W)`` on the CPU."""
        if guidance_scale is None:
            guidance_scale = self.defaults.guidance_scale
        self.check_settings(num_frames, height, width, steps, guidance_scale)
        use_cfg = guidance_scale is not None and guidance_scale != 1.0
        assert prompts is not None

        with stage(self.stage_hook, "text_encoder"):
            states, mask = self.encode_text(prompts)  # (B, L, D)
            if use_cfg:
                null_states, null_mask = self.encode_unconditional(states, mask)  # (B, L, D)
                states = torch.cat([null_states, states])  # (2B, L, D)
                mask = None if mask is None else torch.cat([null_mask, mask])

        scheduler = DDIMScheduler.from_config(self.scheduler_config)  # fresh: it keeps per-run state
        scheduler.set_timesteps(steps, device=self.device)
        h, w = height // VAE_SCALE, width // VAE_SCALE
        latents = randn_per_sample(generator, (LATENT_CHANNELS, num_frames, h, w), device=self.device)
        latents = latents * scheduler.init_noise_sigma  # (B, 4, T, h, w) float32

        with stage(self.stage_hook, "denoiser"):
            for t in scheduler.timesteps:
                model_in = torch.cat([latents, latents]) if use_cfg else latents  # (2B|B, 4, T, h, w)
                eps = self.predict_noise(model_in.to(self.dtype), t, states, mask).float()
                if use_cfg:
                    eps_null, eps_cond = eps.chunk(2)
                    eps = eps_null + guidance_scale * (eps_cond - eps_null)  # classifier-free guidance
                noise = None
                if self.eta > 0:  # DDIM's stochastic part, drawn per sample like the initial noise
                    noise = randn_per_sample(generator, latents.shape[1:], device=self.device)
                latents = scheduler.step(eps, t, latents, eta=self.eta, variance_noise=noise).prev_sample

        with stage(self.stage_hook, "vae_decoder"):
            video = self.decode(latents)  # (B, T, 3, H, W) in [-1, 1]
        return float_to_uint8(video.clamp(-1.0, 1.0).cpu(), value_range=(-1.0, 1.0))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """``(B, 4, T, h, w)`` latents -> float32 ``(B, T, 3, 8h, 8w)``; per sample, calls of
        :func:`decode_chunk` ``(T)`` frames (the call :meth:`cost_stages` describes)."""
        scale = self.vae.config.scaling_factor
        chunk = decode_chunk(latents.shape[2])
        videos = []
        for z in latents:  # (4, T, h, w)
            frames = (z.permute(1, 0, 2, 3) / scale).to(self.dtype)  # (T, 4, h, w)
            chunks = [self.vae.decode(c).sample.float() for c in frames.split(chunk)]  # each (chunk, 3, H, W)
            videos.append(torch.cat(chunks))  # (T, 3, H, W)
        return torch.stack(videos)

    # --- cost description ------------------------------------------------------------------------------

    def cost_stages(self, *, num_frames: int, height: int, width: int, steps: int) -> list[CostStage]:
        """Text encoder (once, x2 with guidance), denoiser (``steps`` calls, x2 with guidance), VAE decoder.

        The VAE decoder stage is one real decode call, :func:`decode_chunk` frames per video, run
        ``T / chunk`` times per video (FLOPs: calls x per-call, the same total as all ``T`` frames at once;
        memory: one call's activations, not a whole video's). At batch ``b`` the call is described as
        ``b x chunk`` frames (the convention every stage follows: make_inputs(b) is one call at batch b);
        :meth:`decode` runs the samples one after another, so the description is exact at batch 1 and an
        upper bound of the decoder's activations above it.
        """
        self.check_settings(num_frames, height, width, steps, None)
        device = next(self.denoiser.parameters()).device
        dtype = next(self.denoiser.parameters()).dtype
        guided = self.defaults.guidance_scale is not None and self.defaults.guidance_scale != 1.0
        passes = 2 if guided else 1
        h, w = height // VAE_SCALE, width // VAE_SCALE

        def text_inputs(batch: int) -> dict[str, Any]:
            ids = torch.zeros(batch, self.text_length, dtype=torch.long, device=device)
            return {"input_ids": ids}

        chunk = decode_chunk(num_frames)

        def vae_inputs(batch: int) -> dict[str, Any]:  # one decode call: `chunk` frames of each video
            return {"z": torch.zeros(batch * chunk, LATENT_CHANNELS, h, w, device=device, dtype=dtype)}

        return [
            CostStage("text_encoder", self.text_encoder, text_inputs, calls=1, guidance_passes=passes,
                      paper_convention=False),
            CostStage("denoiser", self.denoiser, lambda b: self.denoiser_inputs(b, num_frames, h, w),
                      calls=steps, guidance_passes=passes),
            CostStage("vae_decoder", self.vae, vae_inputs, calls=num_frames // chunk, paper_convention=False,
                      forward=lambda module, **kw: module.decode(**kw).sample),
        ]

    # --- checkpoints -----------------------------------------------------------------------------------

    def components(self) -> dict[str, Any]:
        """Subfolder name -> network, as written by :meth:`save_pretrained` (subclasses may extend)."""
        return {"unet": self.denoiser, "vae": self.vae, "text_encoder": self.text_encoder}

    def save_pretrained(self, path: str | Path) -> Path:
        """Write every component in the diffusers layout (plus ``scheduler/`` and, if any, ``tokenizer/``)."""
        path = Path(path)
        for sub, module in self.components().items():
            module.save_pretrained(path / sub)
        DDIMScheduler.from_config(self.scheduler_config).save_pretrained(path / "scheduler")
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(path / "tokenizer")
        return path


def decode_chunk(num_frames: int, most: int = DECODE_FRAMES_PER_CALL) -> int:
    """Frames of one sample per VAE decode call: the largest divisor of ``num_frames`` not above ``most``.

    Equal calls make the cost description exact: ``num_frames // chunk`` calls of ``chunk`` frames each
    (16 frames -> 2 calls of 8; 12 -> 2 of 6; 11 -> 11 of 1). The SD VAE decodes every frame on its own
    (2-D convolutions, group norms per frame), so the chunking changes no value, only the batching.
    """
    if num_frames < 1 or most < 1:
        raise ValueError(f"decode_chunk: num_frames={num_frames}, most={most}; both must be positive")
    return next(c for c in range(min(most, num_frames), 0, -1) if num_frames % c == 0)


def init_kwargs(cls: type, config: dict[str, Any]) -> dict[str, Any]:
    """The keys of a published ``config.json`` that ``cls.__init__`` takes (the rest are legacy keys)."""
    params = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in config.items() if k in params}
