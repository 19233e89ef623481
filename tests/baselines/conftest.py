"""Checks shared by the baseline test files, handed to them as the ``checks`` fixture."""

from __future__ import annotations

import types
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

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


def macs_excluding_sdpa(module: torch.nn.Module, inputs: dict[str, Any], forward=None) -> tuple[float, float]:
    """(MACs counted by FlopCounterMode with SDPA replaced, analytic SDPA score MACs) of one forward.

    SDPA is swapped for an empty result plus the formula ``Lq * Lk * (d_qk + d_v)`` per head, so the
    first number follows CMD's fvcore convention (attention-score products excluded).
    """
    score_macs = [0]
    original = F.scaled_dot_product_attention

    def counted_sdpa(q, k, v, *args, **kwargs):
        score_macs[0] += q.shape[:-2].numel() * q.shape[-2] * k.shape[-2] * (q.shape[-1] + v.shape[-1])
        return torch.empty(*q.shape[:-1], v.shape[-1], device=q.device, dtype=q.dtype)

    F.scaled_dot_product_attention = counted_sdpa
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            (forward or (lambda m, **kw: m(**kw)))(module, **inputs)
    finally:
        F.scaled_dot_product_attention = original
    return counter.get_total_flops() / 2, float(score_macs[0])


@pytest.fixture(scope="session")
def checks() -> types.SimpleNamespace:
    """The helpers above: ``checks.millions``, ``checks.sample_at_defaults``, ``checks.macs_excluding_sdpa``."""
    return types.SimpleNamespace(millions=millions, sample_at_defaults=sample_at_defaults,
                                 macs_excluding_sdpa=macs_excluding_sdpa)
