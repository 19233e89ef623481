"""The ``VideoGenerator.sample`` entry every baseline shares: inference mode, one generator per sample,
conditioning checked against the generator's kind; the sampling itself is the subclass's :meth:`generate`."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cmdbench.interfaces import Conditioning, UnsupportedSettingError, check_conditioning


class CheckedSampler:
    """Mixin implementing ``sample`` (the contract's signature) around :meth:`generate`.

    Subclasses set ``name``, ``conditioning``, ``num_classes`` and implement ``generate`` with the same
    keyword arguments; it runs after the checks, under ``torch.inference_mode``.
    """

    name: str
    conditioning: Conditioning
    num_classes: int | None

    @torch.inference_mode()
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
        """Sample ``len(generator)`` videos; returns uint8 ``(B, T, 3, H, W)`` on the CPU."""
        if len(generator) == 0:
            raise ValueError(f"{self.name}: pass at least one torch.Generator (one per sample)")
        check_conditioning(self.name, self.conditioning, len(generator), prompts=prompts, labels=labels,
                           num_classes=self.num_classes)
        return self.generate(prompts=prompts, labels=labels, num_frames=num_frames, height=height, width=width,
                             steps=steps, generator=generator, guidance_scale=guidance_scale)

    def generate(self, *, prompts: Sequence[str] | None, labels: Sequence[int] | None, num_frames: int,
                 height: int, width: int, steps: int, generator: Sequence[torch.Generator],
                 guidance_scale: float | None) -> torch.Tensor:
        """The sampling after the checks of :meth:`sample` (same arguments and result)."""
        raise NotImplementedError


def check_latent_setting(name: str, *, num_frames: int, height: int, width: int, steps: int,
                         guidance: float | None, multiple: int, multiple_reason: str, train_steps: int,
                         guidance_note: str = "") -> None:
    """The setting checks every latent text-to-video sampler shares: positive integers, frame sides in
    multiples of ``multiple`` (``multiple_reason`` says why), 1..``train_steps`` steps, guidance None or >= 1
    (diffusers' scale). Raises :class:`UnsupportedSettingError` naming the argument and what is allowed."""
    for what, v in (("num_frames", num_frames), ("height", height), ("width", width), ("steps", steps)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise UnsupportedSettingError(f"{name}: {what}={v!r}; allowed: a positive integer")
    for what, v in (("height", height), ("width", width)):
        if v % multiple:
            raise UnsupportedSettingError(
                f"{name}: {what}={v} is not a multiple of {multiple}; allowed multiples of {multiple} ({multiple_reason})"
            )
    if steps > train_steps:
        raise UnsupportedSettingError(f"{name}: steps={steps}; allowed 1..{train_steps}")
    if guidance is not None and guidance < 1.0:
        raise UnsupportedSettingError(f"{name}: guidance_scale={guidance}; allowed None{guidance_note} or >= 1.0"
                                      + (" (diffusers' scale; 1 disables guidance)" if guidance_note else ""))
