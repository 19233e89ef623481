"""The contracts every contestant (generator) and judge (metric) implements.

Video convention, everywhere in cmdbench: ``torch.uint8`` tensors of shape ``(B, T, 3, H, W)``, RGB,
values 0..255 (see :mod:`cmdbench.video`). Generators return that; metrics take that and own all
further preprocessing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import torch

Conditioning = Literal["class", "text", "none"]
DTYPES = ("float32", "float16", "bfloat16")


class ConditioningError(ValueError):
    """Prompts or labels are missing, superfluous or out of range for a generator."""


class UnsupportedSettingError(ValueError):
    """A generator cannot take the requested frames, size, steps or guidance."""


@dataclass(frozen=True)
class GeneratorSpec:
    """How to build a generator.

    checkpoint: ``None`` builds the full published architecture with random weights (for cost);
        a local path or hub id loads real weights (offline when the files are local).
    device: torch device string (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"meta"``).
    dtype: one of ``DTYPES``; the compute dtype of the networks.
    tiny: build a random-weight miniature of the same code path (CPU tests).
    """

    checkpoint: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    tiny: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"GeneratorSpec.dtype={self.dtype!r} is not allowed; use one of {DTYPES}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


@dataclass(frozen=True)
class SamplingDefaults:
    """A generator's natural sampling setting (the paper's, or the miniature's when ``tiny``)."""

    num_frames: int
    height: int
    width: int
    steps: int
    guidance_scale: float | None = None


@runtime_checkable
class VideoGenerator(Protocol):
    """A video generator behind one interface.

    Attributes:
        name: registry key, e.g. ``"cmd-webvid-512x1024"``.
        conditioning: ``"class"`` (takes ``labels``), ``"text"`` (takes ``prompts``) or ``"none"``.
        num_classes: number of class labels for class-conditional generators, else ``None``.
        defaults: the generator's natural :class:`SamplingDefaults`.
    """

    name: str
    conditioning: Conditioning
    num_classes: int | None
    defaults: SamplingDefaults

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
        """Sample ``len(generator)`` videos, one CPU ``torch.Generator`` per sample.

        Returns ``torch.uint8`` of shape ``(B, T, 3, H, W)`` on the CPU. Sample ``i`` depends only on
        ``generator[i]`` and its condition, never on the batch it was drawn in.
        """
        ...


@dataclass(frozen=True)
class MetricValue:
    """One computed metric.

    value: the raw value (CLIPSIM is a raw cosine, never x100).
    std: a spread (bootstrap or repeat-run standard deviation) or ``None``.
    n: number of samples that entered the value (generated videos; real ones are in ``extra``).
    protocol: name of the protocol the value was computed under (e.g. ``"stylegan-v"``).
    extra: anything else worth recording (counts, weight hashes, settings).
    """

    name: str
    value: float
    unit: str = ""
    higher_is_better: bool | None = None
    std: float | None = None
    n: int | None = None
    protocol: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class VideoMetric(Protocol):
    """A streaming metric over uint8 ``(B, T, 3, H, W)`` videos (torchmetrics style)."""

    name: str
    protocol: str
    unit: str
    higher_is_better: bool | None

    def reset(self) -> None: ...

    def update(self, videos: torch.Tensor, prompts: Sequence[str] | None = None) -> None: ...

    def compute(self) -> MetricValue: ...


def check_conditioning(
    gen_name: str,
    conditioning: Conditioning,
    batch: int,
    *,
    prompts: Sequence[str] | None,
    labels: Sequence[int] | None,
    num_classes: int | None = None,
) -> None:
    """Raise :class:`ConditioningError` when prompts/labels do not fit ``conditioning`` and ``batch``."""
    if conditioning == "text":
        if prompts is None:
            raise ConditioningError(f"{gen_name} is text-conditional: pass prompts= (one string per sample)")
        if labels is not None:
            raise ConditioningError(f"{gen_name} is text-conditional and takes no labels")
        if len(prompts) != batch:
            raise ConditioningError(
                f"{gen_name}: got {len(prompts)} prompts for {batch} generators; pass one prompt per sample"
            )
        bad = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
        if bad:
            raise ConditioningError(f"{gen_name}: prompts must be strings; entries {bad} are not")
    elif conditioning == "class":
        if labels is None:
            raise ConditioningError(f"{gen_name} is class-conditional: pass labels= (one int per sample)")
        if prompts is not None:
            raise ConditioningError(f"{gen_name} is class-conditional and takes no prompts")
        if len(labels) != batch:
            raise ConditioningError(
                f"{gen_name}: got {len(labels)} labels for {batch} generators; pass one label per sample"
            )
        if num_classes is not None:
            bad = [int(v) for v in labels if not 0 <= int(v) < num_classes]
            if bad:
                raise ConditioningError(
                    f"{gen_name}: labels {bad} are out of range; allowed 0..{num_classes - 1}"
                )
    else:
        if prompts is not None or labels is not None:
            raise ConditioningError(f"{gen_name} is unconditional: pass neither prompts nor labels")


# --- Cost accounting hooks (optional parts of a generator) --------------------------------------------

StageEvent = Literal["start", "end"]
StageHook = Callable[[str, StageEvent], None]
STAGE_NAMES = ("text_encoder", "content", "motion", "denoiser", "decoder", "vae_decoder")


@contextmanager
def stage(hook: StageHook | None, name: str) -> Iterator[None]:
    """Bracket one sampling stage so a cost harness can time it: ``with stage(self.stage_hook, "decoder"):``.

    Generators keep an attribute ``stage_hook: StageHook | None = None`` and wrap each stage of
    ``sample`` (text encoding, content/motion/denoiser loops, decoders) in this context manager.
    """
    if hook is not None:
        hook(name, "start")
    try:
        yield
    finally:
        if hook is not None:
            hook(name, "end")


@dataclass(frozen=True)
class CostStage:
    """One network a generator runs while sampling, described for FLOP counting.

    name: stage name (one of :data:`STAGE_NAMES` where it fits, e.g. ``"denoiser"``, ``"motion"``).
    module: the network, typically built on the meta device at full size.
    make_inputs: ``batch_size -> kwargs`` for ``module(**kwargs)`` (tensors on the module's device)
        reproducing one forward pass at the requested setting.
    calls: forward calls of this module per video at the requested setting, counting only the
        conditional pass (e.g. ``steps`` for a denoiser, 1 for a decoder).
    guidance_passes: passes per call when classifier-free guidance is on (2: conditional + unconditional).
    paper_convention: whether CMD's "TFLOPs" column counts this stage (denoisers yes; text encoder and
        SD VAE decoder no; CMD's own autoencoder decoder: see the efficiency module's notes).
    forward: optional callable ``(module, **kwargs)`` used instead of ``module(**kwargs)`` (e.g. for
        ``vae.decode``).
    """

    name: str
    module: torch.nn.Module
    make_inputs: Callable[[int], dict[str, Any]]
    calls: int
    guidance_passes: int = 1
    paper_convention: bool = True
    forward: Callable[..., Any] | None = None


@runtime_checkable
class SupportsCost(Protocol):
    """Generators that describe their networks for the cost harness (all built-in ones do)."""

    def cost_stages(self, *, num_frames: int, height: int, width: int, steps: int) -> list[CostStage]: ...
