"""Named CMD configurations (the paper's Tables 5-7, App. B.3-B.4) and their VideoGenerator factories.

| preset                | space                     | condition  | content model          | motion model          |
|-----------------------|---------------------------|------------|------------------------|-----------------------|
| ``cmd-ucf101-64``     | RGB pixels 3x16x64x64     | 101 classes| pixel DiT-XL/2         | DiT-L/2, content p. 4 |
| ``cmd-webvid-512x1024``| SD 2.1-base latents 4x64x128 | text (OpenCLIP-H, 23 layers) | SD 2.1-base UNet | DiT-XL/2, content p. 8 |
| ``cmd-sd15-512``      | SD 1.5 latents 4x64x64    | text (CLIP-L)| SD 1.5 UNet          | DiT-XL/2, content p. 4 |
| ``cmd-tiny``          | RGB pixels 3x8x16x16      | text (tiny CLIP) | tiny UNet          | tiny DiT              |

Autoencoder (Table 5): TimeSformer, patch 2, C' = 384, depth 12, 8 heads of 64, D = 8. Sampling (App. B.4):
DDIM (eta = 0), 50 content steps and 100 motion steps, guidance ``w = 4.0`` (UCF-101) and ``w = 7.5``
(text-to-video), stored in Algorithm 1's form (``guidance_form = "paper"``; diffusers' ``s = 1 + w``).

Choices the paper leaves open, made here and stated once:
- Noise schedules: the SD content models keep Stable Diffusion's own schedule (scaled-linear
  0.00085-0.012, 1000 steps); every DiT (pixel content DiT, motion DiTs) uses DiT's linear 1e-4-0.02
  schedule, 1000 steps. Both epsilon-prediction.
- ``learn_sigma=False`` for the DiTs: Algorithm 1 samples with DDIM, which never reads a learned variance.
- Steps. App. B.4 samples the content model with 50 DDIM steps and the motion model with 100 (the preset's
  ``steps`` and ``motion_steps``); Table 9's "50 steps" / "100 steps" columns read as both stages running
  the stated count (cmd-paper.md §7: its 50- vs 100-step FLOPs differ by 50 x (content + motion) per step).
  ``CMDGenerator.sample(steps=...)`` therefore runs the content stage for ``steps`` and the motion stage for
  ``CMDGenerator.motion_steps_for(steps)``: the preset's ``motion_steps`` (100) when ``steps`` is the
  preset's own ``steps`` (50, the quality setting of App. B.4, which every quality run uses by default),
  else ``steps`` (a caller who asks for another count gets it in both stages, as Table 9 reads it); a
  ``generator.motion_steps`` set by the caller wins over both. ``cost_stages(steps=...)`` keeps Table 9's
  explicit reading: ``steps`` motion calls (or ``generator.motion_steps`` when set), so the committed
  counts (CMD 46.3 TMAC at 50 steps) are unchanged. A harness that *times* ``sample`` for Table 9 at the
  preset's own step count sets ``generator.motion_steps = steps`` to time what it counts.

Frame sizes: the clip length is fixed (16; the miniatures 8), but the frame size may be any multiple of
``CMDPipeline.size_multiple`` (VAE factor x lcm(AE patch x motion patch, motion content patch, content
model factor): 64 for the SD presets, 4 for ``cmd-ucf101-64``, 8 for ``cmd-tiny``). The same weights run at
any such size: the autoencoder and both DiTs compute their fixed sin-cos positions for the input's grid
(identical to the native tables at the native size); the SD UNet is convolutional. Quality at non-native
sizes is untrained territory; cost is what it is for.

``GeneratorSpec(tiny=True)`` builds a random miniature of the same code path (same space, condition and
model classes); ``checkpoint=None`` the full architecture with random weights (``device="meta"`` for
counting); a checkpoint folder (``CMDPipeline.save_pretrained`` layout) loads offline and must match the
preset's architecture.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from diffusers import DDIMScheduler, UNet2DConditionModel

from cmdbench.cmd.autoencoder import CMDAutoencoder
from cmdbench.cmd.content import (
    build_content_dit,
    build_content_unet,
    build_text_encoder,
    build_vae,
    sd_unet_config,
    tiny_unet_config,
)
from cmdbench.cmd.motion_dit import MotionDiT, motion_dit_config
from cmdbench.cmd.pipeline import CMDPipeline
from cmdbench.interfaces import (
    CostStage,
    GeneratorSpec,
    SamplingDefaults,
    StageHook,
    UnsupportedSettingError,
    check_conditioning,
)
from cmdbench.registry import GENERATORS

# Noise schedules (1000 training steps, epsilon prediction) in diffusers' DDIM/DDPM config form.
SD_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "epsilon",
}
DIT_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
    "clip_sample": False, "set_alpha_to_one": True, "steps_offset": 0, "prediction_type": "epsilon",
}
SCHEDULES = {"sd": SD_SCHEDULE, "dit": DIT_SCHEDULE}

# Prompts shown in the paper's figures (Fig. 3, 9-12); used as the text presets' ``eval_prompts``.
PAPER_PROMPTS: tuple[str, ...] = (
    "Fireworks",
    "A video of the Earth rotating in space",
    "A Teddy Bear skating in Times Square",
    "A clownfish swimming through a coral reef",
    "Fire",
    "Close up of grapes on a rotating table",
    "Sky time-lapse video with clouds",
)

PAPER_TOTAL_PARAMS = 1.6e9  # Table 10, CMD (text-to-video)


@dataclass(frozen=True)
class AutoencoderSpec:
    """``CMDAutoencoder`` arguments (Table 5). ``sample_size`` is the AE's frame grid (pixels or latents)."""

    in_channels: int
    num_frames: int
    sample_size: tuple[int, int]
    patch_size: int = 2
    hidden_size: int = 384
    depth: int = 12
    num_heads: int = 8
    head_dim: int = 64
    motion_channels: int = 8
    output_activation: str = "tanh"

    def kwargs(self) -> dict[str, Any]:
        return {
            "in_channels": self.in_channels, "num_frames": self.num_frames, "sample_size": list(self.sample_size),
            "patch_size": self.patch_size, "hidden_size": self.hidden_size, "depth": self.depth,
            "num_heads": self.num_heads, "head_dim": self.head_dim, "motion_channels": self.motion_channels,
            "output_activation": self.output_activation,
        }

    @property
    def motion_width(self) -> int:
        """W_m = H' + W'."""
        return self.sample_size[0] // self.patch_size + self.sample_size[1] // self.patch_size


@dataclass(frozen=True)
class MotionSpec:
    """Motion DiT (Table 6): a named size from ``MOTION_DIT_CONFIGS`` (or explicit dims) + content patch."""

    size: str = "DiT-XL/2"
    content_patch_size: int = 8
    depth: int | None = None  # explicit dims override the named size (miniatures)
    hidden_size: int | None = None
    num_heads: int | None = None

    def dims(self) -> dict[str, int]:
        dims = motion_dit_config(self.size)
        for key in ("depth", "hidden_size", "num_heads"):
            if getattr(self, key) is not None:
                dims[key] = getattr(self, key)
        return dims


@dataclass(frozen=True)
class ContentSpec:
    """Content-frame model (Table 7): ``kind="unet"`` (SD ``sd_version``) or ``kind="dit"`` (``dit_size``)."""

    kind: str
    dit_size: str = "XL/2"
    tiny: bool = False  # the content builders' random miniatures


@dataclass(frozen=True)
class CMDPreset:
    """One named CMD configuration.

    height/width/num_frames: the output clip (RGB pixels). sd_version: Stable Diffusion version whose VAE
    latents the AE works in (``None`` = pixel space); also selects the text encoder and UNet config.
    guidance_scale: Algorithm 1's ``w``. content_schedule / motion_schedule: keys of ``SCHEDULES``.
    """

    name: str
    description: str
    conditioning: str
    num_classes: int | None
    num_frames: int
    height: int
    width: int
    sd_version: str | None
    autoencoder: AutoencoderSpec
    content: ContentSpec
    motion: MotionSpec
    guidance_scale: float
    content_schedule: str
    motion_schedule: str = "dit"
    steps: int = 50
    motion_steps: int = 100
    tiny_text: bool = False  # tiny CLIP text tower / tiny VAE (miniatures)
    eval_prompts: tuple[str, ...] = ()

    @property
    def latent_mode(self) -> bool:
        return self.sd_version is not None

    @property
    def defaults(self) -> SamplingDefaults:
        return SamplingDefaults(self.num_frames, self.height, self.width, self.steps, self.guidance_scale)


# --- The paper's presets ---------------------------------------------------------------------------------

UCF101_64 = CMDPreset(
    name="cmd-ucf101-64",
    description="CMD, UCF-101 class-conditional, RGB pixels 16x64x64 (DiT-XL/2 content, DiT-L/2 motion)",
    conditioning="class", num_classes=101, num_frames=16, height=64, width=64, sd_version=None,
    autoencoder=AutoencoderSpec(in_channels=3, num_frames=16, sample_size=(64, 64), output_activation="tanh"),
    content=ContentSpec(kind="dit", dit_size="XL/2"),
    motion=MotionSpec(size="DiT-L/2", content_patch_size=4),
    guidance_scale=4.0, content_schedule="dit",
)
WEBVID_512X1024 = CMDPreset(
    name="cmd-webvid-512x1024",
    description="CMD, text-to-video 16x512x1024 on SD 2.1-base latents (SD UNet content, DiT-XL/2 motion)",
    conditioning="text", num_classes=None, num_frames=16, height=512, width=1024, sd_version="2.1-base",
    autoencoder=AutoencoderSpec(in_channels=4, num_frames=16, sample_size=(64, 128), output_activation="none"),
    content=ContentSpec(kind="unet"),
    motion=MotionSpec(size="DiT-XL/2", content_patch_size=8),
    guidance_scale=7.5, content_schedule="sd", eval_prompts=PAPER_PROMPTS,
)
SD15_512 = CMDPreset(
    name="cmd-sd15-512",
    description="CMD, text-to-video 16x512x512 on SD 1.5 latents (zero-shot UCF-101 setting)",
    conditioning="text", num_classes=None, num_frames=16, height=512, width=512, sd_version="1.5",
    autoencoder=AutoencoderSpec(in_channels=4, num_frames=16, sample_size=(64, 64), output_activation="none"),
    content=ContentSpec(kind="unet"),
    motion=MotionSpec(size="DiT-XL/2", content_patch_size=4),
    guidance_scale=7.5, content_schedule="sd", eval_prompts=PAPER_PROMPTS,
)

_TINY_AE = {"patch_size": 2, "hidden_size": 32, "depth": 1, "num_heads": 2, "head_dim": 16, "motion_channels": 4}
_TINY_MOTION = {"depth": 2, "hidden_size": 32, "num_heads": 2}

TINY = CMDPreset(
    name="cmd-tiny",
    description="CMD random miniature (text, RGB 8x16x16) for CPU tests",
    conditioning="text", num_classes=None, num_frames=8, height=16, width=16, sd_version=None,
    autoencoder=AutoencoderSpec(in_channels=3, num_frames=8, sample_size=(16, 16), **{**_TINY_AE, "patch_size": 4}),
    content=ContentSpec(kind="unet", tiny=True),
    motion=MotionSpec(size="DiT-S/2", content_patch_size=4, **_TINY_MOTION),
    guidance_scale=7.5, content_schedule="sd", steps=4, motion_steps=4, tiny_text=True,
    eval_prompts=PAPER_PROMPTS,
)

PRESETS: dict[str, CMDPreset] = {p.name: p for p in (UCF101_64, WEBVID_512X1024, SD15_512, TINY)}


def miniature(preset: CMDPreset) -> CMDPreset:
    """A random-weight miniature of ``preset``: same space, condition, model classes and clip length (16
    frames for the paper's presets, so the 16-frame FVD protocols can score a trained miniature), tiny
    frames (16x16 RGB, or 4x4 / 4x8 SD latents) and tiny networks."""
    if preset.name == TINY.name:
        return preset
    f = 8 if preset.latent_mode else 1
    frames = preset.num_frames
    ae_hw = ((4, 8) if preset.width > preset.height else (4, 4)) if preset.latent_mode else (16, 16)
    return replace(
        preset,
        num_frames=frames, height=ae_hw[0] * f, width=ae_hw[1] * f,
        autoencoder=replace(preset.autoencoder, num_frames=frames, sample_size=ae_hw, **_TINY_AE),
        content=replace(preset.content, tiny=True),
        motion=replace(preset.motion, content_patch_size=4, **_TINY_MOTION),
        steps=4, motion_steps=4, tiny_text=True,
    )


# --- Building the pipeline -------------------------------------------------------------------------------


def build_pipeline(
    preset: CMDPreset, device: str = "cpu", dtype: torch.dtype = torch.float32, sd_checkpoint: str | None = None
) -> CMDPipeline:
    """``CMDPipeline`` with random weights for ``preset`` (full size, or a miniature's sizes).

    ``device="meta"`` allocates nothing (parameter and FLOP counting); the schedulers are always real.
    ``sd_checkpoint``: a local Stable Diffusion folder (diffusers layout) of the preset's ``sd_version``;
    its text encoder, tokenizer, VAE and UNet (the content model's initialisation, Eq. 7) are loaded
    offline instead of random weights; the CMD autoencoder and motion DiT stay random.
    """
    if sd_checkpoint is not None and (preset.sd_version is None or preset.content.tiny or preset.tiny_text):
        raise ValueError(f"{preset.name}: sd_checkpoint only applies to the full-size Stable Diffusion presets")
    ae_spec = preset.autoencoder
    on_meta = torch.device(device).type == "meta"

    cast = None if dtype == torch.float32 else dtype  # casting to float32 only makes diffusers warn
    # On the meta device every network is built first and cast at the end (_cast_meta): free, as nothing
    # is allocated, and without the SD builders' ModelMixin.to(dtype) and its diffusers-0.42 warning.
    sd_cast = None if on_meta else cast

    def make(factory):
        if on_meta:
            with torch.device("meta"):
                return factory()
        model = factory().to(device=device)
        return model if cast is None else model.to(dtype=cast)

    autoencoder = make(lambda: CMDAutoencoder(**ae_spec.kwargs()))
    text_encoder = vae = None
    text_dim = None
    version = preset.sd_version or "1.5"
    if preset.conditioning == "text":
        text_encoder = build_text_encoder(version, sd_checkpoint, device=device, dtype=sd_cast,
                                          tiny=preset.tiny_text)
        text_dim = int(text_encoder.config.hidden_size)
    if preset.latent_mode:
        vae = build_vae(preset.sd_version, sd_checkpoint, device=device, dtype=sd_cast, tiny=preset.tiny_text)

    content_hw = ae_spec.sample_size
    if preset.content.kind == "unet":
        config = tiny_unet_config() if preset.content.tiny else sd_unet_config(version)
        config.update(in_channels=ae_spec.in_channels, out_channels=ae_spec.in_channels,
                      sample_size=content_hw[0])
        if preset.content.tiny:  # smaller than content.py's miniature: CPU tests sample in about a second
            config.update(block_out_channels=[16, 32], norm_num_groups=8, attention_head_dim=8)
            if text_dim is not None:
                config["cross_attention_dim"] = text_dim
        if sd_checkpoint is not None:
            content_model = build_content_unet(version, sd_checkpoint, device=device, dtype=cast)
        else:
            content_model = make(lambda: UNet2DConditionModel.from_config(config))
    elif preset.content.kind == "dit":
        content_model = build_content_dit(
            preset.content.dit_size, preset.num_classes, device=device, dtype=sd_cast, tiny=preset.content.tiny,
            in_channels=ae_spec.in_channels,
            sample_size=content_hw[0] if content_hw[0] == content_hw[1] else list(content_hw),
        )
    else:
        raise ValueError(f"{preset.name}: unknown content model kind {preset.content.kind!r}; allowed 'unet', 'dit'")

    motion_kwargs = {
        **preset.motion.dims(),
        "motion_channels": ae_spec.motion_channels, "num_frames": ae_spec.num_frames,
        "motion_width": ae_spec.motion_width, "content_channels": ae_spec.in_channels,
        "content_size": list(content_hw), "content_patch_size": preset.motion.content_patch_size,
        "num_classes": preset.num_classes, "text_embed_dim": text_dim, "learn_sigma": False,
    }
    motion_model = make(lambda: MotionDiT(**motion_kwargs))
    if on_meta and cast is not None:
        autoencoder, content_model, motion_model = (_cast_meta(m, cast) for m in (autoencoder, content_model,
                                                                                  motion_model))
        text_encoder, vae = (None if m is None else _cast_meta(m, cast) for m in (text_encoder, vae))
    pipe = CMDPipeline(
        autoencoder=autoencoder.eval(),
        content_model=content_model.eval(),
        motion_model=motion_model.eval(),
        content_scheduler=DDIMScheduler.from_config(SCHEDULES[preset.content_schedule]),
        motion_scheduler=DDIMScheduler.from_config(SCHEDULES[preset.motion_schedule]),
        text_encoder=text_encoder.eval() if text_encoder is not None else None,
        tokenizer=_sd_tokenizer(sd_checkpoint) if sd_checkpoint is not None else None,
        vae=vae.eval() if vae is not None else None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _cast_meta(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """``model`` (on the meta device) with every floating parameter and buffer in ``dtype``.

    torch's own ``Module.to``: diffusers' ``ModelMixin.to`` (0.42) logs "There are modules in X that should
    be kept in float32: []" on every dtype cast, also when the class keeps none (its check reads
    ``(self._keep_in_fp32_modules or []) is not None``). A class that does keep modules in float32 goes
    through its own ``to`` and keeps its warning.
    """
    if getattr(model, "_keep_in_fp32_modules", None):
        return model.to(dtype=dtype)
    return torch.nn.Module.to(model, dtype=dtype)


def _sd_tokenizer(sd_checkpoint: str):
    """The SD folder's ``CLIPTokenizer`` (``tokenizer/``), offline."""
    from transformers import CLIPTokenizer

    try:
        return CLIPTokenizer.from_pretrained(sd_checkpoint, subfolder="tokenizer", local_files_only=True)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"no tokenizer/ in Stable Diffusion folder {sd_checkpoint!r}: {err}") from err


class CheckpointMismatchError(ValueError):
    """A checkpoint whose architecture does not match the preset it is loaded as."""


def check_pipeline_matches(pipe: CMDPipeline, preset: CMDPreset, source: str) -> None:
    """Raise :class:`CheckpointMismatchError` listing every config value that differs from ``preset``."""
    expected = build_pipeline(preset, device="meta")
    problems: list[str] = []
    for component in ("autoencoder", "content_model", "motion_model"):
        got, want = getattr(pipe, component), getattr(expected, component)
        if type(got) is not type(want):
            problems.append(f"{component} is {type(got).__name__}, the preset needs {type(want).__name__}")
            continue
        for key, value in want.config.items():
            if key.startswith("_"):
                continue
            have = got.config.get(key)
            norm = (lambda v: list(v) if isinstance(v, (list, tuple)) else v)  # noqa: E731
            if norm(have) != norm(value):
                problems.append(f"{component}.{key}={have!r} (preset {preset.name} needs {value!r})")
    frozen_keys = {"text_encoder": ("hidden_size", "num_hidden_layers"), "vae": ("latent_channels", "block_out_channels")}
    for component, keys in frozen_keys.items():
        got, want = getattr(pipe, component), getattr(expected, component)
        if (got is None) != (want is None):
            need = "needs" if want is not None else "has no"
            problems.append(f"{component}: the preset {need} one")
            continue
        for key in keys if got is not None else ():
            have, value = getattr(got.config, key, None), getattr(want.config, key, None)
            if (list(have) if isinstance(have, (list, tuple)) else have) != (
                    list(value) if isinstance(value, (list, tuple)) else value):
                problems.append(f"{component}.{key}={have!r} (preset {preset.name} needs {value!r})")
    if problems:
        raise CheckpointMismatchError(
            f"checkpoint {source} does not match preset {preset.name}: " + "; ".join(problems[:12])
            + (f" (and {len(problems) - 12} more)" if len(problems) > 12 else "")
        )


def load_pipeline(preset: CMDPreset, checkpoint: str, device: str, dtype: torch.dtype) -> CMDPipeline:
    """``CMDPipeline.from_pretrained(checkpoint)`` offline, checked against ``preset`` (full size or a
    miniature, as :func:`make_generator` chose)."""
    from pathlib import Path

    folder = Path(checkpoint)
    if (folder / "train_config.json").is_file() or (folder.parent.name == "final" and (folder / "config.json").is_file()):
        raise FileNotFoundError(
            f"{preset.name}: {checkpoint!r} is the output of one training stage, not a sampling pipeline; join the "
            "three stages first with `cmdbench train assemble --autoencoder DIR --content DIR --motion DIR --out OUT` "
            "and pass OUT"
        )
    try:
        pipe = CMDPipeline.from_pretrained(checkpoint, local_files_only=True, torch_dtype=dtype)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"{preset.name}: could not load CMD checkpoint {checkpoint!r} offline (a folder written by "
            f"CMDPipeline.save_pretrained is expected). Cause: {err}"
        ) from err
    check_pipeline_matches(pipe, preset, repr(checkpoint))
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


# --- The VideoGenerator -----------------------------------------------------------------------------------


class CMDGenerator:
    """A CMD preset behind cmdbench's ``VideoGenerator`` protocol (and ``SupportsCost``).

    ``guidance_scale`` is Algorithm 1's ``w`` (``guidance_form = "paper"``). ``motion_steps`` (default
    ``None``: :meth:`motion_steps_for` decides) fixes the motion stage's DDIM steps for ``sample`` and
    ``cost_stages``.
    """

    guidance_form = "paper"

    def __init__(self, preset: CMDPreset, pipeline: CMDPipeline, spec: GeneratorSpec):
        self.preset = preset
        self.pipeline = pipeline
        self.spec = spec
        self.name = preset.name
        self.conditioning = preset.conditioning
        self.num_classes = preset.num_classes
        self.defaults = preset.defaults
        self.eval_prompts = list(preset.eval_prompts)
        self.motion_steps: int | None = None
        self._stage_hook: StageHook | None = None

    @property
    def stage_hook(self) -> StageHook | None:
        return self._stage_hook

    @stage_hook.setter
    def stage_hook(self, hook: StageHook | None) -> None:
        self._stage_hook = hook
        self.pipeline.stage_hook = hook

    def motion_steps_for(self, steps: int) -> int:
        """Motion-stage DDIM steps of ``sample(steps=...)``: ``self.motion_steps`` when set; else the preset's
        ``motion_steps`` (App. B.4: 100) when ``steps`` is the preset's ``steps`` (50); else ``steps``."""
        if self.motion_steps is not None:
            return int(self.motion_steps)
        return self.preset.motion_steps if steps == self.preset.steps else steps

    def check_setting(self, num_frames: int, height: int, width: int) -> None:
        """:class:`UnsupportedSettingError` unless ``num_frames`` is the preset's and the frame size a multiple
        of the pipeline's ``size_multiple`` (e.g. 64 for ``cmd-webvid-512x1024``; see ``CMDPipeline``)."""
        try:
            self.pipeline.check_setting(num_frames, height, width)
        except UnsupportedSettingError as err:
            raise UnsupportedSettingError(f"{self.name}: {err}") from None

    def sample(
        self,
        *,
        prompts: Sequence[str] | None = None,
        labels: Sequence[int] | None = None,
        num_frames: int,
        height: int,
        width: int,
        steps: int,
        generator: Sequence[torch.Generator],
        guidance_scale: float | None = None,
    ) -> torch.Tensor:
        """uint8 ``(B, L, 3, H, W)`` on the CPU; sample ``i`` depends only on ``generator[i]`` and its condition."""
        generator = list(generator)
        check_conditioning(
            self.name, self.conditioning, len(generator), prompts=prompts, labels=labels, num_classes=self.num_classes
        )
        self.check_setting(num_frames, height, width)
        if steps < 1:
            raise UnsupportedSettingError(f"{self.name}: steps={steps}; allowed: a positive integer")
        w = self.defaults.guidance_scale if guidance_scale is None else float(guidance_scale)
        out = self.pipeline(
            prompt=list(prompts) if prompts is not None else None,
            class_labels=list(labels) if labels is not None else None,
            num_frames=num_frames, height=height, width=width,
            content_steps=steps, motion_steps=self.motion_steps_for(steps),
            guidance_scale=w, guidance_form="paper", generator=generator, output_type="uint8",
        )
        return out.frames

    # -- cost -----------------------------------------------------------------------------------------
    def cost_stages(self, *, num_frames: int, height: int, width: int, steps: int) -> list[CostStage]:
        """The networks one video runs (batch 1 per pass; guidance doubles the denoiser passes).

        Table 9's reading of ``steps``: both stages run ``steps`` calls (the motion stage
        ``self.motion_steps`` when the caller set it), unlike ``sample``'s App. B.4 default (see the module
        docstring).

        ``decoder`` is CMD's own autoencoder decoder, counted in the paper convention: Table 9 excludes
        only the *SD* decoder, and its 50- vs 100-step totals (46.8 / 92.1 TFLOPs) leave a fixed ~1.5
        TMAC that matches this decoder (cmd-paper.md §7). Text encoder and SD VAE decoder are excluded.

        ``vae_decoder`` describes the call :meth:`CMDPipeline.decode` really makes: frame ``i`` of every
        video, ``(b, 4, h, w)`` latents, ``num_frames`` calls (same FLOP total as one call on every frame;
        memory of one frame's decode, not of the whole clip's).
        """
        self.check_setting(num_frames, height, width)
        pipe = self.pipeline
        content_shape, motion_shape = pipe.latent_shapes(num_frames, height, width)
        text_len = 77

        def where(module):
            p = next(module.parameters())
            return {"device": p.device, "dtype": p.dtype}

        def cond_inputs(module, b):
            if self.conditioning == "text":
                dim = int(pipe.text_encoder.config.hidden_size)
                return {"encoder_hidden_states": torch.zeros(b, text_len, dim, **where(module))}
            return {"class_labels": torch.zeros(b, dtype=torch.long, device=where(module)["device"])}

        def timestep(module, b):
            return torch.full((b,), 999, dtype=torch.long, device=where(module)["device"])

        stages: list[CostStage] = []
        if self.conditioning == "text":
            te = pipe.text_encoder
            stages.append(CostStage(
                "text_encoder", te,
                lambda b: {"input_ids": torch.zeros(b, text_len, dtype=torch.long, device=where(te)["device"])},
                calls=1, guidance_passes=2, paper_convention=False,
            ))
        cm = pipe.content_model
        sample_key = "sample" if isinstance(cm, UNet2DConditionModel) else "hidden_states"
        stages.append(CostStage(
            "content", cm,
            lambda b: {sample_key: torch.zeros(b, *content_shape, **where(cm)), "timestep": timestep(cm, b),
                       **cond_inputs(cm, b)},
            calls=steps, guidance_passes=2, paper_convention=True,
        ))
        mm = pipe.motion_model
        stages.append(CostStage(
            "motion", mm,
            lambda b: {"sample": torch.zeros(b, *motion_shape, **where(mm)), "timestep": timestep(mm, b),
                       "content": torch.zeros(b, *content_shape, **where(mm)), **cond_inputs(mm, b)},
            calls=self.motion_steps or steps, guidance_passes=2, paper_convention=True,
        ))
        ae = pipe.autoencoder
        stages.append(CostStage(
            "decoder", ae,
            lambda b: {"content": torch.zeros(b, *content_shape, **where(ae)),
                       "motion": torch.zeros(b, *motion_shape, **where(ae))},
            calls=1, guidance_passes=1, paper_convention=True, forward=_ae_decode,
        ))
        if pipe.vae is not None:
            vae = pipe.vae
            stages.append(CostStage(  # CMDPipeline.decode: one frame of every video per call, num_frames calls
                "vae_decoder", vae,
                lambda b: {"latents": torch.zeros(b, *content_shape, **where(vae))},
                calls=num_frames, guidance_passes=1, paper_convention=False, forward=_vae_decode,
            ))
        return stages

    def training_cost_stages(self, *, num_frames: int, height: int, width: int) -> list[CostStage]:
        """The networks one training step runs per clip (Table 8), one forward each (calls=1, no guidance).

        ``autoencoder``: encoder then decoder on a ``(B, C, L, h, w)`` clip (pixels or SD latents; the SD
        VAE encoder that makes latents is not CMD's and is excluded, as the SD decoder is in Table 9);
        ``content``: one content-model forward on a content frame; ``motion``: one motion-DiT forward.
        The text encoder (frozen) is not counted.
        """
        stages = {s.name: s for s in self.cost_stages(num_frames=num_frames, height=height, width=width, steps=1)}
        ae = self.pipeline.autoencoder
        (c, h, w), _ = self.pipeline.latent_shapes(num_frames, height, width)
        p = next(ae.parameters())
        autoencoder = CostStage(
            "autoencoder", ae,
            lambda b: {"video": torch.zeros(b, c, num_frames, h, w, device=p.device, dtype=p.dtype)},
            calls=1, guidance_passes=1, paper_convention=True, forward=_ae_encode_decode,
        )
        return [autoencoder] + [
            replace(stages[name], calls=1, guidance_passes=1, paper_convention=True) for name in ("content", "motion")
        ]


def _ae_decode(module, *, content, motion):
    return module.decode(content, motion)


def _ae_encode_decode(module, *, video):
    content, motion = module.encode(video)
    return module.decode(content, motion)


def _vae_decode(module, *, latents):
    return module.decode(latents, return_dict=False)[0]


def parameter_counts(pipe: CMDPipeline) -> dict[str, int]:
    """Parameters per component (works on the meta device) and their ``"total"``."""
    counts = {}
    for name in ("text_encoder", "content_model", "motion_model", "autoencoder", "vae"):
        module = getattr(pipe, name)
        if module is not None:
            counts[name] = sum(p.numel() for p in module.parameters())
    counts["total"] = sum(counts.values())
    return counts


def make_generator(preset: CMDPreset, spec: GeneratorSpec) -> CMDGenerator:
    """Factory body shared by every preset (see the module docstring for tiny / None / path).

    A checkpoint folder written by ``cmdbench train assemble`` names its preset and whether it holds the
    trained miniature (``cmdbench_assembly.json``); a miniature-trained folder loads as ``miniature(preset)``,
    with or without ``tiny=True``. ``tiny=True`` with any other folder checks it against the miniature.
    """
    if spec.checkpoint is not None:
        from cmdbench.cmd.assemble import read_assembly

        meta = read_assembly(spec.checkpoint)
        trained_tiny = meta is not None and (bool(meta.get("tiny")) or meta.get("preset") == TINY.name)
        if meta is not None and meta.get("preset") != preset.name:
            raise CheckpointMismatchError(
                f"{preset.name}: checkpoint {spec.checkpoint!r} was assembled from {meta.get('preset')} runs; "
                f"load it as {meta.get('preset')}"
            )
        if spec.tiny and meta is not None and not trained_tiny:
            raise CheckpointMismatchError(
                f"{preset.name}: checkpoint {spec.checkpoint!r} holds full-size weights; drop tiny / --tiny"
            )
        chosen = miniature(preset) if spec.tiny or trained_tiny else preset
        pipe = load_pipeline(chosen, spec.checkpoint, spec.device, spec.torch_dtype)
    elif spec.tiny:
        chosen = miniature(preset)
        with torch.random.fork_rng(devices=[]):  # same miniature weights in every process; global RNG untouched
            torch.manual_seed(0)
            pipe = build_pipeline(chosen, spec.device, spec.torch_dtype)
    else:
        chosen = preset
        pipe = build_pipeline(chosen, spec.device, spec.torch_dtype)
    return CMDGenerator(chosen, pipe, spec)


def _register(preset: CMDPreset) -> None:
    GENERATORS.register(preset.name, lambda spec: make_generator(preset, spec), description=preset.description)


for _preset in PRESETS.values():
    _register(_preset)
