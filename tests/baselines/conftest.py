"""Checks shared by the baseline test files, handed to them as the ``checks`` fixture."""

from __future__ import annotations

import types
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


@pytest.fixture(scope="session")
def checks() -> types.SimpleNamespace:
    """The helpers above: ``checks.millions``, ``checks.sample_at_defaults``."""
    return types.SimpleNamespace(millions=millions, sample_at_defaults=sample_at_defaults)
