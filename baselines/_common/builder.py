"""One builder shape for the text-to-video latent baselines.

A baseline is a :class:`Recipe`: its published configuration (text length, scheduler, defaults,
prompts), how to build its networks with random weights, and how to load them from a checkpoint.
:func:`build_text_video` runs the sequence every baseline shares: random weights under a fixed seed or
a checkpoint, placement on the device in the compute dtype, and the generator's constructor call.
:func:`load_diffusers_checkpoint` is the loading sequence of a diffusers-layout checkpoint (directory
or hub id), which every recipe uses directly or for the diffusers branch of its own format.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler

from baselines._common.loading import has_subfolder, load_component, place, require_subfolders
from baselines._common.text_video import TextToVideoLatentGenerator, Tokenize, seeded_init
from cmdbench.interfaces import GeneratorSpec, SamplingDefaults
from cmdbench.registry import GENERATORS


@dataclass
class Networks:
    """What a recipe builds or loads.

    text_encoder: a module, or a zero-argument factory called on first use (a huge encoder).
    tokenize: prompts -> token ids for ``text_encoder``; tokenizer: the HF tokenizer object, if loaded.
    scheduler_config: the checkpoint's ``scheduler/`` config, if it has one (else the recipe's).
    """

    denoiser: torch.nn.Module
    vae: AutoencoderKL
    text_encoder: torch.nn.Module | Callable[[], torch.nn.Module]
    tokenize: Tokenize
    tokenizer: Any = None
    scheduler_config: dict[str, Any] | None = None


@dataclass(frozen=True)
class Part:
    """One network of a diffusers-layout checkpoint: its subfolder and the class that loads it."""

    subfolder: str
    cls: Any


@dataclass(frozen=True)
class Recipe:
    """The configuration page of one text-to-video latent baseline.

    random_networks(tiny): the published architecture (or its miniature) with random weights; called
        under :func:`seeded_init`, so it only constructs.
    load_networks(spec): the networks of ``spec.checkpoint`` (e.g. :func:`load_diffusers_checkpoint`).
    spatial_multiple(denoiser): height and width must be multiples of this (pixels).
    """

    name: str
    generator: type[TextToVideoLatentGenerator]
    text_length: int
    scheduler_config: dict[str, Any]
    defaults: SamplingDefaults
    tiny_defaults: SamplingDefaults
    eval_prompts: tuple[str, ...]
    random_networks: Callable[[bool], Networks]
    load_networks: Callable[[GeneratorSpec], Networks]
    spatial_multiple: Callable[[torch.nn.Module], int]
    eta: float = 0.0
    weight_seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # further constructor arguments of ``generator``


def build_text_video(recipe: Recipe, spec: GeneratorSpec) -> TextToVideoLatentGenerator:
    """Random weights (``checkpoint=None``; the miniature when ``tiny``) or a real checkpoint, placed on
    ``spec.device`` in ``spec.dtype``, wrapped in ``recipe.generator``."""
    dtype = spec.torch_dtype
    if spec.checkpoint is None:
        with seeded_init(spec.device, recipe.weight_seed):
            nets = recipe.random_networks(spec.tiny)
    else:
        nets = recipe.load_networks(spec)
    text: Any = nets.text_encoder
    if isinstance(text, torch.nn.Module):
        text = place(text, spec.device, dtype)
    else:
        factory = text

        def text() -> torch.nn.Module:  # built on first use, then placed like the others
            return place(factory(), spec.device, dtype)

    return recipe.generator(
        name=recipe.name,
        denoiser=place(nets.denoiser, spec.device, dtype),
        vae=place(nets.vae, spec.device, dtype),
        text_encoder=text,
        tokenize=nets.tokenize,
        tokenizer=nets.tokenizer,
        text_length=recipe.text_length,
        scheduler_config=nets.scheduler_config or recipe.scheduler_config,
        defaults=recipe.tiny_defaults if spec.tiny else recipe.defaults,
        spatial_multiple=recipe.spatial_multiple(nets.denoiser),
        eval_prompts=recipe.eval_prompts,
        device=spec.device,
        dtype=dtype,
        eta=recipe.eta,
        **recipe.extra,
    )


def register(recipe: Recipe, description: str) -> Callable[[GeneratorSpec], TextToVideoLatentGenerator]:
    """Register ``recipe`` under its name; returns its ``build(spec)`` (the registered factory)."""

    def build(spec: GeneratorSpec) -> TextToVideoLatentGenerator:
        return build_text_video(recipe, spec)

    build.__doc__ = (f"{recipe.name}: random weights (``checkpoint=None``; the miniature when ``tiny``) or "
                     f"a real checkpoint (see {recipe.generator.__module__}).")
    GENERATORS.register(recipe.name, build, description=description)
    return build


def load_diffusers_checkpoint(
    name: str,
    checkpoint: str,
    dtype: torch.dtype,
    *,
    denoiser: Part | torch.nn.Module,
    text_encoder: Part,
    tokenizer: Part,
    tokenize: Callable[[Any], Tokenize],
    layout: str,
    fallback_tokenize: Tokenize | None = None,
    scheduler: bool = True,
    required: Sequence[str] = (),
) -> Networks:
    """The networks of a diffusers-layout checkpoint (directory or hub id) in ``dtype``.

    denoiser: a :class:`Part` to load, or a module the caller already built from the checkpoint.
    tokenize(tokenizer): the prompt tokenisation of the loaded tokenizer.
    fallback_tokenize: used when the checkpoint has no ``tokenizer/`` (else the tokenizer is required).
    scheduler: take the checkpoint's ``scheduler/`` config when it has one (``False``: the recipe's
        own, e.g. AnimateDiff on an SD 1.5 base whose scheduler is not AnimateDiff's).
    required: further subfolders a local directory must have.
    """
    subfolders = ["vae", text_encoder.subfolder, *required]
    if isinstance(denoiser, Part):
        subfolders.insert(0, denoiser.subfolder)
    if fallback_tokenize is None:
        subfolders.append(tokenizer.subfolder)
    require_subfolders(name, checkpoint, subfolders, layout)
    if isinstance(denoiser, Part):
        denoiser = load_component(name, denoiser.cls, checkpoint, denoiser.subfolder, dtype=dtype)
    vae = load_component(name, AutoencoderKL, checkpoint, "vae", dtype=dtype)
    text = load_component(name, text_encoder.cls, checkpoint, text_encoder.subfolder, dtype=dtype)
    scheduler_config = None
    if scheduler and has_subfolder(checkpoint, "scheduler"):
        scheduler_config = dict(load_component(name, DDIMScheduler, checkpoint, "scheduler").config)
    hf_tok = None
    if fallback_tokenize is None or has_subfolder(checkpoint, tokenizer.subfolder):
        hf_tok = load_component(name, tokenizer.cls, checkpoint, tokenizer.subfolder)
    prompts_to_ids = tokenize(hf_tok) if hf_tok is not None else fallback_tokenize
    assert prompts_to_ids is not None
    return Networks(denoiser=denoiser, vae=vae, text_encoder=text, tokenize=prompts_to_ids, tokenizer=hf_tok,
                    scheduler_config=scheduler_config)
