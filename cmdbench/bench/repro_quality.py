"""Quality tables of CMD (arXiv 2403.14148v1): reproductions ``ucf101``, ``msrvtt``, ``webvid``, ``ablations``.

=========== ========================================================================================
ucf101      Table 1. Class-conditional FVD, StyleGAN-V clip protocol: 2,048 real / 2,048 generated clips
            (``cond2048``) and 10,000 generated vs one clip of every train-split video (``cond10k``,
            MAGVIT's protocol, marked * in the paper); zero-shot FVD (``zeroshot``): 100 videos per
            class from PYoCo's prompts (10,100 videos) vs the same train-split clips.
msrvtt      Table 2. CLIPSIM (ViT-B/32, every frame) of one video per MSR-VTT test caption.
webvid      Table 3 (cfg 9) and Table 11 (cfg 7, 9, 10, 11): FVD against the first 5,000 validation
            clips and CLIPSIM of videos generated from their 5,000 captions, one pass per scale.
ablations   Table 4a, reconstruction row: FVD between real UCF-101 clips and their CMD-autoencoder
            reconstructions (same 2,048 clips), and each reconstruction's PSNR, SSIM and LPIPS against its
            input clip (mean over frames, then over clips; the paper reports these three for no model).
=========== ========================================================================================

FVD features and distance follow CMD's released evaluation code by default (``--fvd-preset videogpt``:
PVDM's FVD code, i3d_pretrained_400, shorter side 224 + centre crop, unbiased covariance; see
``cmdbench.metrics.fvd``); every FVD row names its preset, weight file and estimator in the protocol
column and notes, with the numerics and the storage path (generated videos are scored in memory). CLIPSIM
rows count the prompts CLIP cut to 77 tokens. Every value is written beside the paper's
(``results/paper/cmd_arxiv_v1.csv``) with its protocol, the real and generated counts, and a spread: the bootstrap standard deviation over clips (FVD, from
kept per-clip features: no extra network pass) or over videos (CLIPSIM). Generated sample ``i`` uses
seed ``i`` (per-sample generators), so results do not depend on the batch size or the number of
processes. Launch with ``torchrun --nproc_per_node=8 -m cmdbench reproduce ucf101 ...`` (or
``accelerate launch``) to shard sampling and feature extraction; chunk checkpoints in ``--work-dir``
make a preempted job resume.

Inputs come from options or environment variables; when any is missing the run stops before any work
with one message listing all of them. ``--tiny`` runs every step on synthetic moving-shape videos it
writes itself, with tiny generators, a tiny pooled-feature extractor (``tiny-pool-4``: 4-d features,
so FVD is defined with a handful of clips) and a random tiny CLIP: the CI path. Its numbers mean
nothing and are labelled ``tiny``.

Real runs (inputs, commands, expected time)
-------------------------------------------
::

    cmdbench weights fetch i3d_pretrained_400 && cmdbench weights fetch clip_vit_b32
    cmdbench weights fetch torchvision_alexnet_imagenet1k_v1   # LPIPS backbone (ablations)
    # (--fvd-preset stylegan-v needs i3d_torchscript instead of i3d_pretrained_400)
    export CMDBENCH_UCF101_ROOT=/data/UCF101      # UCF-101/<Class>/*.avi + ucfTrainTestlist/
    export CMDBENCH_WEBVID_ROOT=/data/webvid       # results_2M_val.csv + <page_dir>/<videoid>.mp4
    export CMDBENCH_MSRVTT_ROOT=/data/msrvtt       # test_videodatainfo.json or MSRVTT_data.json
    export CMDBENCH_CMD_CHECKPOINT=... CMDBENCH_CMD_T2V_CHECKPOINT=... CMDBENCH_CMD_WEBVID_CHECKPOINT=...
    cmdbench ref-stats --dataset ucf101 --root $CMDBENCH_UCF101_ROOT --metric fvd2048_16f --order hashed
    torchrun --nproc_per_node=8 -m cmdbench reproduce ucf101      # or: nox -s reproduce -- ucf101

Estimates (assumptions: I3D at ~300 clips/s per H100 in fp32 and clip decoding at ~200 clips/s with 8
workers; CMD sampling with CFG at ~0.5 s per 64x64 UCF video, ~1 s per 512x512 and ~2 s per
512x1024 video on one H100, i.e. the paper's 3.1 s on an A100 scaled by ~1.5; sampling dominates and
shards linearly): ``ucf101`` ~1.8 h + 3 h (zero-shot) on one GPU, ~40 min on eight; ``msrvtt``
(2,990 captions) ~1.7 h / ~13 min; ``webvid`` (5,000 x 4 scales) ~11 h / ~1.4 h; ``ablations``
~2 min either way. Real statistics take about a minute and are cached.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cmdbench.bench.reproduce import REPRODUCTIONS
from cmdbench.bench.results import RecordWriter, make_row, new_run_id, now_utc
from cmdbench.bench.sharded import Shard, init_distributed_from_env, sharded_stats
from cmdbench.config import EvalProtocol, stable_hash, to_jsonable
from cmdbench.env import capture_environment

PAPER_FILE = Path(__file__).resolve().parents[2] / "results" / "paper" / "cmd_arxiv_v1.csv"
UCF_PARTS = ("cond2048", "cond10k", "zeroshot")
WEBVID_SCALES = (7.0, 9.0, 10.0, 11.0)
TINY_COUNT = 6  # clips per statistic in --tiny runs (tiny-pool-4 needs more than 4)
TINY_RECON_SIZE = (32, 32)  # --tiny Table 4a frames: LPIPS' AlexNet needs >= 31x31


class MissingInputsError(ValueError):
    """Inputs a reproduction needs are absent; the message lists every one and how to provide it."""


# --- Options ---------------------------------------------------------------------------------------------


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


def build_parser(table: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"cmdbench reproduce {table}", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", "--synthetic", action="store_true", dest="tiny",
                   help="run every step on generated synthetic data with tiny models (CI; numbers meaningless)")
    p.add_argument("--records", default="results/records", help="records directory")
    p.add_argument("--tables", default="results/tables", help="tables directory")
    p.add_argument("--work-dir", default=None,
                   help="chunk checkpoints (resume) and synthetic data (default $CMDBENCH_CACHE/work/<table>)")
    p.add_argument("--cache-dir", default=None, help="reference statistics cache (default $CMDBENCH_CACHE/ref_stats)")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--dtype", default="float16" if _cuda() else "float32", choices=("float32", "float16", "bfloat16"))
    p.add_argument("--batch-size", type=int, default=8, help="videos per generator call")
    p.add_argument("--extract-batch-size", type=int, default=16, help="clips per extractor call")
    p.add_argument("--num-workers", type=int, default=4, help="DataLoader workers decoding real clips")
    p.add_argument("--chunk-size", type=int, default=256, help="items per checkpointed chunk")
    p.add_argument("--on-bad-input", choices=("strict", "skip"), default="strict",
                   help="bad video files: stop at the first (strict) or record and skip them (skip)")
    p.add_argument("--fvd-preset", default=_default_preset(),
                   help="FVD preset (cmdbench.metrics.fvd.PRESETS; default: videogpt, the PVDM code CMD's release "
                        "evaluates with; stylegan-v for StyleGAN-V's metric code)")
    p.add_argument("--i3d-weights", default=None, help="I3D weight file (default: cmdbench weights cache)")
    p.add_argument("--clip-weights", default=None, help="CLIP ViT-B/32 file (default: cmdbench weights cache)")
    p.add_argument("--bootstrap", type=int, default=100, help="bootstrap rounds for the FVD spread")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the generator's)")
    p.add_argument("--seed-offset", type=int, default=0, help="sample i uses seed offset+i")
    p.add_argument("--limit", type=int, default=None,
                   help="use only this many generated videos per statistic (a quick look; marked non-conformant)")
    if table in ("ucf101", "ablations"):
        p.add_argument("--ucf101-root", default=_env("CMDBENCH_UCF101_ROOT"), help="UCF-101 root [CMDBENCH_UCF101_ROOT]")
    if table == "ucf101":
        p.add_argument("--parts", default=",".join(UCF_PARTS), help=f"comma list of {UCF_PARTS}")
    if table in ("ucf101", "ablations"):
        p.add_argument("--generator", default="cmd-ucf101-64", help="class-conditional generator")
        p.add_argument("--checkpoint", default=_env("CMDBENCH_CMD_CHECKPOINT"),
                       help="its checkpoint [CMDBENCH_CMD_CHECKPOINT]")
    if table == "ucf101":
        p.add_argument("--t2v-generator", default="cmd-sd15-512", help="text-to-video generator for zero-shot")
        p.add_argument("--t2v-checkpoint", default=_env("CMDBENCH_CMD_T2V_CHECKPOINT"),
                       help="its checkpoint [CMDBENCH_CMD_T2V_CHECKPOINT]")
        p.add_argument("--videos-per-class", type=int, default=100)
    if table in ("msrvtt", "webvid"):
        p.add_argument("--generator", default="cmd-webvid-512x1024", help="text-to-video generator")
        p.add_argument("--checkpoint", default=_env("CMDBENCH_CMD_WEBVID_CHECKPOINT"),
                       help="its checkpoint [CMDBENCH_CMD_WEBVID_CHECKPOINT]")
    if table == "msrvtt":
        p.add_argument("--msrvtt-root", default=_env("CMDBENCH_MSRVTT_ROOT"),
                       help="folder or file with MSR-VTT test captions [CMDBENCH_MSRVTT_ROOT]")
        p.add_argument("--caption-choice", choices=("first", "seeded"), default="first")
    if table == "webvid":
        p.add_argument("--webvid-root", default=_env("CMDBENCH_WEBVID_ROOT"), help="WebVid root [CMDBENCH_WEBVID_ROOT]")
        p.add_argument("--webvid-csv", default=_env("CMDBENCH_WEBVID_CSV"), help="validation CSV [CMDBENCH_WEBVID_CSV]")
        p.add_argument("--num-videos", type=int, default=5000)
        p.add_argument("--scales", default=",".join(str(s) for s in WEBVID_SCALES), help="guidance scales")
    return p


def _default_preset() -> str:
    from cmdbench.metrics.fvd import DEFAULT_PRESET

    return DEFAULT_PRESET


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def missing_inputs(table: str, args: argparse.Namespace) -> list[str]:
    """Every missing input of a real run, each with how to provide it."""
    if args.tiny:
        return []
    missing: list[str] = []

    def need_dir(value: str | None, option: str, env: str, what: str) -> None:
        if not value:
            missing.append(f"{what}: pass {option} DIR or set {env}")
        elif not Path(value).exists():
            missing.append(f"{what}: {value} does not exist ({option} / {env})")

    def need_ckpt(value: str | None, option: str, env: str, generator: str) -> None:
        if not value:
            missing.append(f"checkpoint of {generator}: pass {option} PATH or set {env}")
        elif not Path(value).exists() and "/" not in value.strip("./"):
            missing.append(f"checkpoint of {generator}: {value} does not exist ({option} / {env})")

    def need_weights(name: str, option: str | None, value: str | None) -> None:
        from cmdbench import weights

        if value:
            if not Path(value).is_file():
                missing.append(f"{name} weights: {value} does not exist ({option})")
            return
        if not weights.path(name).is_file():
            other = f"pass {option} FILE" if option else f"set {weights.override_env_var(name)}=FILE"
            missing.append(f"{name} weights: run `cmdbench weights fetch {name}` or {other}")

    parts = _ucf_parts(args) if table == "ucf101" else ()
    if table in ("ucf101", "ablations"):
        need_dir(args.ucf101_root, "--ucf101-root", "CMDBENCH_UCF101_ROOT", "UCF-101 dataset")
        if table == "ablations" or {"cond2048", "cond10k"} & set(parts):
            need_ckpt(args.checkpoint, "--checkpoint", "CMDBENCH_CMD_CHECKPOINT", args.generator)
        if "zeroshot" in parts:
            need_ckpt(args.t2v_checkpoint, "--t2v-checkpoint", "CMDBENCH_CMD_T2V_CHECKPOINT", args.t2v_generator)
    if table == "msrvtt":
        need_dir(args.msrvtt_root, "--msrvtt-root", "CMDBENCH_MSRVTT_ROOT", "MSR-VTT test captions")
    if table == "webvid":
        need_dir(args.webvid_root, "--webvid-root", "CMDBENCH_WEBVID_ROOT", "WebVid-10M validation set")
    if table in ("msrvtt", "webvid"):
        need_ckpt(args.checkpoint, "--checkpoint", "CMDBENCH_CMD_WEBVID_CHECKPOINT", args.generator)
    fvd_extractor = _preset_extractor(args.fvd_preset)
    if table != "msrvtt":
        need_weights(fvd_extractor, "--i3d-weights", args.i3d_weights)
    if table in ("msrvtt", "webvid"):
        need_weights("clip_vit_b32", "--clip-weights", args.clip_weights)
    if table == "ablations":  # LPIPS of the reconstructions: torchvision's AlexNet backbone
        from cmdbench.perceptual import BACKBONE_WEIGHTS

        need_weights(BACKBONE_WEIGHTS["alex"], None, None)
    return missing


def _preset_extractor(preset: str) -> str:
    from cmdbench.metrics.fvd import PRESETS

    if preset not in PRESETS:
        raise ValueError(f"--fvd-preset {preset!r} is not known; allowed {sorted(PRESETS)}")
    return PRESETS[preset].extractor


def _ucf_parts(args: argparse.Namespace) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    bad = sorted(set(parts) - set(UCF_PARTS))
    if bad or not parts:
        raise ValueError(f"--parts {args.parts!r}: unknown {bad}; allowed a comma list of {UCF_PARTS}")
    return parts


# --- One run: generator, judges, records -------------------------------------------------------------


@dataclass
class FakeItem:
    seed: int
    label: int | None = None
    prompt: str | None = None


@dataclass
class Measured:
    table: str
    setting: str
    metric: str
    value: float
    std: float | None
    n_fake: int
    n_real: int | None
    protocol: str
    generator: str
    guidance_scale: float | None = None
    paper: tuple[float | None, float | None] = (None, None)
    notes: str = ""
    unit: str | None = None  # None: METRIC_STYLE's
    higher_is_better: bool | None = None  # None: METRIC_STYLE's

    @property
    def style(self) -> tuple[str, bool, int]:
        """(unit, higher is better, decimals in the markdown table), the row's own where it set them."""
        unit, higher, digits = METRIC_STYLE[self.metric]
        return (self.unit if self.unit is not None else unit,
                self.higher_is_better if self.higher_is_better is not None else higher, digits)


# metric -> (unit, higher is better, decimals in the markdown table)
METRIC_STYLE: dict[str, tuple[str, bool, int]] = {
    "fvd": ("", False, 1), "clipsim": ("cosine", True, 4),
    "psnr": ("dB", True, 2), "ssim": ("", True, 4), "lpips": ("", False, 4),
}


@dataclass
class Run:
    """Shared state of one reproduction run."""

    table: str
    args: argparse.Namespace
    shard: Shard
    work_dir: Path
    run_id: str
    results: list[Measured] = field(default_factory=list)
    reports: dict[str, Any] = field(default_factory=dict)
    _generators: dict[tuple[str, str | None], Any] = field(default_factory=dict)

    def log(self, msg: str) -> None:
        if self.shard.rank == 0:
            print(f"[{self.table}] {msg}", flush=True)

    def generator(self, name: str, checkpoint: str | None) -> Any:
        from cmdbench.interfaces import GeneratorSpec
        from cmdbench.registry import GENERATORS, load_plugins

        key = (name, checkpoint)
        if key not in self._generators:
            load_plugins()
            device = self.args.device
            if device == "cuda" and self.shard.world_size > 1:
                device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
            spec = GeneratorSpec(checkpoint=None if self.args.tiny else checkpoint, device=device,
                                 dtype="float32" if self.args.tiny else self.args.dtype, tiny=self.args.tiny)
            self._generators[key] = GENERATORS.get(name)(spec)
        return self._generators[key]

    def fvd(self, metric: str, *, num_frames: int, num_real: int | None = None, num_fake: int | None = None,
            real_order: str | None = None):
        """An FVD metric for protocol-named ``metric``; in ``--tiny`` the tiny-pool protocol.

        ``real_order="hashed"`` takes a seeded subset of the real videos instead of the first ones listed
        (UCF-101's split files are sorted by class: the first 2,048 would cover about 20 classes).
        """
        from cmdbench.bench.tiny_judges import TinyPoolExtractor, tiny_protocol
        from cmdbench.metrics.fvd import FVD, get_protocol

        if self.args.tiny:
            ex = TinyPoolExtractor(dim=4)
            protocol = tiny_protocol(num_real if num_real is not None else TINY_COUNT, num_fake or TINY_COUNT,
                                     num_frames, ex, name=f"tiny-pool:{metric}")
            # allow_singular: an explicit opt-in for the bootstrap rounds, whose resamples of 6 clips can hold
            # as few distinct clips as the feature dimension (the value itself has n > dim)
            return FVD(protocol, extractor=ex, bootstrap_rounds=self.args.bootstrap and max(2, min(self.args.bootstrap, 20)),
                       strict=self.args.limit is None, allow_singular=True)
        protocol = get_protocol(self.args.fvd_preset, metric)
        changes = {k: v for k, v in (("num_real", num_real), ("num_fake", num_fake), ("real_order", real_order))
                   if v is not None}
        if changes:
            protocol = replace(protocol, **changes)
        return FVD(protocol, extractor_path=self.args.i3d_weights, device=self._device(),
                   batch_size=self.args.extract_batch_size, bootstrap_rounds=self.args.bootstrap,
                   strict=self.args.limit is None)

    def clip(self):
        if self.args.tiny:  # the labelled random tiny CLIP stand-in (same weights for a seed on every run)
            from cmdbench.metrics.clipsim_standin import build_random_tiny_clip

            return build_random_tiny_clip(seed=0, device=self._device())
        from cmdbench.metrics.clipsim import load_clip

        return load_clip(self.args.clip_weights, device=self._device())

    def _device(self) -> str:
        if self.args.device == "cuda" and self.shard.world_size > 1:
            return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        return self.args.device

    def cache(self):
        from cmdbench.metrics.reference import ReferenceCache

        return ReferenceCache(self.args.cache_dir or (self.work_dir / "ref_stats" if self.args.tiny else None))

    # -- generated samples --------------------------------------------------------------------------
    def fake_statistics(self, gen: Any, items: Sequence[FakeItem], *, fvd: Any = None, clip: Any = None,
                        guidance_scale: float | None = None, label: str) -> dict[str, Any]:
        """Sample ``items`` (sharded, checkpointed) and return FVD stats and/or CLIPSIM scores."""
        from cmdbench.seeding import make_generators

        if self.args.limit is not None:
            items = items[: self.args.limit]
        d = gen.defaults
        steps = self.args.steps or d.steps
        scale = guidance_scale if guidance_scale is not None else d.guidance_scale
        dims = {}
        if fvd is not None:
            dims["fvd"] = fvd.extractor.dim
        if clip is not None:
            dims["clipsim"] = 1
            dims["prompt_truncated"] = 1  # 1.0 where CLIP cut the prompt to 77 tokens (counted per video)
        bs = self.args.batch_size

        def produce(idx: Sequence[int]):
            out: dict[str, list[np.ndarray]] = {k: [] for k in dims}
            for start in range(0, len(idx), bs):
                batch = [items[i] for i in idx[start : start + bs]]
                cond: dict[str, Any] = {}
                if gen.conditioning == "class":
                    cond["labels"] = [b.label for b in batch]
                elif gen.conditioning == "text":
                    cond["prompts"] = [b.prompt for b in batch]
                videos = gen.sample(**cond, num_frames=d.num_frames, height=d.height, width=d.width, steps=steps,
                                    generator=make_generators([b.seed for b in batch]), guidance_scale=scale)
                if fvd is not None:
                    out["fvd"].append(fvd.features(videos).numpy())  # (b, dim)
                if clip is not None:
                    from cmdbench.metrics.clipsim import frame_text_cosines

                    cos, cut = frame_text_cosines(clip, videos, [b.prompt for b in batch], truncate=True)
                    out["clipsim"].append(cos.mean(dim=1).double().numpy()[:, None])  # (b, 1)
                    out["prompt_truncated"].append(np.isin(np.arange(len(batch)), cut).astype(float)[:, None])
            return {k: np.concatenate(v) for k, v in out.items()}, list(idx)

        tag = stable_hash({"generator": gen.name, "checkpoint": self.args.checkpoint, "tiny": self.args.tiny,
                           "items": [to_jsonable(i) for i in items], "steps": steps, "scale": scale,
                           "fvd": fvd and fvd.protocol and to_jsonable(fvd.protocol),
                           "fvd_checksum": fvd and fvd.extractor.checksum,
                           "clip": clip and clip.weights_sha256}, length=32)
        self.log(f"{label}: sampling {len(items)} videos with {gen.name} ({steps} steps, guidance {scale}) "
                 f"on {self.shard.world_size} process(es)")
        t0 = time.perf_counter()
        stats, done = sharded_stats(len(items), produce, dims, tag=tag,
                                    work_dir=self.work_dir / "fake" / f"{label}-{tag[:12]}",
                                    chunk_size=self.args.chunk_size, shard=self.shard, keep_features=True)
        self.log(f"{label}: {len(done)} videos in {time.perf_counter() - t0:.1f} s")
        return {"stats": stats, "steps": steps, "scale": scale, "n": len(done), "items": items}

    def fvd_value(self, fvd: Any, real: Any, fake_stats: Any) -> tuple[float, float | None, dict[str, Any]]:
        fvd.set_reference(real)
        fvd.fake = fvd.new_stats("fake")
        if fvd.fake.bank is None:
            from cmdbench.metrics.frechet import FeatureStats

            fvd.fake = FeatureStats(fvd.extractor.dim, keep_features=True, metadata=fvd.fake.metadata)
        fvd.fake.merge(fake_stats)
        mv = fvd.compute()
        return mv.value, mv.std, mv.extra

    def real_statistics(self, dataset_name: str, root: str, fvd: Any, size: tuple[int, int], **options: Any):
        from cmdbench.bench.reference_sets import open_real_dataset, real_statistics

        ds = open_real_dataset(dataset_name, root, fvd.protocol, size=size, policy=self.args.on_bad_input, **options)
        t0 = time.perf_counter()
        rs = real_statistics(ds, fvd, cache=self.cache(), work_dir=self.work_dir, batch_size=self.args.extract_batch_size,
                             num_workers=self.args.num_workers, chunk_size=self.args.chunk_size, shard=self.shard)
        # every skipped video with its reason: listing/probe skips, and decode skips from every rank and resumed run
        unique = rs.skipped
        self.reports[f"{dataset_name}:{fvd.protocol.name}:{fvd.protocol.num_real}"] = {
            **rs.report, "skipped": unique, "num_skipped": len(unique), "cached": rs.cached,
            "path": str(rs.path) if rs.path else None, "seconds": round(time.perf_counter() - t0, 3)}
        self.log(f"real {dataset_name}: {rs.stats.n} clips ({'cached' if rs.cached else 'computed'}; "
                 f"{ds.report.summary()})")
        return rs.stats

    def add(self, m: Measured) -> None:
        m.paper = paper_number(m.table, m.setting, m.metric)
        self.results.append(m)
        self.log(f"{m.table} {m.setting} {m.metric}: {m.value:.4g}" + (f" ± {m.std:.2g}" if m.std else "")
                 + f" (paper {m.paper[0]})")


# --- Paper numbers -----------------------------------------------------------------------------------

# (table, setting key) -> (generator, protocol column, metric, substring of the notes' setting)
PAPER_KEYS: dict[tuple[str, str], tuple[str, str, str]] = {
    ("Table 1", "cond2048"): ("CMD", "Table 1", "2,048 videos"),
    ("Table 1", "cond10k"): ("CMD", "Table 1", "10,000 videos"),
    ("Table 1", "zeroshot"): ("CMD", "Table 1", "zero-shot"),
    ("Table 2", "msrvtt"): ("CMD", "Table 2", "MSR-VTT"),
    ("Table 3", "cfg 9.0"): ("CMD", "Table 3", "cfg=9.0"),
    ("Table 11", "cfg 7.0"): ("CMD", "Table 11", "cfg=7.0"),
    ("Table 11", "cfg 9.0"): ("CMD", "Table 11", "cfg=9.0"),
    ("Table 11", "cfg 10.0"): ("CMD", "Table 11", "cfg=10.0"),
    ("Table 11", "cfg 11.0"): ("CMD", "Table 11", "cfg=11.0"),
    ("Table 4a", "reconstruction"): ("CMD autoencoder reconstruction", "Table 4a", ""),
}


def paper_number(table: str, setting: str, metric: str, path: Path = PAPER_FILE) -> tuple[float | None, float | None]:
    """(value, ± spread) the paper reports for a setting, from ``results/paper``; (None, None) if absent."""
    key = PAPER_KEYS.get((table, setting))
    if key is None or not path.is_file():
        return None, None
    gen, proto, needle = key
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    rows = df[(df["generator"] == gen) & (df["protocol"] == proto) & df["notes"].str.contains(needle, regex=False)]

    def get(m: str) -> float | None:
        r = rows[rows["metric"] == m]
        return float(r["value"].iloc[0]) if len(r) else None

    return get(metric), get(f"{metric}_pm")


# --- Tables and records -----------------------------------------------------------------------------------


def write_outputs(run: Run) -> tuple[Path, Path]:
    """Append rows to ``<records>/<run_id>.csv`` (+ meta JSON) and write the markdown table."""
    args = run.args
    env = capture_environment(run.args.device, args.dtype)
    writer = RecordWriter(args.records, run.run_id)
    writer.write_meta({"table": run.table, "args": vars(args), "environment": env, "data_reports": run.reports,
                       "created_utc": now_utc(), "world_size": run.shard.world_size})
    rows = []
    for m in run.results:
        rows.append(make_row(
            run_id=run.run_id, created_utc=now_utc(), source="measured", git_sha=env["git_sha"],
            git_dirty=env["git_dirty"], generator=m.generator, dataset=_dataset_of(m.table), protocol=m.protocol,
            metric=m.metric, value=m.value, std=m.std, n=m.n_fake, higher_is_better=m.style[1],
            unit=m.style[0], guidance_scale=m.guidance_scale,
            batch_size=args.batch_size, dtype=args.dtype, device_name=env["device_name"],
            torch_version=env["torch_version"], cuda_version=env["cuda_version"],
            config_hash=stable_hash({"protocol": m.protocol, "setting": m.setting, "generator": m.generator}),
            notes=f"{m.table} {m.setting}; n_real={m.n_real}; {'TINY synthetic run; ' if args.tiny else ''}{m.notes}",
        ))
    writer.append(rows)
    table_path = Path(args.tables) / f"quality_{run.table}{'_tiny' if args.tiny else ''}.md"
    table_path.parent.mkdir(parents=True, exist_ok=True)
    table_path.write_text(markdown_table(run))
    return writer.csv_path, table_path


def _dataset_of(table: str) -> str:
    return {"Table 1": "UCF-101", "Table 2": "MSR-VTT", "Table 3": "WebVid-10M", "Table 11": "WebVid-10M",
            "Table 4a": "UCF-101"}.get(table, "")


def _fmt(v: float | None, pm: float | None, digits: int) -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}f}" + (f" ± {pm:.{digits}f}" if pm is not None else "")


def markdown_table(run: Run) -> str:
    lines = [f"# CMD {run.table} reproduction{' (TINY synthetic run: numbers meaningless)' if run.args.tiny else ''}",
             "", f"run `{run.run_id}`; spread = bootstrap std (FVD over clips, CLIPSIM over videos), sample std "
             "over clips (PSNR, SSIM, LPIPS); paper = arXiv 2403.14148v1 (- where it reports none)", "",
             "| table | setting | metric | paper | ours | real / generated | protocol | generator |",
             "|---|---|---|---|---|---|---|---|"]
    for m in run.results:
        unit, higher, digits = m.style
        metric = f"{m.metric}{f' [{unit}]' if unit else ''} {'↑' if higher else '↓'}"
        lines.append(f"| {m.table} | {m.setting} | {metric} | {_fmt(*m.paper, digits)} | "
                     f"{_fmt(m.value, m.std, digits)} | {m.n_real if m.n_real is not None else '-'} / {m.n_fake} | "
                     f"{m.protocol} | {m.generator} |")
    skipped = {k: v.get("num_skipped", 0) for k, v in run.reports.items() if isinstance(v, dict)}
    if any(skipped.values()):
        lines += ["", f"Skipped inputs (details in the run's JSON record): {skipped}"]
    return "\n".join(lines) + "\n"


# --- Synthetic inputs for --tiny ------------------------------------------------------------------------


def synthetic_inputs(run: Run, frames: int, size: tuple[int, int]) -> dict[str, Path]:
    """Write (once) a fake UCF-101 tree, WebVid tree and MSR-VTT caption file under the work dir."""
    from cmdbench.data import synthetic

    root = run.work_dir / "synthetic"
    marker = root / f"done-{frames}-{size[0]}x{size[1]}"
    paths = {"ucf101": root / "ucf101", "webvid": root / "webvid", "msrvtt": root / "msrvtt"}
    if run.shard.rank == 0 and not marker.exists():
        h, w = (size[0] + 1) // 2 * 2, (size[1] + 1) // 2 * 2
        synthetic.write_fake_ucf101(paths["ucf101"], classes=(0, 1, 2), train_per_class=3, test_per_class=0,
                                    num_frames=frames + 4, height=h + 8, width=w + 16)
        synthetic.write_fake_webvid(paths["webvid"], TINY_COUNT + 1, num_frames=frames + 4, height=h, width=w * 2)
        synthetic.write_fake_msrvtt(paths["msrvtt"], TINY_COUNT)
        marker.write_text("ok\n")
    from cmdbench.bench.sharded import _barrier

    _barrier()
    return paths


# --- The tables -----------------------------------------------------------------------------------------------


def table1(run: Run) -> None:
    from cmdbench.data.prompts import ucf101_class_prompts

    args = run.args
    parts = _ucf_parts(args)
    if {"cond2048", "cond10k"} & set(parts):
        gen = run.generator("tiny-unet3d-class" if args.tiny else args.generator, args.checkpoint)
        d = gen.defaults
        root = synthetic_inputs(run, d.num_frames, (d.height, d.width))["ucf101"] if args.tiny else args.ucf101_root
        for part, metric in (("cond2048", "fvd2048_16f"), ("cond10k", "fvd10k_16f")):
            if part not in parts:
                continue
            n_fake = TINY_COUNT + 2 if args.tiny and part == "cond10k" else None
            fvd = run.fvd(metric, num_frames=d.num_frames, num_real=0 if part == "cond10k" else None, num_fake=n_fake,
                          real_order="hashed")
            real = run.real_statistics("ucf101", root, fvd, (d.height, d.width))
            n = fvd.protocol.num_fake
            labels = class_label_plan(n, gen.num_classes, args.seed_offset)
            items = [FakeItem(args.seed_offset + i, label=lab) for i, lab in enumerate(labels)]
            fake = run.fake_statistics(gen, items, fvd=fvd, label=part)
            value, std, extra = run.fvd_value(fvd, real, fake["stats"]["fvd"])
            run.add(Measured("Table 1", part, "fvd", value, std, fake["n"], real.n, _proto(fvd, args), gen.name,
                             fake["scale"], notes=_fvd_note(extra)))
    if "zeroshot" in parts:
        gen = run.generator("cmd-tiny" if args.tiny else args.t2v_generator, args.t2v_checkpoint)
        d = gen.defaults
        root = synthetic_inputs(run, d.num_frames, (d.height, d.width))["ucf101"] if args.tiny else args.ucf101_root
        prompts = ucf101_class_prompts()
        per_class, classes = (1, prompts[: TINY_COUNT + 1]) if args.tiny else (args.videos_per_class, prompts)
        plan = [(p.class_index, p.prompt) for p in classes for _ in range(per_class)]
        fvd = run.fvd("fvd10k_16f", num_frames=d.num_frames, num_real=0, num_fake=len(plan))
        real = run.real_statistics("ucf101", root, fvd, (d.height, d.width))
        items = [FakeItem(args.seed_offset + i, label=c, prompt=t) for i, (c, t) in enumerate(plan)]
        fake = run.fake_statistics(gen, items, fvd=fvd, label="zeroshot")
        value, std, extra = run.fvd_value(fvd, real, fake["stats"]["fvd"])
        run.add(Measured("Table 1", "zeroshot", "fvd", value, std, fake["n"], real.n, _proto(fvd, args), gen.name,
                         fake["scale"], notes=f"{per_class} videos per class, PYoCo prompts; " + _fvd_note(extra)))


def class_label_plan(n: int, num_classes: int | None, offset: int) -> list[int]:
    """Class labels for ``n`` generated videos: uniform over classes, seeded (DIGAN/StyleGAN-V practice)."""
    if not num_classes:
        raise ValueError("a class-conditional generator must report num_classes")
    rng = np.random.default_rng(np.random.SeedSequence([offset, n, num_classes]))
    return [int(x) for x in rng.integers(0, num_classes, n)]


def _proto(fvd: Any, args: argparse.Namespace) -> str:
    """The protocol column of an FVD row: preset, weight file, estimator, frames and counts."""
    from cmdbench.metrics.fvd import estimator_name

    p: EvalProtocol = fvd.protocol
    return (f"{p.name} ({p.extractor}, {estimator_name(p.ddof)}, {p.num_frames}f, real {p.num_real or 'all'}, "
            f"fake {p.num_fake})")


def _fvd_note(extra: dict[str, Any]) -> str:
    """The notes of an FVD row: counts, preset/weights/estimator, storage, numerics, Fréchet rounding."""
    fd = extra.get("frechet") or {}
    num = extra.get("numerics") or {}
    numerics = ", ".join(f"{k}={v}" for k, v in num.items() if v is not None)
    return (f"conformant={extra.get('conformant')}; n_real={extra.get('n_real')}; n_fake={extra.get('n_fake')}; "
            f"FVD {extra.get('describe')}; weights verified={extra.get('weights_verified')}; "
            f"videos: {extra.get('storage')}; numerics: {numerics}"
            + (f"; frechet: {' / '.join(fd['notes'])}" if fd.get("notes") else ""))


def _clipsim_note(fake: dict[str, Any]) -> str:
    """The notes of a CLIPSIM row: how many prompts CLIP cut to 77 tokens, and how the videos were stored."""
    from cmdbench.video import IN_MEMORY

    cut = int(round(float(fake["stats"]["prompt_truncated"].sum[0])))
    return f"prompts_truncated={cut} of {fake['n']} (CLIP's 77-token context); videos: {IN_MEMORY}"


def table2(run: Run) -> None:
    from cmdbench.data.datasets import msrvtt
    from cmdbench.metrics.clipsim import bootstrap_std

    args = run.args
    gen = run.generator("cmd-tiny" if args.tiny else args.generator, args.checkpoint)
    d = gen.defaults
    root = synthetic_inputs(run, d.num_frames, (d.height, d.width))["msrvtt"] if args.tiny else args.msrvtt_root
    caps = msrvtt(root, choice=args.caption_choice, policy=args.on_bad_input)
    run.reports["msrvtt"] = caps.report.to_dict()
    items = [FakeItem(args.seed_offset + i, prompt=c.text) for i, c in enumerate(caps.captions)]
    fake = run.fake_statistics(gen, items, clip=run.clip(), label="msrvtt")
    scores = fake["stats"]["clipsim"].bank.array()[:, 0]
    run.add(Measured("Table 2", "msrvtt", "clipsim", float(scores.mean()), bootstrap_std(scores), fake["n"], None,
                     "clip-vit-b32/every-frame" if not args.tiny else "tiny-clip/every-frame", gen.name, fake["scale"],
                     notes=f"{len(caps)} test captions ({args.caption_choice} per video); {_clipsim_note(fake)}"))


def table3_11(run: Run) -> None:
    from cmdbench.data.prompts import webvid_captions
    from cmdbench.metrics.clipsim import bootstrap_std

    args = run.args
    gen = run.generator("cmd-tiny" if args.tiny else args.generator, args.checkpoint)
    d = gen.defaults
    root = synthetic_inputs(run, d.num_frames, (d.height, d.width))["webvid"] if args.tiny else args.webvid_root
    n = TINY_COUNT if args.tiny else args.num_videos
    fvd = run.fvd("fvd5k_16f", num_frames=d.num_frames, num_real=n, num_fake=n)
    from cmdbench.data.datasets import find_webvid_csv

    csv_path = args.webvid_csv if args.webvid_csv and not args.tiny else find_webvid_csv(Path(root))
    real = run.real_statistics("webvid", root, fvd, (d.height, d.width), csv_path=csv_path, limit=n)
    caps = webvid_captions(csv_path, policy=args.on_bad_input, limit=n)
    clip = run.clip()
    scales = [float(s) for s in args.scales.split(",")] if not args.tiny else [7.0, 9.0]
    for scale in scales:
        items = [FakeItem(args.seed_offset + i, prompt=c.text) for i, c in enumerate(caps)]
        fake = run.fake_statistics(gen, items, fvd=fvd, clip=clip, guidance_scale=scale, label=f"cfg{scale:g}")
        value, std, extra = run.fvd_value(fvd, real, fake["stats"]["fvd"])
        scores = fake["stats"]["clipsim"].bank.array()[:, 0]
        for table in (("Table 3", "Table 11") if scale == 9.0 else ("Table 11",)):
            run.add(Measured(table, f"cfg {scale:.1f}", "fvd", value, std, fake["n"], real.n, _proto(fvd, args),
                             gen.name, scale, notes=_fvd_note(extra)))
            run.add(Measured(table, f"cfg {scale:.1f}", "clipsim", float(scores.mean()), bootstrap_std(scores),
                             fake["n"], None, "clip-vit-b32/every-frame" if not args.tiny else "tiny-clip/every-frame",
                             gen.name, scale, notes=_clipsim_note(fake)))


def table4(run: Run) -> None:
    """Table 4a reconstruction row: real clips vs CMD-autoencoder reconstructions of the same clips.

    One pass over the clips gives, per clip, the FVD features of its reconstruction and its PSNR, SSIM and
    LPIPS against the input clip (:func:`cmdbench.metrics.reconstruction.reconstruction_scores`: per-frame
    values averaged over the clip's frames), banked together in the same resumable units. FVD row: as in
    Table 4a; psnr / ssim / lpips rows: the mean over clips, the sample std over clips (ddof=1) and the
    number of clips (the paper reports none of them). LPIPS is v0.1 AlexNet with torchvision's ImageNet
    backbone (``cmdbench weights fetch torchvision_alexnet_imagenet1k_v1``); ``--tiny`` uses a random
    backbone and its protocol says RANDOM.
    """
    import torch

    from cmdbench.bench.reference_sets import open_real_dataset
    from cmdbench.data.clips import iter_clips, make_loader
    from cmdbench.metrics import reconstruction
    from cmdbench.perceptual import check_frame_size, load_lpips
    from cmdbench.video import float_to_uint8, uint8_to_float

    args = run.args
    gen = run.generator("cmd-tiny" if args.tiny else args.generator, args.checkpoint)
    ae = gen.pipeline.autoencoder
    frames, (h, w) = ae.config.num_frames, ae.frame_size
    if ae.config.in_channels != 3:
        raise ValueError(f"{gen.name}'s autoencoder works in a latent space; Table 4a uses the pixel UCF-101 model")
    if args.tiny:  # LPIPS' AlexNet needs frames of 31x31 or more; the tiny AE (16x16) runs at any multiple of 8
        h, w = TINY_RECON_SIZE
    backbone = "random" if args.tiny else "imagenet"
    lpips_model = load_lpips("alex", device=next(ae.parameters()).device, backbone=backbone)
    check_frame_size(lpips_model, h, w)  # before any work: a clear error instead of a failure mid-run
    root = synthetic_inputs(run, frames, (h, w))["ucf101"] if args.tiny else args.ucf101_root
    fvd = run.fvd("fvd2048_16f", num_frames=frames, real_order="hashed")
    real = run.real_statistics("ucf101", root, fvd, (h, w))
    ds = open_real_dataset("ucf101", root, fvd.protocol, size=(h, w), policy=args.on_bad_input)
    dev = next(ae.parameters()).device
    # the registered metrics name each row's protocol, unit, direction and provenance
    pair_metrics = {"psnr": reconstruction.PSNR(), "ssim": reconstruction.SSIM(),
                    "lpips": reconstruction.LPIPS(net="alex", backbone=backbone, model=lpips_model)}

    @torch.no_grad()
    def produce(idx):
        out: dict[str, list[np.ndarray]] = {"fvd": [], **{m: [] for m in pair_metrics}}
        done, failed = [], {}
        for b in iter_clips(ds, make_loader(ds, batch_size=args.extract_batch_size, num_workers=args.num_workers,
                                            indices=idx)):
            failed.update({s.index: f"{s.source}: {s.reason}" for s in b.skipped})
            if b.videos is None:
                continue
            x = uint8_to_float(b.videos).permute(0, 2, 1, 3, 4).to(dev, next(ae.parameters()).dtype)  # (B,3,L,H,W)
            rec = float_to_uint8(ae(x).float().cpu().permute(0, 2, 1, 3, 4))  # (B, L, 3, H, W) uint8
            out["fvd"].append(fvd.features(rec).numpy())
            scores = reconstruction.reconstruction_scores(rec, b.videos, lpips_model=lpips_model)  # name -> (B,)
            for m in pair_metrics:
                out[m].append(scores[m][:, None])  # (B, 1): one value per clip, banked like a feature
            done.extend(b.indices)
        dims = {"fvd": fvd.extractor.dim, **dict.fromkeys(pair_metrics, 1)}
        return ({k: np.concatenate(v) if v else np.zeros((0, dims[k])) for k, v in out.items()}, done, failed)

    tag = stable_hash({"ae": gen.name, "ckpt": args.checkpoint, "protocol": to_jsonable(fvd.protocol),
                       "n": len(ds), "pairs": {k: [m.protocol, to_jsonable(m.provenance())]
                                                for k, m in pair_metrics.items()}}, length=32)
    stats, done = sharded_stats(len(ds), produce, {"fvd": fvd.extractor.dim, **dict.fromkeys(pair_metrics, 1)},
                                tag=tag, work_dir=run.work_dir / "recon" / tag[:12], chunk_size=args.chunk_size,
                                shard=run.shard, keep_features=True)
    value, std, extra = run.fvd_value(fvd, real, stats["fvd"])
    who = f"{gen.name} autoencoder"
    run.add(Measured("Table 4a", "reconstruction", "fvd", value, std, len(done), real.n, _proto(fvd, args),
                     who, None, notes="same real clips reconstructed; " + _fvd_note(extra)))
    for name, metric in pair_metrics.items():
        per_clip = stats[name].bank.array()[:, 0]  # (n,) float64: each clip's mean over its frames
        provenance = "".join(f"; {k}={v}" for k, v in metric.provenance().items())
        run.add(Measured("Table 4a", "reconstruction", name, float(per_clip.mean()),
                         float(per_clip.std(ddof=1)) if per_clip.size > 1 else None, len(done), len(done),
                         metric.protocol, who, None, unit=metric.unit, higher_is_better=metric.higher_is_better,
                         notes=f"each reconstruction vs its input clip, {frames} frames of {h}x{w}: mean over "
                               f"frames per clip, then mean and sample std (ddof=1) over clips{provenance}"))


TABLES: dict[str, Callable[[Run], None]] = {"ucf101": table1, "msrvtt": table2, "webvid": table3_11,
                                             "ablations": table4}


def reproduce(table: str, argv: Sequence[str]) -> int:
    args = build_parser(table).parse_args(list(argv))
    given = [f for f in ("--checkpoint", "--t2v-checkpoint") if any(a == f or a.startswith(f + "=") for a in argv)]
    if args.tiny and given:  # --tiny samples its own tiny generators on synthetic data: a checkpoint would be unused
        raise ValueError(
            f"reproduce {table} --tiny runs fixed tiny generators on synthetic videos and does not load {given[0]}; "
            "score a trained model (e.g. an assembled miniature) with `cmdbench evaluate --generator NAME "
            "--checkpoint DIR`, or drop --tiny for the real reproduction"
        )
    missing = missing_inputs(table, args)
    if missing:
        raise MissingInputsError(
            f"reproduce {table}: missing inputs (nothing was run):\n" + "\n".join(f"  - {m}" for m in missing)
            + "\nOr run `cmdbench reproduce " + table + " --tiny` for the synthetic CPU check."
        )
    shard = init_distributed_from_env()
    work_dir = Path(args.work_dir) if args.work_dir else _default_work_dir(table, args.tiny)
    run_id = new_run_id(f"repro-{table}{'-tiny' if args.tiny else ''}")
    run = Run(table, args, shard, work_dir, _broadcast(run_id))
    if args.tiny:
        run.log("TINY synthetic run: synthetic videos, tiny generators, tiny-pool-4 FVD features (4-d, so FVD is "
                f"defined with {TINY_COUNT} clips; allow-singular opt-in for the bootstrap resamples), random tiny "
                "CLIP; the numbers exercise the code path and mean nothing")
    TABLES[table](run)
    if shard.rank == 0:
        records, table_path = write_outputs(run)
        print(markdown_table(run))
        print(f"records: {records}\ntable: {table_path}")
    return 0


def _default_work_dir(table: str, tiny: bool) -> Path:
    """``$CMDBENCH_CACHE/work/<table>`` (outside the checkout: checkpoints and synthetic data are not results)."""
    from cmdbench import weights

    return weights.cache_dir() / "work" / (table + ("-tiny" if tiny else ""))


def _broadcast(value: str) -> str:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        obj = [value]
        dist.broadcast_object_list(obj, src=0)
        return obj[0]
    return value


def _register(table: str, description: str) -> None:
    def run(argv: list[str]) -> int:
        try:
            return reproduce(table, argv)
        except MissingInputsError as err:
            print(str(err), file=sys.stderr)
            return 2

    REPRODUCTIONS.register(table, run, description=description)


_register("ucf101", "Table 1: UCF-101 FVD (class-conditional 2,048 and 10,000 protocols; zero-shot 100/class)")
_register("msrvtt", "Table 2: MSR-VTT zero-shot CLIPSIM")
_register("webvid", "Tables 3 and 11: WebVid-10M FVD and CLIPSIM, guidance sweep 7/9/10/11")
_register("ablations", "Table 4a: autoencoder reconstruction FVD on UCF-101")
