"""CMDPipeline: CMD's sampler (Yu et al., ICLR 2024, Algorithm 1, App. B.4) as a diffusers pipeline.

Algorithm 1, with ``c`` the condition (class label or text), ``∅`` the null condition:

1. ``x̄_T ~ N(0, I)``, ``z_T ~ N(0, I)`` (drawn per sample from that sample's CPU generator).
2. Content frame: for ``t = T..1``: ``ε = (1 + w) ε_θI(x̄_t, c, t) − w ε_θI(x̄_t, ∅, t)``; DDIM step.
3. Motion latent: for ``t = T..1``: ``ε = (1 + w) ε_θM(z_t, c, x̄_0, t) − w ε_θM(z_t, ∅, x̄_0, t)``; DDIM
   step. Guidance acts on ``c`` only: the finished content frame ``x̄_0`` enters **both** branches.
4. ``x_{1:L} = g(x̄_0, z_0)`` (the CMD autoencoder's decoder). In latent mode (text-to-video on Stable
   Diffusion latents) ``x`` is a clip of SD latents scaled by the VAE's ``scaling_factor``; each frame is
   divided by that factor and decoded by the SD VAE decoder.

Guidance forms. The paper writes ``(1 + w) ε_c − w ε_u``; diffusers (and the official release) write
``ε_u + s (ε_c − ε_u)``. Expanding, ``(1 + w) ε_c − w ε_u = ε_u + (1 + w)(ε_c − ε_u)``, so the two agree
exactly when ``s = 1 + w`` (:func:`paper_weight_to_diffusers_scale`). ``guidance_form="paper"`` (the
default) reads ``guidance_scale`` as ``w``; ``guidance_form="diffusers"`` reads it as ``s``. ``w = 0``
(``s = 1``) is plain conditional sampling and skips the unconditional pass.

The DDIM schedulers run with ``eta = 0`` (deterministic), so the only randomness is the initial noise,
drawn per sample with :func:`cmdbench.seeding.randn_per_sample`: sample ``i`` depends only on
``generator[i]`` and its condition, never on its batch.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from diffusers import DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.utils import BaseOutput

from cmdbench.interfaces import ConditioningError, StageHook, UnsupportedSettingError, stage
from cmdbench.seeding import randn_per_sample
from cmdbench.video import float_to_uint8

logger = logging.getLogger(__name__)

GuidanceForm = Literal["paper", "diffusers"]
OutputType = Literal["uint8", "pt", "np", "latent"]
GUIDANCE_FORMS = ("paper", "diffusers")
OUTPUT_TYPES = ("uint8", "pt", "np", "latent")


# --- Classifier-free guidance in both forms ------------------------------------------------------------


def paper_weight_to_diffusers_scale(w: float) -> float:
    """Algorithm 1's ``w`` -> diffusers' ``guidance_scale`` ``s = 1 + w``."""
    return 1.0 + float(w)


def diffusers_scale_to_paper_weight(s: float) -> float:
    """diffusers' ``guidance_scale`` ``s`` -> Algorithm 1's ``w = s − 1``."""
    return float(s) - 1.0


def guide_paper(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, w: float) -> torch.Tensor:
    """Algorithm 1: ``(1 + w) ε_c − w ε_u``."""
    return (1.0 + w) * eps_cond - w * eps_uncond


def guide_diffusers(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, s: float) -> torch.Tensor:
    """diffusers / release form: ``ε_u + s (ε_c − ε_u)``."""
    return eps_uncond + s * (eps_cond - eps_uncond)


@dataclass
class CMDPipelineOutput(BaseOutput):
    """``frames``: the videos in the requested ``output_type``:

    - ``"uint8"``: ``torch.uint8`` ``(B, L, 3, H, W)`` on the CPU (cmdbench's video convention);
    - ``"pt"``: ``torch.float32`` ``(B, L, 3, H, W)`` in ``[0, 1]`` on the CPU;
    - ``"np"``: ``numpy.float32`` ``(B, L, H, W, 3)`` in ``[0, 1]`` (diffusers' video convention);
    - ``"latent"``: ``None`` (only ``content_frames`` and ``motion_latents`` are returned).

    ``content_frames``: ``(B, C, h, w)`` float32, the denoised ``x̄_0`` (pixels in [-1, 1] or scaled SD
    latents). ``motion_latents``: ``(B, D, L, h' + w')`` float32, the denoised ``z_0``.
    """

    frames: Any
    content_frames: torch.Tensor
    motion_latents: torch.Tensor


class CMDPipeline(DiffusionPipeline):
    """CMD's two-stage sampler (content frame, then motion latent) and decoders.

    Components:
        autoencoder: ``CMDAutoencoder`` with ``decode(content (B,C,h,w), motion (B,D,L,h'+w')) -> (B,C,L,h,w)``.
        content_model: ``UNet2DConditionModel`` (text) or a class-conditional ``ContentDiT`` over content frames.
        motion_model: ``MotionDiT``: ``(z_t, t, x̄_0, class_labels | encoder_hidden_states) -> ε``.
        content_scheduler, motion_scheduler: ``DDIMScheduler`` (``eta = 0``).
        text_encoder: ``CLIPTextModel`` (text mode); ``last_hidden_state`` conditions both models.
        tokenizer: a ``CLIPTokenizer``; when absent, prompts are tokenized with ``clip.tokenize``
            (clip-anytorch ships the BPE vocabulary, so this works offline).
        vae: ``AutoencoderKL`` (latent mode only): decodes each frame of the CMD autoencoder's output.
    """

    model_cpu_offload_seq = "text_encoder->content_model->motion_model->autoencoder->vae"
    _optional_components = ["text_encoder", "tokenizer", "vae"]

    def __init__(
        self,
        autoencoder: Any,
        content_model: Any,
        motion_model: Any,
        content_scheduler: DDIMScheduler,
        motion_scheduler: DDIMScheduler,
        text_encoder: Any = None,
        tokenizer: Any = None,
        vae: Any = None,
    ) -> None:
        super().__init__()
        self.register_modules(
            autoencoder=autoencoder,
            content_model=content_model,
            motion_model=motion_model,
            content_scheduler=content_scheduler,
            motion_scheduler=motion_scheduler,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            vae=vae,
        )
        self.stage_hook: StageHook | None = None

    # --- Static facts derived from the component configs -----------------------------------------------

    @property
    def conditioning(self) -> Literal["class", "text"]:
        """``"text"`` when the content model cross-attends to text, else ``"class"``."""
        return "text" if isinstance(self.content_model, UNet2DConditionModel) else "class"

    @property
    def num_classes(self) -> int | None:
        """Number of real classes (the null class for guidance is index ``num_classes``)."""
        if self.conditioning != "class":
            return None
        return int(self.motion_model.config.num_classes)

    @property
    def latent_mode(self) -> bool:
        return self.vae is not None

    @property
    def vae_scale_factor(self) -> int:
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def native_num_frames(self) -> int:
        return int(self.autoencoder.config.num_frames)

    @property
    def native_size(self) -> tuple[int, int]:
        """``(height, width)`` of the output frames the networks were built for."""
        size = self.autoencoder.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        f = self.vae_scale_factor
        return int(h) * f, int(w) * f

    @property
    def size_multiple(self) -> int:
        """Output height and width must be multiples of this (pixels).

        VAE factor (1 in pixel space) x lcm(autoencoder patch x motion-DiT patch (so that H' + W' splits
        into motion patches), motion-DiT content patch, content model's own factor (UNet: 2 per
        down-sampling; DiT: its patch)). 64 for ``cmd-webvid-512x1024`` and ``cmd-sd15-512``, 4 for
        ``cmd-ucf101-64``.
        """
        mm = self.motion_model.config
        cm = self.content_model
        if isinstance(cm, UNet2DConditionModel):
            content_factor = 2 ** (len(cm.config.block_out_channels) - 1)
        else:
            content_factor = int(cm.config.patch_size)
        ae_patch = int(self.autoencoder.config.patch_size)
        grid = math.lcm(ae_patch * int(mm.patch_size), int(mm.content_patch_size), content_factor)
        return self.vae_scale_factor * grid

    def allowed_setting(self) -> str:
        """The allowed (num_frames, height, width), in words."""
        m = self.size_multiple
        nh, nw = self.native_size
        return (f"num_frames={self.native_num_frames} (fixed clip length); height and width positive "
                f"multiples of {m} (native {nh}x{nw})")

    def check_setting(self, num_frames: int, height: int, width: int) -> None:
        """Raise :class:`UnsupportedSettingError` naming the allowed setting: the clip length is fixed (the
        autoencoder's ``num_frames``); frame sizes are any multiple of :attr:`size_multiple` (the sin-cos
        positions of the autoencoder and motion DiT are computed for the resulting grid)."""
        allowed_l = self.native_num_frames
        if num_frames != allowed_l:
            raise UnsupportedSettingError(
                f"CMD generates fixed-length clips: num_frames={num_frames} is not allowed; allowed: "
                f"{self.allowed_setting()}"
            )
        m = self.size_multiple
        if height < m or width < m or height % m or width % m:
            raise UnsupportedSettingError(
                f"height x width = {height}x{width} is not allowed; allowed: {self.allowed_setting()} "
                f"(autoencoder patch {self.autoencoder.config.patch_size}, motion content patch "
                f"{self.motion_model.config.content_patch_size}"
                + (f", VAE factor {self.vae_scale_factor})" if self.latent_mode else ", pixel space)")
            )

    # --- Text encoding ---------------------------------------------------------------------------------

    def _tokenize(self, prompts: Sequence[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> ``(ids, mask)``, both ``(B, S)`` int64 (SD convention: padded to the maximum length).

        ``mask`` is 1 on the start token, the prompt's tokens and the end token, 0 on padding."""
        if self.tokenizer is not None:
            max_len = int(self.tokenizer.model_max_length)
            full = self.tokenizer(list(prompts), padding=False, truncation=False).input_ids
            tokens = self.tokenizer(
                list(prompts), padding="max_length", max_length=max_len, truncation=True, return_tensors="pt"
            )
            ids, mask = tokens.input_ids, tokens.attention_mask.long()
        else:
            max_len = int(self.text_encoder.config.max_position_embeddings)
            full = [_clip_bpe().encode(p) + [0, 0] for p in prompts]  # + start/end tokens
            ids = _clip_tokenize(list(prompts), max_len)
            lengths = torch.tensor([min(len(t), max_len) for t in full])  # (B,) real tokens incl. start/end
            mask = (torch.arange(max_len)[None] < lengths[:, None]).long()  # (B, S)
        too_long = [i for i, t in enumerate(full) if len(t) > max_len]
        if too_long:
            logger.warning(
                "prompts %s are longer than the text encoder's %d tokens and were truncated to it", too_long, max_len
            )
        return ids.to(device), mask.to(device)

    @torch.no_grad()
    def encode_prompt(self, prompts: Sequence[str], device: torch.device) -> torch.Tensor:
        """Prompts -> ``last_hidden_state`` ``(B, S, text_dim)`` of the text encoder."""
        return self.encode_prompt_with_mask(prompts, device)[0]

    @torch.no_grad()
    def encode_prompt_with_mask(
        self, prompts: Sequence[str], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> ``(features (B, S, text_dim), mask (B, S) int64)``.

        ``features``: the text encoder's ``last_hidden_state`` over all ``S`` positions (padding included,
        as Stable Diffusion's cross-attention reads them; the encoder itself runs unmasked, as in SD).
        ``mask``: 1 on real tokens (start, prompt, end), 0 on padding. The motion DiT takes it as
        ``encoder_attention_mask`` so its text embedding is the **masked mean** over real tokens; the SD
        content UNet takes the features only.
        """
        if self.text_encoder is None:
            raise ConditioningError("this CMD pipeline has no text encoder; pass prompt_embeds= instead of prompts")
        ids, mask = self._tokenize(prompts, device)
        return self.text_encoder(ids)[0], mask  # (B, S, text_dim), (B, S)

    # --- One guided denoiser evaluation per stage ------------------------------------------------------

    def _content_eps(
        self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """ε_θI(x̄_t, c, t): ``x`` (N, C, h, w) -> (N, C, h, w)."""
        model = self.content_model
        dtype = model.dtype
        tt = t.to(x.device).expand(x.shape[0])
        if isinstance(model, UNet2DConditionModel):  # SD reads all S text positions: no mask (SD convention)
            out = model(x.to(dtype), tt, encoder_hidden_states=cond["encoder_hidden_states"].to(dtype)).sample
        else:
            out = model(x.to(dtype), timestep=tt, class_labels=cond["class_labels"], return_dict=False)[0]
        return out[:, : x.shape[1]].float()  # a learned-σ half (DiT, learn_sigma) is dropped for DDIM

    def _motion_eps(
        self, z: torch.Tensor, t: torch.Tensor, content: torch.Tensor, cond: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """ε_θM(z_t, c, x̄_0, t): ``z`` (N, D, L, h'+w'), ``content`` (N, C, h, w) -> (N, D, L, h'+w').

        ``cond``: ``class_labels``, or ``encoder_hidden_states`` with ``encoder_attention_mask`` (masked mean)."""
        model = self.motion_model
        dtype = model.dtype
        tt = t.to(z.device).expand(z.shape[0])
        kwargs = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in cond.items()}
        out = model(z.to(dtype), tt, content.to(dtype), **kwargs, return_dict=False)
        out = out[0] if isinstance(out, tuple) else out
        return out[:, : z.shape[1]].float()

    def _guided(self, eps_fn, x: torch.Tensor, cond: dict, uncond: dict | None, w: float, form: str):
        """One guided ε. ``uncond=None`` (``w = 0``) runs the conditional branch only; otherwise both
        branches run as one batch ``[uncond; cond]`` of ``2N``."""
        if uncond is None:
            return eps_fn(x, cond)
        both = {k: torch.cat([uncond[k], cond[k]]) for k in cond}
        eps_u, eps_c = eps_fn(torch.cat([x, x]), both).chunk(2)
        if form == "paper":
            return guide_paper(eps_c, eps_u, w)
        return guide_diffusers(eps_c, eps_u, paper_weight_to_diffusers_scale(w))

    # --- Algorithm 1 -----------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str] | None = None,
        *,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        class_labels: Sequence[int] | torch.Tensor | None = None,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        content_steps: int = 50,
        motion_steps: int = 50,
        guidance_scale: float = 7.5,
        guidance_form: GuidanceForm = "paper",
        generator: Sequence[torch.Generator] | torch.Generator | None = None,
        output_type: OutputType = "uint8",
        return_dict: bool = True,
    ) -> CMDPipelineOutput | tuple:
        """Sample videos with Algorithm 1.

        Args:
            prompt / prompt_embeds: text conditions (text mode); ``prompt_embeds`` is ``(B, S, text_dim)``
                and skips the text encoder (``negative_prompt_embeds`` defaults to the empty prompt's).
            prompt_attention_mask / negative_prompt_attention_mask: ``(B, S)`` masks (1 = real token) of
                given embeddings, for the motion DiT's masked mean; default: every position counts.
            class_labels: ``B`` ints in ``0..num_classes-1`` (class mode).
            num_frames, height, width: output clip size (default: the native one); frames fixed, sizes any
                multiple of :attr:`size_multiple` (see :meth:`check_setting`).
            content_steps, motion_steps: DDIM steps per stage (paper: 50 and 100).
            guidance_scale: ``w`` (``guidance_form="paper"``) or ``s = 1 + w`` (``"diffusers"``).
            generator: one CPU ``torch.Generator`` per sample (a single one means batch 1).
            output_type: see :class:`CMDPipelineOutput`.
        """
        device = self._execution_device
        num_frames = self.native_num_frames if num_frames is None else int(num_frames)
        nh, nw = self.native_size
        height = nh if height is None else int(height)
        width = nw if width is None else int(width)
        self.check_setting(num_frames, height, width)
        if guidance_form not in GUIDANCE_FORMS:
            raise ValueError(f"guidance_form={guidance_form!r} is not allowed; use one of {GUIDANCE_FORMS}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type={output_type!r} is not allowed; use one of {OUTPUT_TYPES}")
        for name, steps in (("content_steps", content_steps), ("motion_steps", motion_steps)):
            if int(steps) < 1:
                raise UnsupportedSettingError(f"{name}={steps} is not allowed; use a positive number of steps")
        w = float(guidance_scale) if guidance_form == "paper" else diffusers_scale_to_paper_weight(guidance_scale)
        if w < 0:
            raise UnsupportedSettingError(
                f"guidance weight w={w} (guidance_scale={guidance_scale}, form {guidance_form!r}) is negative; "
                "allowed: w >= 0 (paper form) or s >= 1 (diffusers form)"
            )
        generators = _as_generator_list(generator)
        batch = len(generators)

        # Conditions for both stages ([uncond; cond] when guiding).
        cond, uncond = self._conditions(
            prompt, prompt_embeds, negative_prompt_embeds, class_labels, batch, device,
            prompt_attention_mask, negative_prompt_attention_mask,
        )
        if w == 0.0:
            uncond = None

        # Initial noise, per sample: first the content frame, then the motion latent, from the same generator.
        content_shape, motion_shape = self.latent_shapes(num_frames, height, width)
        x = randn_per_sample(generators, content_shape, device=device)  # (B, C, h, w) float32
        z = randn_per_sample(generators, motion_shape, device=device)  # (B, D, L, h'+w') float32

        # Step 2: content frame x̄_0.
        with stage(self.stage_hook, "content"):
            x = self._denoise(
                self.content_scheduler, x, content_steps,
                lambda xt, t, c: self._content_eps(xt, t, c), cond, uncond, w, guidance_form,
            )
        # Step 3: motion latent z_0 given x̄_0 in both branches.
        with stage(self.stage_hook, "motion"):
            z = self._denoise(
                self.motion_scheduler, z, motion_steps,
                lambda zt, t, c: self._motion_eps(zt, t, torch.cat([x] * (zt.shape[0] // batch)), c),
                cond, uncond, w, guidance_form,
            )

        frames = None
        if output_type != "latent":
            frames = self.decode(x, z)  # (B, L, 3, H, W) float32 in [-1, 1], CPU
            if output_type == "uint8":
                frames = float_to_uint8(frames)
            elif output_type == "pt":
                frames = (frames + 1.0) / 2.0
            else:
                frames = ((frames + 1.0) / 2.0).permute(0, 1, 3, 4, 2).numpy().astype(np.float32)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (frames, x.cpu(), z.cpu())
        return CMDPipelineOutput(frames=frames, content_frames=x.cpu(), motion_latents=z.cpu())

    def latent_shapes(self, num_frames: int, height: int, width: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Per-sample shapes ``(C, h, w)`` of the content frame and ``(D, L, h'+w')`` of the motion latent."""
        ae = self.autoencoder.config
        f = self.vae_scale_factor
        h, w = height // f, width // f
        p = ae.patch_size
        ph, pw = (p, p) if isinstance(p, int) else tuple(p)
        return (int(ae.in_channels), h, w), (int(ae.motion_channels), num_frames, h // ph + w // pw)

    def _denoise(self, scheduler, x, steps, eps_fn, cond, uncond, w, form) -> torch.Tensor:
        """DDIM (eta = 0) from pure noise ``x`` over ``steps`` steps; returns the clean sample (float32)."""
        scheduler.set_timesteps(int(steps), device=x.device)
        x = x * scheduler.init_noise_sigma
        for t in self.progress_bar(scheduler.timesteps):
            xin = scheduler.scale_model_input(x, t)
            eps = self._guided(functools.partial(_at_step, eps_fn, t), xin, cond, uncond, w, form)
            x = scheduler.step(eps, t, x, eta=0.0, return_dict=False)[0]
        return x.float()

    def _conditions(self, prompt, prompt_embeds, negative_prompt_embeds, class_labels, batch, device,
                    prompt_mask=None, negative_mask=None):
        """Conditional and unconditional model inputs (dicts of batched tensors): ``class_labels``, or
        ``encoder_hidden_states`` (B, S, E) with ``encoder_attention_mask`` (B, S) in both branches."""
        if self.conditioning == "class":
            if any(v is not None for v in (prompt, prompt_embeds, negative_prompt_embeds, prompt_mask, negative_mask)):
                raise ConditioningError("this CMD pipeline is class-conditional: pass class_labels=, not prompts")
            if class_labels is None:
                raise ConditioningError(
                    f"this CMD pipeline is class-conditional: pass class_labels= (one int in 0..{self.num_classes - 1} "
                    "per sample)"
                )
            labels = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1)
            if labels.numel() != batch:
                raise ConditioningError(f"got {labels.numel()} class labels for {batch} generators; pass one per sample")
            bad = [int(v) for v in labels if not 0 <= int(v) < self.num_classes]
            if bad:
                raise ConditioningError(f"class labels {bad} are out of range; allowed 0..{self.num_classes - 1}")
            null = torch.full_like(labels, self.num_classes)  # the null class ∅ for guidance
            return {"class_labels": labels.to(device)}, {"class_labels": null.to(device)}

        if class_labels is not None:
            raise ConditioningError("this CMD pipeline is text-conditional: pass prompt= or prompt_embeds=, not labels")
        with stage(self.stage_hook, "text_encoder"):
            if prompt_embeds is None:
                if prompt is None:
                    raise ConditioningError("this CMD pipeline is text-conditional: pass prompt= or prompt_embeds=")
                prompts = [prompt] if isinstance(prompt, str) else list(prompt)
                if len(prompts) != batch:
                    raise ConditioningError(f"got {len(prompts)} prompts for {batch} generators; pass one per sample")
                if prompt_mask is not None:
                    raise ConditioningError("prompt_attention_mask goes with prompt_embeds=, not with prompts")
                prompt_embeds, prompt_mask = self.encode_prompt_with_mask(prompts, device)
            elif prompt is not None:
                raise ConditioningError("pass either prompt= or prompt_embeds=, not both")
            if prompt_embeds.shape[0] != batch:
                raise ConditioningError(
                    f"prompt_embeds has batch {prompt_embeds.shape[0]} for {batch} generators; pass one per sample"
                )
            if negative_prompt_embeds is None:
                if negative_mask is not None:
                    raise ConditioningError("negative_prompt_attention_mask goes with negative_prompt_embeds=")
                empty, empty_mask = self.encode_prompt_with_mask([""], device)  # the null condition ∅
                negative_prompt_embeds = empty.expand(batch, *empty.shape[1:])
                negative_mask = empty_mask.expand(batch, -1)
            prompt_mask = _text_mask(prompt_mask, prompt_embeds, "prompt")
            negative_mask = _text_mask(negative_mask, negative_prompt_embeds, "negative_prompt")
        return (
            {"encoder_hidden_states": prompt_embeds.to(device), "encoder_attention_mask": prompt_mask.to(device)},
            {"encoder_hidden_states": negative_prompt_embeds.to(device),
             "encoder_attention_mask": negative_mask.to(device)},
        )

    # --- Step 4: decoding ------------------------------------------------------------------------------

    @torch.no_grad()
    def decode(self, content: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
        """``x̄_0`` (B, C, h, w) and ``z_0`` (B, D, L, h'+w') -> float32 RGB (B, L, 3, H, W) in [-1, 1] on CPU."""
        ae = self.autoencoder
        with stage(self.stage_hook, "decoder"):
            video = ae.decode(content.to(ae.dtype), motion.to(ae.dtype))  # (B, C, L, h, w)
            video = video[0] if isinstance(video, tuple) else getattr(video, "sample", video)
        video = video.float().permute(0, 2, 1, 3, 4)  # (B, L, C, h, w)
        if not self.latent_mode:
            return video.clamp(-1, 1).cpu()
        with stage(self.stage_hook, "vae_decoder"):
            scale = float(self.vae.config.scaling_factor)
            frames = []
            for i in range(video.shape[1]):  # one frame at a time, as the SD VAE is an image decoder
                lat = video[:, i].to(self.vae.dtype) / scale  # (B, 4, h, w)
                frames.append(self.vae.decode(lat, return_dict=False)[0].float().clamp(-1, 1).cpu())
        return torch.stack(frames, dim=1)  # (B, L, 3, H, W)


def _text_mask(mask: torch.Tensor | None, embeds: torch.Tensor, name: str) -> torch.Tensor:
    """``mask`` (B, S) as int64 (all ones when None: every position of given embeddings counts), checked
    against ``embeds`` (B, S, E)."""
    if mask is None:
        return torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    mask = torch.as_tensor(mask)
    if tuple(mask.shape) != tuple(embeds.shape[:2]):
        raise ConditioningError(
            f"{name}_attention_mask has shape {tuple(mask.shape)}; {name}_embeds needs (B, S) = {tuple(embeds.shape[:2])}"
        )
    if mask.device.type != "meta" and bool((mask.sum(dim=1) == 0).any()):
        raise ConditioningError(f"{name}_attention_mask has a row with no real token; each row needs at least one 1")
    return mask.long()


def _at_step(eps_fn, t, x, cond):
    """``eps_fn`` evaluated at timestep ``t`` (binds the loop variable)."""
    return eps_fn(x, t, cond)


@functools.cache
def _clip_bpe():
    """clip-anytorch's byte-pair encoder (its vocabulary ships with the package: works offline)."""
    from clip.simple_tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def _clip_tokenize(prompts: list[str], context_length: int) -> torch.Tensor:
    """``clip.tokenize``: ``<start> tokens <end>`` padded with 0 to ``context_length`` (truncated past it)."""
    import clip

    return clip.tokenize(prompts, context_length=context_length, truncate=True)


def _as_generator_list(generator) -> list[torch.Generator]:
    if generator is None:
        raise ValueError("pass generator= as a list of CPU torch.Generators, one per sample (batch size)")
    gens = [generator] if isinstance(generator, torch.Generator) else list(generator)
    if not gens or not all(isinstance(g, torch.Generator) for g in gens):
        raise ValueError("generator= must be a non-empty list of torch.Generators, one per sample")
    bad = [i for i, g in enumerate(gens) if g.device.type != "cpu"]
    if bad:
        raise ValueError(f"generators {bad} are not CPU generators; noise is drawn on the CPU per sample")
    return gens
