"""Temporal-sensitivity check: which judge sees which damage to real videos.

I3D-based FVD is largely insensitive to temporal distortions and strongly content-biased (Ge et al., CVPR
2024, "On the Content Bias in Fréchet Video Distance"); a judge that does not move when the frames are
shuffled cannot rank models by their motion. This check applies controlled distortions to real videos and
tables each judge's response:

============== ======================================================= ==================== ==================
distortion     what it does to a clip of T frames                      strength             default levels
============== ======================================================= ==================== ==================
shuffle        ``round(s·T)`` frames at seeded positions swap places   fraction of frames   0.25, 0.5, 1
               among themselves (every chosen frame moves when >= 2)
freeze         the last ``round(s·(T−1))`` frames repeat the frame     fraction of frames   0.25, 0.5, 1
               before them (s = 1: one still frame)
reverse        the centred ``round(s·T)`` frames play backwards        fraction of frames   0.25, 0.5, 1
               (s = 1: the whole clip; twice = the original)
jitter         frame t shows frame clip(t + d_t), d_t uniform in       max offset (frames)  1, 2, 4
               {−s..s} (seeded): stutter without losing content
blur           Gaussian blur, sigma s pixels, each frame (spatial)     sigma (px)           0.5, 1, 2
noise          additive Gaussian noise, sd s grey levels, rounded and  sd (of 0..255)       4, 16, 48
               clipped to uint8 (spatial)
============== ======================================================= ==================== ==================

Protocol (``split="half"``, default): the real videos are split by position, even indices the reference
``A``, odd ones the test set ``B``; each judge is computed between ``A`` and ``B`` (the noise floor, strength
0) and between ``A`` and every distorted ``B``. ``split="same"``: ``A = B`` (all videos; the floor of a
Fréchet judge is then 0). Per-video judges (motion magnitude) report the mean over the distorted ``B``.
The response of a judge is its change from the floor, relative to the floor: ``(v − v₀)/|v₀|``.

Judges come from :func:`cmdbench.bench.motion_strata.build_judges` (FVD family from per-clip features, one
extractor pass per distorted video; ``stand_in=True`` for random-weight extractors, labelled everywhere).
Records: metric = judge, generator = ``<real set>+<distortion>@<strength>`` (``+none@0`` for the floor),
distortion, strength, floor and split in ``notes``. :func:`render_sensitivity` draws the table and figure.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

RECORDS = Path("results/records/sensitivity")
TABLE = Path("results/tables/sensitivity")
FIGURE = Path("results/figures/sensitivity")
SPLITS = ("half", "same")
RANDOM_LABEL = "random-weight stand-in extractors: the responses show the harness, not the judges' real behaviour"


# --- distortions: uint8 (T, 3, H, W) -> uint8 (T, 3, H, W) ------------------------------------------------


def shuffle_frames(video: torch.Tensor, strength: float, rng: np.random.Generator) -> torch.Tensor:
    """``round(s·T)`` frames at seeded positions change places among themselves (no chosen frame stays)."""
    t = video.shape[0]
    k = min(t, round(strength * t))
    if k < 2:
        return video.clone()
    chosen = np.sort(rng.choice(t, k, replace=False))
    order = np.arange(t)
    perm = rng.permutation(k)
    fixed = perm == np.arange(k)
    if fixed.any():  # move the fixed points along a cycle among themselves (or into the next one)
        idx = np.flatnonzero(fixed)
        if len(idx) > 1:
            perm[idx] = perm[np.roll(idx, 1)]
        else:
            j = (idx[0] + 1) % k
            perm[idx[0]], perm[j] = perm[j], perm[idx[0]]
    order[chosen] = chosen[perm]
    return video[torch.from_numpy(order)]


def freeze(video: torch.Tensor, strength: float, rng: np.random.Generator | None = None) -> torch.Tensor:
    """The last ``round(s·(T−1))`` frames repeat the frame before them (the video stops moving there)."""
    t = video.shape[0]
    k = round(strength * (t - 1))
    out = video.clone()
    if k:
        out[t - k :] = video[t - k - 1]
    return out


def reverse(video: torch.Tensor, strength: float, rng: np.random.Generator | None = None) -> torch.Tensor:
    """The centred ``round(s·T)`` frames in reverse order; applying it twice gives the video back."""
    t = video.shape[0]
    k = round(strength * t)
    start = (t - k) // 2
    order = np.arange(t)
    order[start : start + k] = order[start : start + k][::-1]
    return video[torch.from_numpy(order.copy())]


def temporal_jitter(video: torch.Tensor, strength: float, rng: np.random.Generator) -> torch.Tensor:
    """Frame ``t`` shows frame ``clip(t + d_t, 0, T−1)``, ``d_t`` uniform in ``{−s..s}`` (``s`` whole frames)."""
    t = video.shape[0]
    r = int(round(strength))
    offsets = rng.integers(-r, r + 1, size=t)
    return video[torch.from_numpy(np.clip(np.arange(t) + offsets, 0, t - 1))]


def blur(video: torch.Tensor, strength: float, rng: np.random.Generator | None = None) -> torch.Tensor:
    """Gaussian blur of every frame, sigma ``s`` pixels, kernel ``2·ceil(3s)+1`` (torchvision)."""
    from torchvision.transforms.functional import gaussian_blur

    if strength <= 0:
        return video.clone()
    k = 2 * math.ceil(3 * strength) + 1
    return gaussian_blur(video, [k, k], [float(strength), float(strength)])


def noise(video: torch.Tensor, strength: float, rng: np.random.Generator) -> torch.Tensor:
    """Additive Gaussian noise of standard deviation ``s`` grey levels, rounded, clipped to 0..255."""
    n = torch.from_numpy(rng.standard_normal(tuple(video.shape)) * strength)
    return (video.double() + n).round().clamp(0, 255).to(torch.uint8)


@dataclass(frozen=True)
class Distortion:
    name: str
    apply: Callable[[torch.Tensor, float, np.random.Generator], torch.Tensor]
    levels: tuple[float, ...]
    strength: str  # what the strength measures
    temporal: bool


DISTORTIONS: dict[str, Distortion] = {d.name: d for d in (
    Distortion("shuffle", shuffle_frames, (0.25, 0.5, 1.0), "fraction of frames", True),
    Distortion("freeze", freeze, (0.25, 0.5, 1.0), "fraction of frames", True),
    Distortion("reverse", reverse, (0.25, 0.5, 1.0), "fraction of frames", True),
    Distortion("jitter", temporal_jitter, (1.0, 2.0, 4.0), "max offset [frames]", True),
    Distortion("blur", blur, (0.5, 1.0, 2.0), "sigma [px]", False),
    Distortion("noise", noise, (4.0, 16.0, 48.0), "sd [grey levels]", False),
)}


def distort(video: torch.Tensor, name: str, strength: float, *, seed: int = 0, index: int = 0) -> torch.Tensor:
    """One video under one distortion; the randomness is a pure function of (seed, video index, distortion,
    strength), so a rerun distorts identically."""
    if name not in DISTORTIONS:
        raise ValueError(f"unknown distortion {name!r}; allowed {sorted(DISTORTIONS)}")
    if strength < 0:
        raise ValueError(f"distortion strength {strength} < 0")
    key = [seed, index, sorted(DISTORTIONS).index(name), int(round(strength * 1000))]
    return DISTORTIONS[name].apply(video, strength, np.random.default_rng(key))


# --- the check --------------------------------------------------------------------------------------------


def split_sets(n: int, split: str = "half") -> tuple[np.ndarray, np.ndarray]:
    """Reference and test indices: even / odd positions (``half``) or all / all (``same``)."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}; allowed {SPLITS}")
    idx = np.arange(n)
    if split == "same":
        return idx, idx
    if n < 4:
        raise ValueError(f"split='half' needs at least 4 real videos (2 per side); got {n}")
    return idx[0::2], idx[1::2]


def sensitivity(real: Any, judges: Mapping[str, Any], *, levels: Mapping[str, Sequence[float]] | None = None,
                split: str = "half", seed: int = 0, progress: bool = False) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Rows (result-schema fields without run bookkeeping) of every judge under every distortion level, and
    ``{cell: why not}`` for values that could not be computed. ``real``: a
    :class:`~cmdbench.bench.motion_strata.VideoSet`; ``levels``: ``{distortion: strengths}`` (default: all
    of :data:`DISTORTIONS` at their default levels)."""
    from tqdm import tqdm

    from cmdbench.bench.motion_strata import judge_rows, tensor_set

    levels = {d.name: d.levels for d in DISTORTIONS.values()} if levels is None else dict(levels)
    unknown = sorted(set(levels) - set(DISTORTIONS))
    if unknown:
        raise ValueError(f"unknown distortions {unknown}; allowed {sorted(DISTORTIONS)}")
    ref_idx, test_idx = split_sets(len(real), split)
    ref_rows = judge_rows(judges, tensor_set([real[i] for i in ref_idx], "reference"))
    test_videos = [real[i] for i in test_idx]
    cases = [("none", 0.0)] + [(d, float(s)) for d, ss in levels.items() for s in ss]
    rows, skipped = [], {}
    floor: dict[str, float] = {}
    for dist, strength in tqdm(cases, desc="distortions", disable=not progress, leave=False):
        videos = test_videos if dist == "none" else [distort(v, dist, strength, seed=seed, index=int(i))
                                                       for v, i in zip(test_videos, test_idx, strict=True)]
        test_rows = judge_rows(judges, tensor_set(videos, f"{dist}@{strength:g}"))
        for name, judge in judges.items():
            try:
                mv = judge.value(ref_rows[name], test_rows[name])
            except Exception as err:
                skipped[f"{name} {dist}@{strength:g}"] = f"{type(err).__name__}: {str(err).splitlines()[0]}"
                continue
            if dist == "none":
                floor[name] = float(mv.value)
            base = floor.get(name)
            rel = (mv.value - base) / abs(base) if base not in (None, 0.0) else None
            d = DISTORTIONS.get(dist)
            rows.append({
                "metric": name, "value": float(mv.value), "std": mv.std, "n": len(test_idx), "unit": mv.unit,
                "higher_is_better": mv.higher_is_better, "protocol": mv.protocol, "extra": mv.extra,
                "generator_suffix": f"+{dist}@{strength:g}",
                "notes": {"distortion": dist, "strength": strength, "strength_unit": d.strength if d else "",
                          "temporal": d.temporal if d else None, "floor": base, "relative_change": rel,
                          "split": split, "n_reference": len(ref_idx), "n_test": len(test_idx), "seed": seed,
                          "stand_in": judge.stand_in},
            })
    return rows, skipped


def write_sensitivity_records(rows: list[dict[str, Any]], records: str | Path, run_id: str, *, real_name: str,
                              device: str = "cpu", context: dict[str, Any] | None = None,
                              meta: dict[str, Any] | None = None) -> Path:
    """Rows of :func:`sensitivity` as result-schema records (``generator`` = ``<real>+<distortion>@<s>``)."""
    from cmdbench.bench.motion_strata import write_records

    by_generator: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_generator.setdefault(real_name + r["generator_suffix"], []).append(r)
    path = None
    for generator, group in by_generator.items():
        path = write_records(group, records, run_id, generator=generator, dataset=real_name, device=device,
                             context=context)
    if meta is not None:
        from cmdbench.bench.results import RecordWriter

        RecordWriter(records, run_id).write_meta(meta)
    if path is None:
        raise ValueError("no sensitivity values to record (every judge failed or was skipped)")
    return path


# --- table and figure -------------------------------------------------------------------------------------


def render_sensitivity(records: Any, table: str | Path, figure: str | Path) -> list[Path]:
    """``<table>.md`` and ``<figure>.png/.pdf`` of the newest sensitivity run in ``records`` (a DataFrame)."""
    import pandas as pd

    from cmdbench.bench.plots import plt, save_figure
    from cmdbench.bench.tables import format_number, to_markdown, write_text_atomic

    if records.empty:
        raise ValueError("no sensitivity records to render")
    newest = records.sort_values("created_utc")["run_id"].iloc[-1]
    run = records[records["run_id"] == newest]
    cells = []
    for r in run.to_dict("records"):
        n = json.loads(r["notes"]) if isinstance(r["notes"], str) and r["notes"] else {}
        if "distortion" not in n:
            continue
        cells.append({**n, "judge": r["metric"], "value": r["value"], "protocol": r["protocol"]})
    if not cells:
        raise ValueError(f"run {newest} holds no sensitivity rows (notes without 'distortion')")
    frame = pd.DataFrame(cells)
    judges = list(dict.fromkeys(frame["judge"]))
    stand_in = {j: s for j, s in zip(frame["judge"], frame["stand_in"], strict=True) if isinstance(s, str) and s}
    label = {j: f"{j} [random: {stand_in[j]}]" if j in stand_in else j for j in judges}
    order = ["none", *[d for d in DISTORTIONS if d in set(frame["distortion"])]]
    table_rows = []
    for dist in order:
        sub = frame[frame["distortion"] == dist]
        for strength in sorted(set(sub["strength"])):
            row = {"distortion": dist, "strength": format_number(strength),
                   "unit": DISTORTIONS[dist].strength if dist in DISTORTIONS else "floor (undistorted)"}
            for j in judges:
                hit = sub[(sub["judge"] == j) & (sub["strength"] == strength)]
                if hit.empty:
                    row[label[j]] = "n/a"
                    continue
                v, rel = hit["value"].iloc[0], hit["relative_change"].iloc[0]
                row[label[j]] = format_number(v) if dist == "none" or rel is None or pd.isna(rel) else \
                    f"{format_number(v)} ({rel * 100:+.3g}%)"
            table_rows.append(row)
    first = frame.iloc[0]
    lines = [f"# Temporal-sensitivity check (run {newest})", ""]
    if stand_in:
        lines += [f"**{RANDOM_LABEL}.**", ""]
    lines += [f"Real set `{run['dataset'].iloc[0]}`: split `{first['split']}` ({first['n_reference']} reference, "
              f"{first['n_test']} test videos), seed {first['seed']}. Each cell: the judge between the reference "
              "and the distorted test videos, and in parentheses its change relative to the floor (the "
              "undistorted test videos). Temporal distortions: shuffle, freeze, reverse, jitter; spatial: blur, noise.",
              "", to_markdown(pd.DataFrame(table_rows)), ""]
    md = write_text_atomic(Path(table).with_suffix(".md"), "\n".join(lines) + "\n")

    dists = [d for d in order if d != "none"]
    fig, axes = plt.subplots(1, max(1, len(dists)), figsize=(3.0 * max(1, len(dists)), 3.0), squeeze=False,
                             sharey=True)
    for ax, dist in zip(axes[0], dists, strict=False):
        sub = frame[frame["distortion"] == dist]
        for j in judges:
            pts = sub[sub["judge"] == j].sort_values("strength")
            x = [0.0, *pts["strength"].astype(float)]  # the floor: strength 0, no change
            y = [0.0, *(pts["relative_change"].astype(float) * 100)]
            ax.plot(x, y, "o-", label=label[j], ms=3)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_title(dist + (" (temporal)" if DISTORTIONS[dist].temporal else " (spatial)"), fontsize=9)
        ax.set_xlabel(DISTORTIONS[dist].strength, fontsize=8)
    axes[0, 0].set_ylabel("change vs floor [%]")
    axes[0, -1].legend(fontsize=6, loc="best")
    if stand_in:
        fig.suptitle(RANDOM_LABEL, fontsize=8, color="tab:red")
    fig.tight_layout()
    return [md, *save_figure(fig, figure)]


def render_sensitivity_root(root: Path) -> list[Path]:
    """``nox -s tables`` hook: the newest run under ``<root>/results/records/sensitivity``."""
    from cmdbench.bench.results import load_records

    records_dir = Path(root) / RECORDS
    if not records_dir.is_dir() or not list(records_dir.glob("*.csv")):
        print(f"sensitivity: no records in {records_dir}")
        return []
    return render_sensitivity(load_records(records_dir), Path(root) / TABLE, Path(root) / FIGURE)
