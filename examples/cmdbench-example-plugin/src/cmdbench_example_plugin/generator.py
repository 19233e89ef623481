"""``example-pixel-ddim``: a class-conditional video DDIM in pixel space, written against cmdbench's contract.

It shows every part a cmdbench generator has, in the smallest honest form:

- ``name``, ``conditioning``, ``num_classes``, ``defaults`` (:class:`cmdbench.interfaces.SamplingDefaults`)
  and a ``stage_hook`` attribute;
- ``sample(...)`` that checks its conditions (:func:`cmdbench.interfaces.check_conditioning`) and settings
  (:class:`cmdbench.interfaces.UnsupportedSettingError` naming the argument), draws each sample's noise from
  its own ``torch.Generator`` (:func:`cmdbench.seeding.randn_per_sample`: a sample never depends on its
  batch), times its stages (:func:`cmdbench.interfaces.stage`) and returns uint8 ``(B, T, 3, H, W)``;
- ``cost_stages(...)`` describing the network for cmdbench's FLOP counter.

The denoiser is a three-layer ``Conv3d`` network with random weights (seed 0) conditioned on the class
label and the timestep through a per-channel bias; the sampler is diffusers' ``DDIMScheduler`` with
classifier-free guidance ``eps = eps_u + s (eps_c - eps_u)`` (the null label is ``num_classes``). It makes
noise-like videos: the point is the interface, not the pictures. A real plugin loads its trained weights
from ``spec.checkpoint``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers import DDIMScheduler
from diffusers.models.embeddings import get_timestep_embedding

from cmdbench.interfaces import (
    CostStage,
    GeneratorSpec,
    SamplingDefaults,
    StageHook,
    UnsupportedSettingError,
    check_conditioning,
    stage,
)
from cmdbench.seeding import randn_per_sample
from cmdbench.video import float_to_uint8

NAME = "example-pixel-ddim"
NUM_CLASSES = 10
WIDTH = 32  # hidden channels
TRAIN_STEPS = 1000


class ConvDenoiser(torch.nn.Module):
    """eps-prediction: ``x`` (B, 3, T, H, W), ``timestep`` scalar or (B,), ``labels`` (B,) -> (B, 3, T, H, W)."""

    def __init__(self, num_classes: int = NUM_CLASSES, width: int = WIDTH) -> None:
        super().__init__()
        self.width = width
        self.label_embedding = torch.nn.Embedding(num_classes + 1, width)  # last row: the null label
        self.time_projection = torch.nn.Linear(width, width)
        self.conv_in = torch.nn.Conv3d(3, width, 3, padding=1)
        self.conv_mid = torch.nn.Conv3d(width, width, 3, padding=1)
        self.conv_out = torch.nn.Conv3d(width, 3, 3, padding=1)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        t = timestep.reshape(-1).expand(x.shape[0]).to(x.device)
        bias = self.label_embedding(labels) + self.time_projection(get_timestep_embedding(t, self.width))  # (B, C)
        h = torch.nn.functional.silu(self.conv_in(x) + bias[:, :, None, None, None])  # (B, C, T, H, W)
        h = torch.nn.functional.silu(self.conv_mid(h))  # (B, C, T, H, W)
        return self.conv_out(h)  # (B, 3, T, H, W)


class ExamplePixelDDIM:
    """The generator (see the module docstring)."""

    name = NAME
    conditioning = "class"
    num_classes = NUM_CLASSES
    defaults = SamplingDefaults(num_frames=8, height=16, width=16, steps=4, guidance_scale=2.0)

    def __init__(self, denoiser: ConvDenoiser, device: str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        self.denoiser = denoiser.eval()
        self.device = torch.device(device)
        self.dtype = dtype
        self.stage_hook: StageHook | None = None
        self.scheduler_config = dict(DDIMScheduler(num_train_timesteps=TRAIN_STEPS, clip_sample=True).config)

    def _check_settings(self, num_frames: int, height: int, width: int, steps: int, guidance: float | None) -> None:
        for what, v in (("num_frames", num_frames), ("height", height), ("width", width), ("steps", steps)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise UnsupportedSettingError(f"{self.name}: {what}={v!r}; allowed: a positive integer")
        if steps > TRAIN_STEPS:
            raise UnsupportedSettingError(f"{self.name}: steps={steps}; allowed 1..{TRAIN_STEPS}")
        if guidance is not None and guidance < 1.0:
            raise UnsupportedSettingError(f"{self.name}: guidance_scale={guidance}; allowed None or >= 1.0")

    @torch.inference_mode()
    def sample(self, *, prompts: Sequence[str] | None = None, labels: Sequence[int] | None = None,
               num_frames: int, height: int, width: int, steps: int, generator: Sequence[torch.Generator],
               guidance_scale: float | None = None) -> torch.Tensor:
        """``len(generator)`` videos, uint8 ``(B, T, 3, H, W)`` on the CPU; sample i depends on generator[i] only."""
        batch = len(generator)
        if batch == 0:
            raise ValueError(f"{self.name}: pass at least one torch.Generator (one per sample)")
        check_conditioning(self.name, self.conditioning, batch, prompts=prompts, labels=labels,
                           num_classes=self.num_classes)
        self._check_settings(num_frames, height, width, steps, guidance_scale)
        use_cfg = guidance_scale is not None and guidance_scale != 1.0
        cond = torch.tensor(list(labels), dtype=torch.long, device=self.device)  # (B,)
        null = torch.full_like(cond, self.num_classes)
        scheduler = DDIMScheduler.from_config(self.scheduler_config)  # fresh: schedulers keep per-run state
        scheduler.set_timesteps(steps, device=self.device)
        x = randn_per_sample(generator, (3, num_frames, height, width), device=self.device, dtype=self.dtype)
        with stage(self.stage_hook, "denoiser"):
            for t in scheduler.timesteps:
                if use_cfg:
                    eps_u, eps_c = self.denoiser(torch.cat([x, x]), t, torch.cat([null, cond])).chunk(2)
                    eps = eps_u + guidance_scale * (eps_c - eps_u)
                else:
                    eps = self.denoiser(x, t, cond)
                x = scheduler.step(eps.float(), t, x.float(), eta=0.0).prev_sample.to(self.dtype)
        video = x.float().clamp(-1, 1).permute(0, 2, 1, 3, 4)  # (B, T, 3, H, W) in [-1, 1]
        return float_to_uint8(video.cpu(), value_range=(-1.0, 1.0))

    def cost_stages(self, *, num_frames: int, height: int, width: int, steps: int) -> list[CostStage]:
        """The denoiser: ``steps`` calls per video, two passes with guidance."""
        self._check_settings(num_frames, height, width, steps, None)
        p = next(self.denoiser.parameters())

        def inputs(batch: int) -> dict[str, Any]:
            return {"x": torch.zeros(batch, 3, num_frames, height, width, device=p.device, dtype=p.dtype),
                    "timestep": torch.tensor(999, device=p.device),
                    "labels": torch.zeros(batch, dtype=torch.long, device=p.device)}

        guided = self.defaults.guidance_scale not in (None, 1.0)
        return [CostStage("denoiser", self.denoiser, inputs, calls=steps, guidance_passes=2 if guided else 1)]


def build(spec: GeneratorSpec) -> ExamplePixelDDIM:
    """Random weights drawn from seed 0 (the global RNG is left alone); ``spec.checkpoint``: a state dict file."""
    with torch.random.fork_rng(devices=[]), torch.device(spec.device):
        torch.manual_seed(0)
        denoiser = ConvDenoiser()
    if spec.checkpoint is not None:
        denoiser.load_state_dict(torch.load(spec.checkpoint, map_location=spec.device, weights_only=True))
    return ExamplePixelDDIM(denoiser.to(spec.torch_dtype), device=spec.device, dtype=spec.torch_dtype)
