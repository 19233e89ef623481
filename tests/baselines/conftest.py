"""Checks shared by the baseline test files, handed to them as the ``checks`` fixture."""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

import pytest
import torch

from cmdbench.seeding import make_generators


def millions(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def sample_at_defaults(gen: Any, seeds: list[int], **overrides: Any) -> torch.Tensor:
    d = gen.defaults
    kw = {"num_frames": d.num_frames, "height": d.height, "width": d.width, "steps": d.steps,
          "guidance_scale": d.guidance_scale, **overrides}
    if gen.conditioning == "text":
        kw["prompts"] = [gen.eval_prompts[s % len(gen.eval_prompts)] for s in seeds]
    return gen.sample(**kw, generator=make_generators(seeds))


def clip_tokenizer(directory: Path, *, pad_token: str, max_length: int = 77) -> Any:
    """A Hugging Face ``CLIPTokenizer`` over the CLIP BPE vocabulary clip-anytorch ships (no download), saved
    in ``directory``; ``pad_token``: ``"<|endoftext|>"`` as openai/clip-vit-large-patch14 pads, or ``"!"``
    (id 0) as OpenCLIP pads."""
    import clip.clip
    from transformers import CLIPTokenizer

    bpe = clip.clip._tokenizer
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(bpe.encoder))
    merges = sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.get)
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    tokenizer = CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), pad_token=pad_token)
    tokenizer.model_max_length = max_length
    tokenizer.save_pretrained(directory)
    return tokenizer


@pytest.fixture(scope="session")
def checks() -> types.SimpleNamespace:
    """The helpers above: ``checks.millions``, ``checks.sample_at_defaults``, ``checks.clip_tokenizer``."""
    return types.SimpleNamespace(millions=millions, sample_at_defaults=sample_at_defaults,
                                 clip_tokenizer=clip_tokenizer)
