"""Per-sample seeding: ``"0-2047"`` -> one CPU ``torch.Generator`` per sample.

Noise for sample ``i`` is drawn from its own generator on the CPU and only then moved to the device,
so a sample's noise does not depend on its batch, its batch size, the device or the world size.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

_PART = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


class SeedRangeError(ValueError):
    """A malformed seed range."""


def parse_seeds(text: str | int | Sequence[int]) -> tuple[int, ...]:
    """Parse ``"0-2047"``, ``"0,3,5-9"`` or ``7`` into a tuple of distinct seeds, in order.

    Ranges are inclusive. Negative numbers, reversed ranges, empty parts and repeated seeds are errors
    (a repeated seed would silently repeat a sample).
    """
    if isinstance(text, int):
        seeds: list[int] = [text]
    elif isinstance(text, str):
        if not text.strip():
            raise SeedRangeError("empty seed range; write e.g. '0-2047' or '0,3,5-9'")
        seeds = []
        for part in text.split(","):
            m = _PART.match(part)
            if not m:
                raise SeedRangeError(
                    f"malformed seed range part {part!r} in {text!r}; allowed: N or A-B (inclusive, A<=B), "
                    "comma-separated non-negative integers, e.g. '0-2047' or '0,3,5-9'"
                )
            a = int(m.group(1))
            b = int(m.group(2)) if m.group(2) is not None else a
            if b < a:
                raise SeedRangeError(f"reversed seed range {part.strip()!r} in {text!r}; write {b}-{a}")
            seeds.extend(range(a, b + 1))
    else:
        seeds = [int(s) for s in text]
    if any(s < 0 for s in seeds):
        raise SeedRangeError(f"seeds must be non-negative; got {min(seeds)}")
    if len(set(seeds)) != len(seeds):
        dup = sorted({s for s in seeds if seeds.count(s) > 1})[:5]
        raise SeedRangeError(f"seed range {text!r} repeats seeds {dup}; each sample needs its own seed")
    if not seeds:
        raise SeedRangeError(f"seed range {text!r} is empty")
    return tuple(seeds)


def format_seeds(seeds: Sequence[int]) -> str:
    """Inverse of :func:`parse_seeds`: ``[0,1,2,5]`` -> ``"0-2,5"``."""
    out: list[str] = []
    seeds = list(seeds)
    i = 0
    while i < len(seeds):
        j = i
        while j + 1 < len(seeds) and seeds[j + 1] == seeds[j] + 1:
            j += 1
        out.append(str(seeds[i]) if i == j else f"{seeds[i]}-{seeds[j]}")
        i = j + 1
    return ",".join(out)


def make_generators(seeds: Sequence[int] | str) -> list[torch.Generator]:
    """One CPU ``torch.Generator`` per seed, seeded with that seed."""
    if isinstance(seeds, str):
        seeds = parse_seeds(seeds)
    return [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]


def randn_per_sample(
    generators: Sequence[torch.Generator],
    shape: Sequence[int],
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Stack ``len(generators)`` standard-normal tensors of ``shape``, each from its own generator.

    Drawn in float32 on the CPU, then moved: returns ``(B, *shape)`` on ``device`` in ``dtype``.
    """
    if len(generators) == 0:
        raise ValueError("randn_per_sample needs at least one generator")
    noise = torch.stack([torch.randn(tuple(shape), generator=g, dtype=torch.float32) for g in generators])
    return noise.to(device=device, dtype=dtype)
