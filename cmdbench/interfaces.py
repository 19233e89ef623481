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
    """A generator cannot take the requested frames, size, steps or guidance.

    ``sample()`` raises it **before any work** for a setting the generator cannot run: a non-positive or
    non-integer ``num_frames``/``height``/``width``/``steps``, a size that is not a multiple of what the
    networks downsample by, a frame count other than the ones a position table holds, more steps than
    the training schedule, ``guidance_scale`` on an unconditional generator, ... The message names the
    argument (e.g. ``"height=30 is not a multiple of 8"``) and what is allowed. The harness uses it to
    tell "cannot run here" from a crash (the contract test expects it for ``num_frames=0``, ``height=0``,
    ``width=0``, ``steps=0`` and, for unconditional generators, ``guidance_scale=7.5``), and the contract
    test's own setting probe falls back to the defaults when a shortened run raises it.
    """


class DeviceUnavailableError(ValueError):
    """A device string that is malformed or names a device this machine does not have."""


_ALWAYS_AVAILABLE = ("cpu", "meta")


def check_device(device: str | torch.device, *, what: str = "device") -> torch.device:
    """``device`` as a ``torch.device`` when this machine has it, else one clear :class:`DeviceUnavailableError`.

    Malformed strings, accelerators torch was built without or cannot see (``cuda`` on a CPU-only
    build or machine, ``mps`` off Apple silicon) and out-of-range indices (``cuda:3`` with two GPUs)
    are refused with what is available. ``what`` names the setting in the message (``"--device"``
    from the command line, ``"GeneratorSpec.device"``, ...). Commands call this before building anything.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise DeviceUnavailableError(
            f"{what}={device!r} is not a device; allowed e.g. cpu, cuda, cuda:1, mps, meta ({err})"
        ) from None
    if dev.type in _ALWAYS_AVAILABLE:
        return dev
    available = available_devices()
    backend = getattr(torch, dev.type, None)
    is_available = getattr(backend, "is_available", None)
    if dev.type == "mps":
        is_available = torch.backends.mps.is_available
    if not callable(is_available) or not is_available():
        why = ""
        if dev.type == "cuda":
            why = (" (this torch build has no CUDA support)" if torch.version.cuda is None
                   else " (torch was built with CUDA, but no GPU is visible: check CUDA_VISIBLE_DEVICES and the driver)")
        raise DeviceUnavailableError(
            f"{what}={device!r}: {dev.type} is not available on this machine{why}; available: {', '.join(available)}"
        )
    count = getattr(backend, "device_count", None)
    if dev.index is not None and callable(count) and dev.index >= count():
        raise DeviceUnavailableError(
            f"{what}={device!r}: this machine has {count()} {dev.type} device(s) (indices 0..{count() - 1}); "
            f"available: {', '.join(available)}"
        )
    return dev


def available_devices() -> list[str]:
    """Device strings usable here: ``cpu``, ``cuda:0`` .. ``cuda:N-1`` when CUDA is visible, ``mps``, ``meta``."""
    out = ["cpu"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        out.append("mps")
    return out + ["meta"]


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
        check_device(self.device, what="device")

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

    Optional attributes the harness uses when present:
        eval_prompts: ``Sequence[str]``, text generators only: the prompts ``cmdbench bench`` /
            ``evaluate --generator`` cycle through (sample ``i`` gets ``eval_prompts[i % len]``) when the
            user passes none, and the contract test's prompts. Without it a text generator needs
            ``--prompts``. Keep it fixed (a tuple): its order is part of what a result row records.
        stage_hook: ``StageHook | None`` (start ``None``), set by the harness; wrap each stage of
            ``sample`` in :func:`stage` so it is timed apart.
        cost_stages(num_frames=, height=, width=, steps=) -> list[CostStage]: the networks, for FLOP
            counting (:class:`SupportsCost`).

    ``sample`` raises :class:`ConditioningError` for missing or superfluous prompts/labels
    (:func:`check_conditioning` does it) and :class:`UnsupportedSettingError` for settings it cannot run.
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


@runtime_checkable
class PairedVideoMetric(Protocol):
    """A metric of video pairs (a reconstruction or prediction and its original): PSNR, SSIM, LPIPS.

    ``paired`` is ``True``; ``update`` takes the originals as ``references`` (uint8, the same shape as
    ``videos``; video ``i`` is compared with reference ``i``, frame by frame). A harness that has no
    originals (sampling from a generator) cannot compute it and must say so; one that scores two folders
    pairs their files (e.g. by relative path) and names every unpaired file.
    """

    name: str
    protocol: str
    unit: str
    higher_is_better: bool | None
    paired: bool

    def reset(self) -> None: ...

    def update(self, videos: torch.Tensor, prompts: Sequence[str] | None = None, *,
               references: torch.Tensor | None = None) -> None: ...

    def compute(self) -> MetricValue: ...


def is_paired(metric: object) -> bool:
    """Whether ``metric`` compares videos with references (:class:`PairedVideoMetric`)."""
    return bool(getattr(metric, "paired", False))


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
