"""Assembling three trained CMD stages into one sampling pipeline folder.

``cmdbench train`` writes each stage's result under its ``output_dir``: ``final/<component>`` (EMA
weights), ``final/<component>_raw``, ``final/stage.json`` (steps and weight digests) and, for the diffusion
stages, ``final/frozen/`` (the text encoder, tokenizer and SD VAE the stage trained with). Sampling needs
all of them in one ``CMDPipeline.save_pretrained`` folder; :func:`assemble` writes it, after checking that
the stages belong together:

- the three runs are an autoencoder, a content and a motion run of the same preset (and ``tiny`` flag);
- both diffusion stages trained on the latents of the autoencoder being assembled (weight digests);
- both trained against the same frozen parts (text encoder, tokenizer, VAE digests).

The folder gets the DDIM schedulers of the preset (the schedules each stage trained with) and
``cmdbench_assembly.json``: preset, tiny flag, the stage runs, their steps and digests.
``cmdbench sample PRESET --checkpoint DIR`` (and ``evaluate``, ``bench``, ``reproduce``) read that file to
load a miniature-trained folder as the miniature of the preset.

EMA weights by default; ``raw=True`` takes the diffusion stages' ``_raw`` weights. The autoencoder is
always the exact one the diffusion stages learned the latents of (found by digest among the autoencoder
run's EMA and raw weights): any other would decode latents it never produced.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler
from transformers import CLIPTextModel, CLIPTokenizer

from cmdbench.cmd.autoencoder import CMDAutoencoder
from cmdbench.cmd.latents import autoencoder_digest
from cmdbench.cmd.pipeline import CMDPipeline
from cmdbench.cmd.presets import PRESETS, SCHEDULES, build_pipeline, check_pipeline_matches, miniature
from cmdbench.cmd.training import (
    COMPONENT,
    STAGE_FILE,
    TrainConfig,
    frozen_digests,
    read_train_config,
)

ASSEMBLY_FILE = "cmdbench_assembly.json"
# The frozen parts' classes (the text encoder of every CMD text preset is a CLIPTextModel; see content.py).
FROZEN_LOADERS = {"text_encoder": CLIPTextModel, "tokenizer": CLIPTokenizer, "vae": AutoencoderKL}


class AssemblyError(ValueError):
    """Stage folders that cannot be assembled (missing, unfinished, or not trained together)."""


@dataclass(frozen=True)
class StageRun:
    """A finished training run: its folder, config and ``final/stage.json`` record."""

    stage: str
    run_dir: Path
    config: TrainConfig
    record: dict[str, Any]

    @property
    def final_dir(self) -> Path:
        return self.run_dir / "final"

    def component_dir(self, raw: bool = False) -> Path:
        return self.final_dir / (COMPONENT[self.stage] + ("_raw" if raw else ""))

    @property
    def label(self) -> str:
        return f"{self.stage} run {self.run_dir}"


def find_stage_run(path: str | Path, stage: str) -> StageRun:
    """The finished ``stage`` run of ``path``: its ``output_dir`` or its ``final/<component>[_raw]`` folder."""
    path = Path(path)
    component = COMPONENT[stage]
    if not path.exists():
        raise AssemblyError(f"--{stage}: {path} does not exist; pass the {stage} run's output_dir "
                            f"(with train_config.json) or its final/{component} folder")
    if (path / "train_config.json").is_file():
        run_dir = path
    elif path.name in (component, component + "_raw") and (path.parent.parent / "train_config.json").is_file():
        run_dir = path.parent.parent
    else:
        raise AssemblyError(
            f"--{stage}: {path} is neither a training output_dir (train_config.json) nor its final/{component} "
            f"folder; pass the folder `cmdbench train {stage}` wrote"
        )
    cfg = read_train_config(run_dir)
    if cfg.stage != stage:
        raise AssemblyError(f"--{stage}: {run_dir} is the output of a {cfg.stage!r} run, not a {stage!r} run")
    record_path = run_dir / "final" / STAGE_FILE
    if not record_path.is_file():
        raise AssemblyError(
            f"--{stage}: {run_dir} has not finished ({record_path} is missing): resume it with the same config "
            "until max_steps (the final weights are written at the end)"
        )
    return StageRun(stage, run_dir, cfg, json.loads(record_path.read_text()))


def _check_together(ae: StageRun, content: StageRun, motion: StageRun) -> None:
    runs = (ae, content, motion)
    kinds = {(r.config.preset, r.config.tiny) for r in runs}
    if len(kinds) > 1:
        detail = "; ".join(f"{r.label}: preset {r.config.preset}{' (tiny)' if r.config.tiny else ''}" for r in runs)
        raise AssemblyError(f"the stages were trained for different presets: {detail}")
    frozen = {r.stage: r.record.get("frozen_sha256") for r in (content, motion)}
    if frozen["content"] != frozen["motion"]:
        parts = [k for k in frozen["content"] if frozen["content"][k] != frozen["motion"].get(k)]
        raise AssemblyError(
            f"the content and motion runs trained against different frozen parts ({', '.join(parts)} differ: "
            f"{content.run_dir} vs {motion.run_dir}); train both with the same sd_checkpoint"
        )


def _pick_autoencoder(ae: StageRun, content: StageRun, motion: StageRun) -> tuple[Path, str]:
    """The autoencoder folder (EMA or raw) whose weights both diffusion stages trained on, and its digest."""
    used = {r.stage: r.record["autoencoder"]["sha256"] for r in (content, motion)}
    if used["content"] != used["motion"]:
        raise AssemblyError(
            f"the content run {content.run_dir} and the motion run {motion.run_dir} trained on the latents of "
            f"different autoencoders ({content.record['autoencoder']['path']} vs "
            f"{motion.record['autoencoder']['path']}); train both on the same autoencoder"
        )
    digests = ae.record["weights_sha256"]
    for kind, raw in (("ema", False), ("raw", True)):
        if digests[kind] == used["content"]:
            return ae.component_dir(raw), digests[kind]
    raise AssemblyError(
        f"the diffusion stages trained on the autoencoder {content.record['autoencoder']['path']}, which is not "
        f"the autoencoder of {ae.label} (neither its EMA nor its raw weights); pass the autoencoder run they used"
    )


def _load_checked(cls, folder: Path, digest: str, what: str):
    model = cls.from_pretrained(folder, local_files_only=True)
    if autoencoder_digest(model) != digest:
        raise AssemblyError(f"{what} in {folder} does not match the digest recorded at the end of training "
                            "(the folder was changed afterwards)")
    return model


def assemble(autoencoder: str | Path, content: str | Path, motion: str | Path, out: str | Path, *,
             raw: bool = False) -> Path:
    """Write the ``CMDPipeline.save_pretrained`` folder ``out`` of three finished stage runs.

    ``autoencoder`` / ``content`` / ``motion``: each run's ``output_dir`` or its ``final/<component>``
    folder. ``raw``: the diffusion stages' raw weights instead of their EMA. Returns ``out``.
    """
    runs = {"autoencoder": find_stage_run(autoencoder, "autoencoder"), "content": find_stage_run(content, "content"),
            "motion": find_stage_run(motion, "motion")}
    ae_run, content_run, motion_run = runs["autoencoder"], runs["content"], runs["motion"]
    _check_together(ae_run, content_run, motion_run)
    cfg = content_run.config
    preset = miniature(PRESETS[cfg.preset]) if cfg.tiny else PRESETS[cfg.preset]
    kind = "raw" if raw else "ema"

    expected = build_pipeline(preset, device="meta")  # the component classes, without allocating weights
    ae_dir, ae_digest = _pick_autoencoder(ae_run, content_run, motion_run)
    parts: dict[str, Any] = {"autoencoder": _load_checked(CMDAutoencoder, ae_dir, ae_digest, "the autoencoder")}
    for run in (content_run, motion_run):
        name = COMPONENT[run.stage]
        parts[name] = _load_checked(type(getattr(expected, name)), run.component_dir(raw),
                                    run.record["weights_sha256"][kind], f"the {name}")
    frozen_dir = motion_run.final_dir / "frozen"
    frozen_sha = motion_run.record["frozen_sha256"]
    for name, cls in FROZEN_LOADERS.items():
        parts[name] = cls.from_pretrained(frozen_dir / name) if frozen_sha.get(name) is not None else None
    pipe = CMDPipeline(
        content_scheduler=DDIMScheduler.from_config(SCHEDULES[preset.content_schedule]),
        motion_scheduler=DDIMScheduler.from_config(SCHEDULES[preset.motion_schedule]),
        **{k: (v.eval() if isinstance(v, torch.nn.Module) else v) for k, v in parts.items()},
    )
    if frozen_digests(pipe) != frozen_sha:
        raise AssemblyError(f"the frozen parts in {frozen_dir} do not match their recorded digests")
    check_pipeline_matches(pipe, preset, f"assembled from {', '.join(str(r.run_dir) for r in runs.values())}")

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not (out / ASSEMBLY_FILE).is_file():
            raise AssemblyError(f"--out {out} exists and is not an assembled pipeline folder; choose a new folder")
        shutil.rmtree(out)
    pipe.save_pretrained(str(out))
    meta = {
        "preset": cfg.preset, "tiny": cfg.tiny, "weights": kind,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "stages": {
            stage: {"run_dir": str(run.run_dir.resolve()), "steps": run.record["steps"],
                    "weights_sha256": run.record["weights_sha256"], "seed": run.config.seed}
            for stage, run in runs.items()
        },
        "autoencoder_sha256": ae_digest,
        "frozen_sha256": frozen_sha,
        "sd_checkpoint": cfg.sd_checkpoint,
    }
    (out / ASSEMBLY_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out


def read_assembly(folder: str | Path) -> dict[str, Any] | None:
    """The ``cmdbench_assembly.json`` of a pipeline folder, or ``None`` (a folder not made by :func:`assemble`)."""
    path = Path(folder) / ASSEMBLY_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise AssemblyError(f"{path} is not valid JSON ({err})") from None


__all__ = ["ASSEMBLY_FILE", "AssemblyError", "StageRun", "assemble", "find_stage_run", "read_assembly"]
