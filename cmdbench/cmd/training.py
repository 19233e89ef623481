"""Training CMD's three stages with accelerate (Yu et al., ICLR 2024, §3.2, App. B.3, Tables 5-7).

Stages and losses (paper):
- ``autoencoder``: reconstruction, ``||x − g(f(x))||²`` (ℓ2; ``ae_loss="l1"`` optional), plus an optional
  LPIPS term ``lpips_weight · mean_l LPIPS(x_l, x̂_l)`` over frames (pixel mode only; the authors' release
  trains with one). In latent mode ``x`` is the clip of SD VAE latents (each frame encoded, times the VAE's
  scaling factor). Adam, lr 1e-5, betas (0.5, 0.9), no weight decay (App. B.3).
- ``content``: ε-prediction ``||ε − ε_θI(x̄_t, c, t)||²`` on content frames ``x̄`` from the frozen
  autoencoder (Eq. 7), with the content model's noise schedule (SD's for the UNet, DiT's linear one for the
  pixel DiT). Adam, lr 1e-4, betas (0.9, 0.999).
- ``motion``: ε-prediction ``||ε − ε_θM(z_t, c, x̄, t)||²`` on motion latents ``z`` with the clean
  content frame ``x̄`` as a dense condition (Eq. 8), DiT's linear schedule. Adam, lr 1e-4, betas (0.9, 0.999).
  Text features enter the motion DiT as a masked mean over the prompt's tokens
  (``CMDPipeline.encode_prompt_with_mask``), as at sampling time.
Both diffusion stages drop the condition with probability ``cond_dropout`` (0.1): the null class
(index ``num_classes``) or the empty prompt "", so classifier-free guidance works at sampling time.
``x_t = sqrt(ᾱ_t) x_0 + sqrt(1 − ᾱ_t) ε`` with ``t`` uniform in ``0..999`` (diffusers' ``DDPMScheduler``
built from the stage's entry of ``presets.SCHEDULES``; the sampler uses the same entry).

Mechanics: ``accelerate.Accelerator`` (one GPU, or ``accelerate launch`` over many; ``mixed_precision``
"no" | "fp16" | "bf16"; the frozen encoders (text encoder, SD VAE, CMD autoencoder) also run under autocast,
losses are reduced in float32). Gradient accumulation with ``accelerator.accumulate``: an optimizer step
sees ``batch_size x processes x gradient_accumulation_steps`` clips (the *global batch*, which a config may
state directly as ``global_batch_size``); gradient-norm clipping (1.0), the optimizer step, diffusers'
``EMAModel`` step (decay 0.999 per the paper, with diffusers' ``(1 + n)/(10 + n)`` warm-up), step counting
and checkpoints all happen per optimizer step. Checkpoints are ``accelerator.save_state`` folders (model,
optimizer, EMA, every RNG) plus ``step.json``; a run restarted with the same config resumes from the newest
one and continues exactly: the data order is a function of ``(seed, micro-step, rank)`` only, and the noise,
timesteps and dropout come from the restored RNGs.

Data. The loop consumes an iterator of batches, made for the resumed micro-step by a *batch source*
``source(start_step=, rank=, world_size=, batch_size=) -> Iterable[batch]`` (e.g. a DataLoader):
- pixel batches with ``videos`` (uint8 ``(B, T, 3, H, W)``), ``conditions``, ``ids`` and ``replaced`` (the
  clips that failed to decode and were replaced, ``cmdbench.data.policy.SkippedItem``), e.g. the training
  clip loader of ``cmdbench.data.train_clips`` (``cmdbench train`` uses it); or
- latent batches with ``content`` ``(B, C, h, w)``, ``motion`` ``(B, D, L, W_m)`` and ``conditions``.
An in-memory ``Sequence`` of items (``(video, condition)`` pairs, or ``ClipItem`` / ``SkippedClip`` of a
``ClipDataset``) is wrapped by :class:`SequenceSource`. Every replaced clip is logged and appended to
``<output_dir>/skipped.jsonl``.

Precomputed latents (``precompute_latents``, diffusion stages): before step 0 every process encodes its
share of one epoch of the pixel source (``len(source)`` clips; ``clips_per_video`` windows per video) into
the sharded fp16 WebDataset store of :mod:`cmdbench.data.latent_store`, all processes in parallel, each
resuming its own part after a kill; then each polls until every part is finished (``wait_for_store``: no
collective barrier that a long build could time out) and trains from ``open_latent_loader``. The store's
folder ``<latent_store>/latents-<key>`` is named by :func:`cmdbench.cmd.latents.latent_store_key`: the
pixel source's ``describe()``, the frozen encoders' weight digests, the preset, the seed and the autocast
dtype, so runs with the same data and encoders share one store. The pixel source must therefore have a
``describe()`` and a length (``cmdbench train``'s loader and :class:`SequenceSource` do).

Run records in ``output_dir``: ``train_config.json``, ``run_info.json`` (processes, accumulation, global
batch), ``skipped.jsonl``, ``checkpoints/step-N/``, and at the end ``final/<component>`` (EMA weights),
``final/<component>_raw``, ``final/stage.json`` (steps and weight digests) and, for the diffusion stages,
``final/frozen/{text_encoder,tokenizer,vae}``: the frozen parts the stage trained with, which
``cmdbench.cmd.assemble`` puts into the sampling pipeline.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.training_utils import EMAModel

from cmdbench import perceptual
from cmdbench.cmd.autoencoder import CMDAutoencoder
from cmdbench.cmd.latents import (
    autoencoder_digest,
    build_latent_store,
    encode_clips,
    finished_store,
    latent_store_key,
    open_latent_loader,
    sample_seed,
    stored_samples,
    videos_to_model_space,
    wait_for_store,
)
from cmdbench.cmd.pipeline import CMDPipeline
from cmdbench.cmd.presets import PRESETS, SCHEDULES, TINY, CMDPreset, build_pipeline, miniature
from cmdbench.perceptual import load_lpips

if TYPE_CHECKING:
    from cmdbench.data.latent_store import LatentStore

logger = logging.getLogger(__name__)

STAGES = ("autoencoder", "content", "motion")
MIXED_PRECISION = ("no", "fp16", "bf16")
AUTOCAST_DTYPE = {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}
AE_LOSSES = ("l2", "l1")
# LPIPS nets and backbones: cmdbench.perceptual ("imagenet" = torchvision's ImageNet backbone from the
# cmdbench weights cache; "random" = untrained, tests of the plumbing only).
LPIPS_NETS, LPIPS_BACKBONES = perceptual.LPIPS_NETS, perceptual.BACKBONES
# Paper optimisers (App. B.3): autoencoder Adam 1e-5 (0.5, 0.9); diffusion models Adam 1e-4 (0.9, 0.999).
PAPER_OPTIMIZER = {
    "autoencoder": (1e-5, (0.5, 0.9)),
    "content": (1e-4, (0.9, 0.999)),
    "motion": (1e-4, (0.9, 0.999)),
}
COMPONENT = {"autoencoder": "autoencoder", "content": "content_model", "motion": "motion_model"}
FROZEN_PARTS = ("text_encoder", "tokenizer", "vae")
# Random frozen parts (miniatures without a Stable Diffusion folder) are built with this seed, whatever the
# run's seed, so the content and motion runs of one miniature share them (as ``GeneratorSpec(tiny=True)`` does).
FROZEN_RANDOM_SEED = 0
DATA_POLICIES = ("strict", "skip")  # == cmdbench.data.policy.POLICIES (cmd/ does not import data/)
# dataset_options keys that are clip settings, and where each one goes instead.
CLIP_SETTINGS = {
    "stride": "set the top-level TrainConfig field \"stride\" (frame step)",
    "fps": "set the top-level TrainConfig field \"fps\" (target frame rate)",
    "clips_per_video": "set the top-level TrainConfig field \"clips_per_video\"",
    "num_clips": "set the top-level TrainConfig field \"clips_per_video\" (windows per video and epoch)",
    "policy": "set the top-level TrainConfig field \"policy\" (strict | skip)",
    "seed": "set the top-level TrainConfig field \"seed\"",
    "num_frames": "the preset fixes the clip length (preset / tiny)",
    "size": "the preset fixes the frame size (preset / tiny)",
    "clip": "the clips are cut from the preset and the fields stride, fps, clips_per_video, policy and seed",
}
STAGE_FILE = "stage.json"
SKIPPED_FILE = "skipped.jsonl"
RUN_INFO_FILE = "run_info.json"


class TrainConfigError(ValueError):
    """A training configuration that cannot run (the message names the field and what is allowed)."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; saved as ``train_config.json`` beside the checkpoints.

    stage: "autoencoder" | "content" | "motion". preset: a name in ``PRESETS``; ``tiny`` trains its
    random miniature (``cmd-tiny`` is one already). dataset / data_dir / dataset_options: the dataset
    registry name (``folder``, ``ucf101``, ``webvid``), its root and extra keyword options (used by
    ``cmdbench train``).
    autoencoder: the trained autoencoder the diffusion stages encode with: its run's ``output_dir``, its
    ``final/autoencoder`` folder, or a CMD pipeline folder (required unless the run is a miniature).
    init_from: a CMD pipeline folder whose components initialise the run (e.g. to continue a stage).
    sd_checkpoint: a local Stable Diffusion folder (diffusers layout): its UNet initialises the content model
    (fine-tuned with no new parameters, Eq. 7), and its text encoder, tokenizer and VAE are used frozen
    (required for the full-size SD presets).
    batch_size: per process and micro-step. gradient_accumulation_steps / global_batch_size: micro-steps per
    optimizer step, or the global batch ``batch_size x processes x gradient_accumulation_steps`` it implies
    (give either, or both when they agree). learning_rate / adam_betas: ``None`` takes the paper's.
    max_steps / checkpoint_every: optimizer steps. ``keep_checkpoints`` newest checkpoints are kept.
    lpips_weight / lpips_net / lpips_backbone: the autoencoder's optional LPIPS term (0 = off).
    Training clips (``cmdbench train``; :mod:`cmdbench.data.train_clips`): a fresh random window of
    ``num_frames`` (the preset's) frames on every access; ``stride`` takes every ``stride``-th frame, or
    ``fps`` a target frame rate (stride derived per video from its own rate; then leave ``stride`` at 1);
    ``clips_per_video`` windows per video and epoch; ``policy`` for unreadable clips: ``strict`` stops,
    ``skip`` replaces each by a seeded re-draw and names it in ``skipped.jsonl``. These are TrainConfig
    fields, not ``dataset_options`` (those are the dataset's listing options: ``split``/``fold`` for
    ``ucf101``, ``captions`` for ``folder``, ``csv``/``video_root``/``limit``/``check_files`` for ``webvid``).
    num_workers / prefetch_factor / pin_memory: the DataLoader's decoding processes, batches each prepares
    ahead, and page-locked batches (``None``: on when training on CUDA).
    max_frames_per_call: frames the SD VAE encodes per call (bounded memory; latent presets).
    precompute_latents: encode one epoch of clips once with the frozen encoders into a sharded fp16 store
    (``latent_store`` folder, default ``<output_dir>/latents``; ``latent_samples_per_shard`` samples per
    WebDataset shard) and train the diffusion stages from it (see the module docstring).
    content_run / assemble_to (motion stage): when both are set, the finished motion run is assembled with
    the content run and ``autoencoder`` into a sampling pipeline folder ``assemble_to``.
    """

    stage: str
    output_dir: str
    preset: str = "cmd-tiny"
    tiny: bool = False
    dataset: str = "folder"
    data_dir: str = ""
    dataset_options: dict[str, Any] = field(default_factory=dict)
    autoencoder: str | None = None
    init_from: str | None = None
    sd_checkpoint: str | None = None
    batch_size: int = 1
    gradient_accumulation_steps: int | None = None
    global_batch_size: int | None = None
    max_steps: int = 1000
    learning_rate: float | None = None
    adam_betas: tuple[float, float] | None = None
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    seed: int = 0
    cond_dropout: float = 0.1
    ae_loss: str = "l2"
    lpips_weight: float = 0.0
    lpips_net: str = "alex"
    lpips_backbone: str = "imagenet"
    stride: int = 1
    fps: float | None = None
    clips_per_video: int = 1
    policy: str = "strict"
    num_workers: int = 2
    prefetch_factor: int = 2
    pin_memory: bool | None = None
    max_frames_per_call: int = 16
    precompute_latents: bool = False
    latent_store: str | None = None
    latent_samples_per_shard: int = 1000
    log_every: int = 50
    content_run: str | None = None
    assemble_to: str | None = None

    def __post_init__(self) -> None:
        def bad(name: str, allowed: str) -> TrainConfigError:
            return TrainConfigError(f"TrainConfig.{name}={getattr(self, name)!r} is not allowed; {allowed}")

        if self.stage not in STAGES:
            raise bad("stage", f"use one of {STAGES}")
        if self.preset not in PRESETS:
            raise bad("preset", f"use one of {sorted(PRESETS)}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise bad("mixed_precision", f"use one of {MIXED_PRECISION}")
        if self.ae_loss not in AE_LOSSES:
            raise bad("ae_loss", f"use one of {AE_LOSSES}")
        for name in ("batch_size", "max_steps", "checkpoint_every", "keep_checkpoints", "log_every", "stride",
                     "clips_per_video", "prefetch_factor", "max_frames_per_call", "latent_samples_per_shard"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise bad(name, "use a positive integer")
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise bad("num_workers", "use 0 (decode in the training process) or more worker processes")
        if self.policy not in DATA_POLICIES:
            raise bad("policy", f"use one of {DATA_POLICIES} (for clips that cannot be read)")
        if self.fps is not None and (isinstance(self.fps, bool) or not self.fps > 0):
            raise bad("fps", "use a positive target frame rate, or null to take frames at `stride`")
        if self.fps is not None and self.stride != 1:
            raise TrainConfigError(f"TrainConfig sets both stride={self.stride} and fps={self.fps}; set one (with fps "
                                   "the frame step of each video is derived from its own frame rate)")
        self._check_dataset_options()
        for name in ("gradient_accumulation_steps", "global_batch_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise bad(name, "use a positive integer (or leave it unset)")
        if not 0.0 <= self.cond_dropout < 1.0:
            raise bad("cond_dropout", "use a probability in [0, 1)")
        if not 0.0 <= self.ema_decay < 1.0:
            raise bad("ema_decay", "use a decay in [0, 1)")
        if self.grad_clip <= 0:
            raise bad("grad_clip", "use a positive max gradient norm")
        if self.adam_betas is not None:
            object.__setattr__(self, "adam_betas", tuple(float(b) for b in self.adam_betas))
            if len(self.adam_betas) != 2:
                raise bad("adam_betas", "use two numbers, e.g. [0.9, 0.999]")
        self._check_lpips()
        self._check_required_parts()
        if self.assemble_to is not None and (self.stage != "motion" or self.content_run is None):
            raise TrainConfigError(
                "TrainConfig.assemble_to assembles the pipeline at the end of the motion stage: set stage='motion', "
                "content_run=<the content run's output_dir> and autoencoder=<the autoencoder run>"
            )

    def _check_dataset_options(self) -> None:
        """Clip settings are TrainConfig fields; ``dataset_options`` holds only the dataset's listing options."""
        if not isinstance(self.dataset_options, dict):
            raise TrainConfigError(f"TrainConfig.dataset_options={self.dataset_options!r}: use a JSON object of "
                                   "the dataset's listing options (e.g. {\"split\": \"train\", \"fold\": 1})")
        for key in sorted(self.dataset_options):
            where = CLIP_SETTINGS.get(key)
            if where is not None:
                raise TrainConfigError(
                    f"TrainConfig.dataset_options[{key!r}] is a clip setting, not a listing option of the "
                    f"{self.dataset!r} dataset: {where}"
                )

    def _check_lpips(self) -> None:
        if self.lpips_net not in LPIPS_NETS:
            raise TrainConfigError(f"TrainConfig.lpips_net={self.lpips_net!r} is not allowed; use one of {LPIPS_NETS}")
        if self.lpips_backbone not in LPIPS_BACKBONES:
            raise TrainConfigError(
                f"TrainConfig.lpips_backbone={self.lpips_backbone!r} is not allowed; use one of {LPIPS_BACKBONES} "
                "('random' is for tests only: its values are not LPIPS)"
            )
        if self.lpips_weight < 0:
            raise TrainConfigError(f"TrainConfig.lpips_weight={self.lpips_weight!r}: use a weight >= 0 (0 = off)")
        if self.lpips_weight > 0 and self.stage != "autoencoder":
            raise TrainConfigError(
                f"TrainConfig.lpips_weight applies to the autoencoder stage only (stage is {self.stage!r}); set it to 0"
            )
        if self.lpips_weight > 0 and PRESETS[self.preset].latent_mode:
            raise TrainConfigError(
                f"TrainConfig.lpips_weight: preset {self.preset} trains the autoencoder on Stable Diffusion VAE "
                "latents, and LPIPS compares RGB frames; decoding every training clip through the SD VAE is not "
                "supported. Set lpips_weight=0 for this preset (the pixel preset cmd-ucf101-64 supports it)"
            )

    @property
    def is_miniature(self) -> bool:
        """Random miniatures (``tiny`` or ``cmd-tiny``) may train without the real frozen parts."""
        return self.tiny or self.preset == TINY.name

    def _check_required_parts(self) -> None:
        """Full-size runs need their real parts: no silent training on random frozen networks."""
        if self.is_miniature:
            return
        preset = PRESETS[self.preset]
        if preset.latent_mode and self.sd_checkpoint is None:
            raise TrainConfigError(
                f"preset {self.preset} works in Stable Diffusion {preset.sd_version} latents: set "
                f"sd_checkpoint to a local Stable Diffusion {preset.sd_version} folder in the diffusers layout "
                "(text_encoder/, tokenizer/, vae/, unet/), or tiny=true for a random miniature"
            )
        if self.stage != "autoencoder" and self.autoencoder is None and self.init_from is None:
            raise TrainConfigError(
                f"the {self.stage} stage of {self.preset} learns the latents of a trained autoencoder: set "
                "autoencoder to the autoencoder run's output_dir (or its final/autoencoder folder), trained with "
                "`cmdbench train autoencoder`; or tiny=true for a random miniature"
            )

    @property
    def optimizer(self) -> tuple[float, tuple[float, float]]:
        lr, betas = PAPER_OPTIMIZER[self.stage]
        return (self.learning_rate or lr, tuple(self.adam_betas or betas))

    def resolved_preset(self) -> CMDPreset:
        preset = PRESETS[self.preset]
        return miniature(preset) if self.tiny else preset

    def accumulation(self, world_size: int) -> tuple[int, int]:
        """``(gradient_accumulation_steps, global_batch_size)`` on ``world_size`` processes."""
        per_micro = self.batch_size * world_size
        accum, total = self.gradient_accumulation_steps, self.global_batch_size
        if total is None:
            accum = accum or 1
            return accum, per_micro * accum
        if total % per_micro:
            raise TrainConfigError(
                f"TrainConfig.global_batch_size={total} is not batch_size {self.batch_size} x {world_size} "
                f"process(es) x a whole number of accumulation steps; use a multiple of {per_micro}, or change "
                "batch_size"
            )
        if accum is not None and accum * per_micro != total:
            raise TrainConfigError(
                f"TrainConfig.global_batch_size={total} disagrees with batch_size {self.batch_size} x {world_size} "
                f"process(es) x gradient_accumulation_steps {accum} = {accum * per_micro}; give one of the two"
            )
        return total // per_micro, total

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise TrainConfigError(f"{source}: unknown keys {unknown}; allowed keys: {sorted(allowed)}")
        missing = [k for k in ("stage", "output_dir") if k not in data]
        if missing:
            raise TrainConfigError(f"{source}: missing required keys {missing}")
        return cls(**data)

    @classmethod
    def from_json(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"training config {path} does not exist")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise TrainConfigError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(data, dict):
            raise TrainConfigError(f"{path}: expected a JSON object of TrainConfig fields")
        return cls.from_dict(data, str(path))


# --- Data: the in-memory path behind the batch-iterator shape -----------------------------------------------


def sample_index(seed: int, global_position: int, n: int) -> int:
    """Dataset index at ``global_position`` of the in-memory path's seeded epoch-wise shuffle: a fresh
    permutation of ``n`` per epoch, a function of ``(seed, position)`` only (so a resumed run sees the same
    order). A table of ``n`` entries per call: for in-memory datasets; listed datasets use the O(1)
    ``cmdbench.data.epoch_order`` through ``cmdbench.data.train_clips``."""
    epoch, offset = divmod(global_position, n)
    return int(_epoch_permutation(seed, epoch, n)[offset])


def _epoch_permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


@dataclass
class SequenceBatch:
    """A pixel batch of an in-memory dataset. ``videos`` uint8 ``(B, T, 3, H, W)``; ``positions`` are the
    global positions in the seeded order (they seed the per-clip VAE posterior noise)."""

    videos: torch.Tensor
    conditions: list[Any]
    ids: list[str]
    positions: list[int]
    replaced: list[Any] = field(default_factory=list)


BatchSource = Callable[..., Iterable[Any]]  # (start_step=, rank=, world_size=, batch_size=) -> batches


def _read_item(dataset: Sequence[Any], index: int) -> tuple[torch.Tensor, Any, str] | Any:
    """``(video, condition, id)`` of item ``index``, or a ``SkippedItem`` when the clip could not be read."""
    from cmdbench.data.policy import SkippedItem

    item = dataset[index]
    video = getattr(item, "video", None)
    if video is not None:
        return video, getattr(item, "condition", None), str(getattr(item, "id", index))
    if isinstance(item, tuple) and len(item) >= 2 and isinstance(item[0], torch.Tensor):
        return item[0], item[1], str(index)
    if hasattr(item, "reason"):  # cmdbench.data.clips.SkippedClip (skip policy)
        return SkippedItem(str(getattr(item, "source", index)), str(item.reason), "decode")
    raise TypeError(f"dataset item {index} is a {type(item).__name__}; expected (video, condition) or a ClipItem")


def sequence_batches(
    dataset: Sequence[Any], *, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, start_step: int = 0
) -> Iterator[SequenceBatch]:
    """Endless pixel batches of an in-memory dataset, from micro-step ``start_step`` on.

    Micro-step ``s`` of process ``rank`` takes global positions ``(s * world_size + rank) * batch_size + j``
    of a seeded epoch-wise shuffle (:func:`sample_index`), so every process sees disjoint clips and a
    resumed run the same ones. A clip that cannot be read (a ``SkippedClip`` under the ``skip`` policy) is
    replaced by the next readable clip of the same epoch's order and named in ``replaced``.
    """
    from cmdbench.data.policy import DatasetError

    n = len(dataset)
    if n == 0:
        raise ValueError("the training dataset is empty")
    cached: tuple[int, torch.Tensor] | None = None
    step = start_step
    while True:
        videos, conditions, ids, positions, replaced = [], [], [], [], []
        for j in range(batch_size):
            position = (step * world_size + rank) * batch_size + j
            epoch, offset = divmod(position, n)
            if cached is None or cached[0] != epoch:
                cached = (epoch, _epoch_permutation(seed, epoch, n))
            for k in range(n):
                got = _read_item(dataset, int(cached[1][(offset + k) % n]))
                if isinstance(got, tuple):
                    break
                replaced.append(got)
            else:
                raise DatasetError(f"every clip of the training dataset failed to decode ({replaced[-1].reason})")
            videos.append(got[0])
            conditions.append(got[1])
            ids.append(got[2])
            positions.append(position)
        _check_same_shape(videos, ids)
        yield SequenceBatch(torch.stack(videos), conditions, ids, positions, replaced)
        step += 1


class SequenceSource:
    """An in-memory ``Sequence`` of clips as a batch source (:func:`sequence_batches`), with a length and a
    ``describe()`` (the dataset's own, else a sha256 of every item's frames, condition and id) so it can
    also feed a latent store."""

    def __init__(self, dataset: Sequence[Any], seed: int):
        if len(dataset) == 0:
            raise ValueError("the training dataset is empty")
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __call__(self, *, start_step: int, rank: int, world_size: int, batch_size: int) -> Iterator[SequenceBatch]:
        return sequence_batches(self.dataset, batch_size=batch_size, seed=self.seed, rank=rank,
                                world_size=world_size, start_step=start_step)

    def describe(self) -> dict[str, Any]:
        own = getattr(self.dataset, "describe", None)
        if callable(own):
            return own()
        h = hashlib.sha256()
        for i in range(len(self.dataset)):
            got = _read_item(self.dataset, i)
            if isinstance(got, tuple):
                video, condition, item_id = got
                h.update(json.dumps([item_id, condition, str(video.dtype), list(video.shape)], default=str).encode())
                h.update(video.contiguous().numpy().tobytes())
            else:
                h.update(json.dumps(["skipped", got.source, got.reason]).encode())
        return {"dataset": "in-memory", "items": len(self.dataset), "sha256": h.hexdigest()}


def _check_same_shape(videos: list[torch.Tensor], ids: list[str]) -> None:
    shapes = {tuple(v.shape) for v in videos}
    if len(shapes) > 1:
        detail = ", ".join(f"{i}: {tuple(v.shape)}" for i, v in zip(ids, videos, strict=True))
        raise ValueError(f"clips of different sizes cannot be batched ({detail}); set the dataset's clip size")


def _autocast(device: torch.device | str, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def _check_videos(videos: torch.Tensor, preset: CMDPreset, ids: Sequence[str]) -> None:
    want = (preset.num_frames, 3, preset.height, preset.width)
    if videos.ndim != 5 or tuple(videos.shape[1:]) != want or videos.dtype != torch.uint8:
        raise ValueError(
            f"training clips {list(ids)[:4]} are {videos.dtype} {tuple(videos.shape[1:])}; preset {preset.name} "
            f"trains on uint8 (T, 3, H, W) = {want} (set the dataset's clip length and size to the preset's)"
        )


# --- Data: the precomputed latent store -------------------------------------------------------------------


def rank_share(total: int, rank: int, world_size: int, batch_size: int) -> int:
    """How many of the global positions ``0 .. total - 1`` fall to ``rank``, when micro-step ``s`` of
    ``rank`` holds positions ``(s * world_size + rank) * batch_size + j`` (the loaders' layout). The ranks'
    shares of one epoch add up to ``total``, and each is a prefix of that rank's stream."""
    rounds, rest = divmod(total, world_size * batch_size)
    return rounds * batch_size + min(max(rest - rank * batch_size, 0), batch_size)


def latent_store_source(cfg: TrainConfig, pixels: BatchSource, pipe: CMDPipeline, preset: CMDPreset, *,
                        rank: int, world_size: int, pin_memory: bool = False) -> tuple[BatchSource, LatentStore]:
    """Build (or resume, or reuse) this rank's part of the latent store of one epoch of ``pixels``, wait for
    the other ranks' parts, and return ``(batch source of the store, the finished store)``.

    ``pixels`` needs ``describe()`` and ``len()`` (one epoch). Rank ``r`` encodes the positions of the
    epoch its own loader would read (:func:`rank_share`), starting after the samples it already stored.
    """
    describe, length = getattr(pixels, "describe", None), getattr(pixels, "__len__", None)
    if not callable(describe) or not callable(length):
        raise TrainConfigError(
            "precompute_latents needs a training dataset with describe() and a length (they name and size the "
            f"latent store); {type(pixels).__name__} has not both: pass a Sequence of clips, the loader of "
            "`cmdbench train` (cmdbench.data.train_clips.ClipBatchSource), or set precompute_latents=false"
        )
    autocast_dtype = AUTOCAST_DTYPE[cfg.mixed_precision]
    key = latent_store_key(describe(), pipe.autoencoder, pipe.vae, preset, cfg.seed, autocast_dtype=autocast_dtype)
    store = Path(cfg.latent_store or Path(cfg.output_dir) / "latents") / f"latents-{key}"
    finished = finished_store(store, key)  # e.g. built before, by any number of processes: read as it is
    if finished is None:
        total = length()
        mine = rank_share(total, rank, world_size, cfg.batch_size)
        start = stored_samples(store, rank) // cfg.batch_size  # whole batches already stored are not read again
        logger.info("latent store %s: rank %d encodes %d of %d clips (%d stored before)", store, rank, mine, total,
                    min(start * cfg.batch_size, mine))
        build_latent_store(
            pixels(start_step=start, rank=rank, world_size=world_size, batch_size=cfg.batch_size), store,
            pipe.autoencoder, pipe.vae, rank=rank, world_size=world_size, seed=cfg.seed,
            samples_per_shard=cfg.latent_samples_per_shard, autocast_dtype=autocast_dtype, num_samples=mine,
            key=key, max_frames_per_call=cfg.max_frames_per_call, first_sample=start * cfg.batch_size,
        )
        finished = wait_for_store(store, world_size=world_size, identity={"key": key}, poll_s=2.0)  # no barrier
    identity = {"key": key}

    def source(**kw: Any) -> Iterator[Any]:
        # one reader process at most: every batch of a rank's stream comes from the same few shards, so more
        # workers would each read and hash the same shards again
        return open_latent_loader(store, seed=cfg.seed, identity=identity, num_workers=min(cfg.num_workers, 1),
                                  pin_memory=pin_memory, **kw)

    return source, finished


# --- Models -------------------------------------------------------------------------------------------


def tokenizer_digest(tokenizer) -> str | None:
    """sha256 of a tokenizer's vocabulary and maximum length (``None`` for no tokenizer)."""
    if tokenizer is None:
        return None
    blob = json.dumps({"vocab": tokenizer.get_vocab(), "max": int(tokenizer.model_max_length)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def frozen_digests(pipe: CMDPipeline) -> dict[str, str | None]:
    """Digests of the frozen parts (text encoder, tokenizer, SD VAE) a diffusion stage trains with."""
    return {
        "text_encoder": autoencoder_digest(pipe.text_encoder) if pipe.text_encoder is not None else None,
        "tokenizer": tokenizer_digest(pipe.tokenizer),
        "vae": autoencoder_digest(pipe.vae) if pipe.vae is not None else None,
    }


def read_train_config(run_dir: Path) -> TrainConfig | None:
    """The ``train_config.json`` of a training run folder, or ``None`` when there is none."""
    path = Path(run_dir) / "train_config.json"
    return TrainConfig.from_json(path) if path.is_file() else None


def autoencoder_folder(path: str | Path) -> tuple[Path, str | None, TrainConfig | None]:
    """Where the trained autoencoder of ``path`` is: ``(folder, subfolder, the run's TrainConfig or None)``.

    ``path``: an autoencoder run's ``output_dir`` (its EMA ``final/autoencoder``), a ``CMDAutoencoder``
    folder (``config.json``; the run's config is read two levels up when it is ``final/<name>``), or a CMD
    pipeline folder (``autoencoder/``).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"autoencoder folder {path} does not exist (train one with `cmdbench train autoencoder` and pass its "
            "output_dir or final/autoencoder folder)"
        )
    run_cfg = read_train_config(path)
    if run_cfg is not None:
        if run_cfg.stage != "autoencoder":
            raise TrainConfigError(f"{path} is the output of a {run_cfg.stage!r} run, not an autoencoder run")
        folder = path / "final" / COMPONENT["autoencoder"]
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"autoencoder run {path} has no final weights ({folder}): train it to max_steps first"
            )
        return folder, None, run_cfg
    if (path / "autoencoder" / "config.json").is_file():
        return path, "autoencoder", None
    if (path / "config.json").is_file():
        return path, None, read_train_config(path.parent.parent)
    raise FileNotFoundError(
        f"autoencoder folder {path} has neither train_config.json, config.json nor autoencoder/config.json "
        "(train one with `cmdbench train autoencoder` and pass its output_dir or final/autoencoder folder)"
    )


def load_autoencoder(path: str | Path) -> CMDAutoencoder:
    """A trained ``CMDAutoencoder`` (see :func:`autoencoder_folder` for what ``path`` may be)."""
    folder, subfolder, _ = autoencoder_folder(path)
    kwargs = {"subfolder": subfolder} if subfolder else {}
    return CMDAutoencoder.from_pretrained(folder, local_files_only=True, **kwargs)


def build_components(cfg: TrainConfig) -> CMDPipeline:
    """Every component of the preset: random weights seeded by ``cfg.seed`` (random frozen parts by
    ``FROZEN_RANDOM_SEED``), then ``init_from`` / ``autoencoder`` weights where given."""
    preset = cfg.resolved_preset()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        pipe = build_pipeline(preset, sd_checkpoint=cfg.sd_checkpoint)
    if cfg.sd_checkpoint is None and (pipe.text_encoder is not None or pipe.vae is not None):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(FROZEN_RANDOM_SEED)
            frozen = build_pipeline(preset)
        pipe.register_modules(text_encoder=frozen.text_encoder, vae=frozen.vae)
    if cfg.init_from is not None:
        from cmdbench.cmd.presets import check_pipeline_matches

        init = CMDPipeline.from_pretrained(cfg.init_from, local_files_only=True)
        check_pipeline_matches(init, preset, repr(cfg.init_from))
        pipe = init
    if cfg.autoencoder is not None:
        _, _, ae_cfg = autoencoder_folder(cfg.autoencoder)
        if ae_cfg is not None and (ae_cfg.preset, ae_cfg.tiny) != (cfg.preset, cfg.tiny):
            raise TrainConfigError(
                f"autoencoder {cfg.autoencoder} was trained for preset {ae_cfg.preset}"
                f"{' (tiny)' if ae_cfg.tiny else ''}; this run is {cfg.preset}{' (tiny)' if cfg.tiny else ''}"
            )
        ae = load_autoencoder(cfg.autoencoder)
        want = pipe.autoencoder.config
        diffs = [k for k in ("in_channels", "num_frames", "sample_size", "patch_size", "motion_channels")
                 if _norm(ae.config[k]) != _norm(want[k])]
        if diffs:
            detail = ", ".join(f"{k}={ae.config[k]!r} (preset needs {want[k]!r})" for k in diffs)
            raise TrainConfigError(f"autoencoder {cfg.autoencoder} does not fit preset {preset.name}: {detail}")
        pipe.register_modules(autoencoder=ae.eval())
    elif cfg.stage != "autoencoder" and cfg.init_from is None:
        logger.warning("miniature %s: no trained autoencoder given, the %s stage learns the latents of a random one",
                       preset.name, cfg.stage)
    return pipe


def _norm(v):
    return list(v) if isinstance(v, (list, tuple)) else v


def lpips_per_frame(lpips_model: torch.nn.Module, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """LPIPS of every frame, averaged: ``recon``/``target`` (B, 3, L, H, W) in [-1, 1] -> float32 scalar."""
    b, c, length, h, w = recon.shape
    frames = recon.float().transpose(1, 2).reshape(b * length, c, h, w)  # (B*L, 3, H, W)
    ref = target.float().transpose(1, 2).reshape(b * length, c, h, w)
    return lpips_model(frames, ref, normalize=False).mean()  # inputs already in [-1, 1]


# --- The training step ----------------------------------------------------------------------------------


@dataclass
class StageInputs:
    """One batch in model space: ``video`` (B, C, L, H, W) for the autoencoder stage, or ``content``
    (B, C, h, w) and ``motion`` (B, D, L, W_m) for the diffusion stages, float32; raw conditions."""

    conditions: list[Any]
    video: torch.Tensor | None = None
    content: torch.Tensor | None = None
    motion: torch.Tensor | None = None


class StageTrainer:
    """Loss of one stage on one batch (see the module docstring)."""

    def __init__(self, cfg: TrainConfig, pipe: CMDPipeline, device: torch.device):
        self.cfg = cfg
        self.pipe = pipe
        self.device = device
        self.preset = cfg.resolved_preset()
        self.autocast_dtype = AUTOCAST_DTYPE[cfg.mixed_precision]
        schedule = self.preset.content_schedule if cfg.stage == "content" else self.preset.motion_schedule
        self.noise_scheduler = DDPMScheduler.from_config(SCHEDULES[schedule])
        self.trained: torch.nn.Module = getattr(pipe, COMPONENT[cfg.stage])  # replaced by the prepared model
        self.lpips = None
        if cfg.stage == "autoencoder" and cfg.lpips_weight > 0:
            self.lpips = load_lpips(cfg.lpips_net, device, cfg.lpips_backbone)
            self._check_lpips_size()

    def _check_lpips_size(self) -> None:
        h, w = self.preset.height, self.preset.width
        try:
            perceptual.check_frame_size(self.lpips, h, w)
        except ValueError as err:
            raise TrainConfigError(
                f"LPIPS '{self.cfg.lpips_net}' (preset {self.preset.name}): {err}. AlexNet needs frames of at least "
                "32x32; use lpips_net='vgg' for smaller ones"
            ) from None

    def model(self) -> torch.nn.Module:
        return self.trained

    def frozen_modules(self) -> list[torch.nn.Module]:
        names = {"autoencoder": ("vae",), "content": ("autoencoder", "vae", "text_encoder"),
                 "motion": ("autoencoder", "vae", "text_encoder")}[self.cfg.stage]
        return [m for m in (getattr(self.pipe, n) for n in names) if m is not None]

    def frozen_autocast(self):
        """Autocast for the frozen encoders (the run's mixed precision; nothing under ``"no"``)."""
        return _autocast(self.device, self.autocast_dtype)

    # batches -> model space ---------------------------------------------------------------------------
    @torch.no_grad()
    def stage_inputs(self, batch: Any) -> StageInputs:
        """A pixel batch (``videos``) or latent batch (``content``/``motion``) -> :class:`StageInputs`."""
        conditions = list(batch.conditions)
        if not hasattr(batch, "videos"):
            if self.cfg.stage == "autoencoder":
                raise ValueError("the autoencoder stage trains on videos: got a latent batch (content/motion)")
            return StageInputs(conditions, content=batch.content.to(self.device).float(),
                               motion=batch.motion.to(self.device).float())
        videos = batch.videos
        _check_videos(videos, self.preset, getattr(batch, "ids", []))
        gens = self._posterior_generators(batch)
        if self.cfg.stage == "autoencoder":
            x = videos_to_model_space(videos, self.pipe.vae, gens, autocast_dtype=self.autocast_dtype,
                                      max_frames_per_call=self.cfg.max_frames_per_call)
            return StageInputs(conditions, video=x.to(self.device).float())  # (B, C, L, H, W)
        content, motion = encode_clips(videos, self.pipe.autoencoder, self.pipe.vae, gens,
                                       autocast_dtype=self.autocast_dtype,
                                       max_frames_per_call=self.cfg.max_frames_per_call)
        return StageInputs(conditions, content=content.to(self.device), motion=motion.to(self.device))

    def _posterior_generators(self, batch: Any) -> list[torch.Generator] | None:
        """Per-clip generators for the SD VAE's posterior sample, seeded by the clip's place in the data
        order (``latents.sample_seed``: new every epoch, the same after a resume, the same as a latent
        store built from that clip); ``None`` in pixel space."""
        if self.pipe.vae is None:
            return None
        keys = getattr(batch, "keys", None)
        if keys is not None and not callable(keys):  # TrainBatch.keys: ClipKey(epoch, position, rank)
            seeds = [sample_seed(self.cfg.seed, k.rank, k.position, k) for k in keys]
        elif getattr(batch, "positions", None) is not None:  # SequenceBatch: global positions
            seeds = [sample_seed(self.cfg.seed, 0, p) for p in batch.positions]
        else:
            return None  # the global RNG (restored on resume)
        return [torch.Generator().manual_seed(s) for s in seeds]

    # conditions ---------------------------------------------------------------------------------------
    def _check_conditions(self, conditions: list[Any]) -> None:
        kind = self.preset.conditioning
        if kind == "text" and not all(isinstance(c, str) for c in conditions):
            raise ValueError(f"preset {self.preset.name} is text-conditional: every clip needs a caption "
                             "(e.g. a captions.csv for the folder dataset)")
        if kind == "class":
            bad = [c for c in conditions if not isinstance(c, int) or not 0 <= c < self.preset.num_classes]
            if bad:
                raise ValueError(f"preset {self.preset.name} is class-conditional: labels must be ints in "
                                 f"0..{self.preset.num_classes - 1}; got {bad[:5]}")

    @torch.no_grad()
    def condition_inputs(self, conditions: list[Any]) -> dict[str, torch.Tensor]:
        """Conditions with dropout (prob ``cond_dropout``): null class / empty prompt. Text for the motion
        DiT comes with its token mask (masked mean), for the SD UNet without (SD cross-attends all tokens)."""
        self._check_conditions(conditions)
        drop = (torch.rand(len(conditions)) < self.cfg.cond_dropout).tolist()
        if self.preset.conditioning == "class":
            null = self.preset.num_classes
            labels = torch.tensor([null if d else int(c) for c, d in zip(conditions, drop, strict=True)])
            return {"class_labels": labels.to(self.device)}
        prompts = ["" if d else c for c, d in zip(conditions, drop, strict=True)]
        with self.frozen_autocast():
            if self.cfg.stage == "motion":
                feats, mask = self.pipe.encode_prompt_with_mask(prompts, self.device)
                return {"encoder_hidden_states": feats.float(), "encoder_attention_mask": mask.to(self.device)}
            return {"encoder_hidden_states": self.pipe.encode_prompt(prompts, self.device).float()}

    # losses -------------------------------------------------------------------------------------------
    def loss(self, batch: Any) -> torch.Tensor:
        """The stage's float32 loss on a pixel or latent batch (or :class:`StageInputs`)."""
        inputs = batch if isinstance(batch, StageInputs) else self.stage_inputs(batch)
        stage = self.cfg.stage
        if stage == "autoencoder":
            video = inputs.video
            recon = self.model()(video)  # (B, C, L, H, W)
            diff = F.l1_loss if self.cfg.ae_loss == "l1" else F.mse_loss
            loss = diff(recon.float(), video.float())
            if self.lpips is not None:
                loss = loss + self.cfg.lpips_weight * lpips_per_frame(self.lpips, recon, video)
            return loss
        target = inputs.content if stage == "content" else inputs.motion
        noise = torch.randn(target.shape).to(target)  # CPU draw: the same noise on every device
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (target.shape[0],)).to(self.device)
        noisy = self.noise_scheduler.add_noise(target, noise, t)  # sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
        cond = self.condition_inputs(inputs.conditions)
        model = self.model()
        if stage == "content":
            if isinstance(_unwrap(model), UNet2DConditionModel):
                out = model(noisy, t, encoder_hidden_states=cond["encoder_hidden_states"]).sample
            else:
                out = model(noisy, timestep=t, class_labels=cond["class_labels"], return_dict=False)[0]
        else:
            out = model(noisy, t, inputs.content, **cond, return_dict=False)
        return F.mse_loss(out[:, : target.shape[1]].float(), noise.float())


def _unwrap(model):
    return getattr(model, "module", model)


def _disable_internal_label_dropout(model: torch.nn.Module) -> None:
    """Label embedders that drop labels on their own in train mode would drop twice: training drops
    conditions itself (``condition_inputs``)."""
    for module in model.modules():
        if hasattr(module, "token_drop") and hasattr(module, "dropout_prob"):
            module.dropout_prob = 0.0


# --- Checkpoints and run records ------------------------------------------------------------------------


def checkpoint_dirs(output_dir: Path) -> list[Path]:
    """Checkpoint folders ``checkpoints/step-NNNNNNNN`` that finished writing, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step-*") if (p / "step.json").is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


# Neither the batches nor the maths depend on these (the loaders give the same batches for any number of workers).
MAY_CHANGE_ON_RESUME = ("max_steps", "log_every", "assemble_to", "content_run", "num_workers", "prefetch_factor",
                        "pin_memory", "latent_store")


def _save_config(cfg: TrainConfig, output_dir: Path) -> None:
    path = output_dir / "train_config.json"
    if path.is_file():
        old = TrainConfig.from_json(path)
        changed = [f.name for f in dataclasses.fields(cfg)
                   if getattr(old, f.name) != getattr(cfg, f.name) and f.name not in MAY_CHANGE_ON_RESUME]
        if changed:
            raise TrainConfigError(
                f"{path} exists with a different config (fields {changed}); resume with the same config "
                f"(only {', '.join(MAY_CHANGE_ON_RESUME)} may change) or use a new output_dir"
            )
    output_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(cfg.to_json() + "\n")


def _save_run_info(output_dir: Path, info: dict[str, Any]) -> None:
    """``run_info.json``; a resumed run must keep the processes and accumulation (else the order changes)."""
    path = output_dir / RUN_INFO_FILE
    if path.is_file():
        old = json.loads(path.read_text())
        keys = ("world_size", "batch_size", "gradient_accumulation_steps", "global_batch_size")
        changed = {k: (old.get(k), info[k]) for k in keys if old.get(k) != info[k]}
        if changed:
            detail = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items())
            raise TrainConfigError(
                f"{output_dir} was trained with another layout ({detail}); a resumed run must use the same number "
                "of processes and accumulation steps to continue exactly (or use a new output_dir)"
            )
    path.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


class SkipRecord:
    """``skipped.jsonl``: one JSON line per clip that failed and was replaced (step, rank, source, reason).

    On resume the lines of steps after the checkpoint are dropped first (they are trained again and
    recorded again), so each replacement is recorded exactly once."""

    def __init__(self, output_dir: Path, rank: int):
        self.path = output_dir / SKIPPED_FILE
        self.rank = rank
        self.count = 0

    def _lines(self) -> list[str]:
        return [line for line in self.path.read_text().splitlines() if line] if self.path.is_file() else []

    def truncate_after(self, step: int) -> None:
        if self.path.is_file():
            keep = [line for line in self._lines() if json.loads(line)["step"] <= step]
            self.path.write_text("".join(line + "\n" for line in keep))

    def set_store(self, store: Path, items: Sequence[dict[str, Any]]) -> None:
        """Record the clips the latent store's build replaced (step 0, ``"store"``: its folder), replacing the
        lines of an earlier start of this run (the build records them with its shards; a resume repeats them)."""
        keep = [line for line in self._lines() if "store" not in json.loads(line)]
        lines = [json.dumps({"step": 0, "rank": None, "source": str(item.get("source", item)),
                             "reason": str(item.get("reason", "")), "stage": item.get("stage", "decode"),
                             "store": str(store)}) for item in items]
        self.path.write_text("".join(line + "\n" for line in keep + lines))
        if items:
            logger.warning("latent store %s: %d clip(s) failed to decode and were replaced (listed in %s)", store,
                           len(items), self.path)

    def add(self, step: int, items: Sequence[Any]) -> None:
        if not items:
            return
        lines = []
        for item in items:
            source, reason = str(getattr(item, "source", item)), str(getattr(item, "reason", ""))
            logger.warning("step %d rank %d: clip %s failed (%s); replaced by another clip", step, self.rank,
                           source, reason)
            lines.append(json.dumps({"step": step, "rank": self.rank, "source": source, "reason": reason,
                                     "stage": getattr(item, "stage", "decode")}))
        with open(self.path, "a", encoding="utf-8") as f:  # O_APPEND: whole lines from several processes
            f.write("".join(line + "\n" for line in lines))
        self.count += len(items)


def _checkpoint(accelerator: Accelerator, output_dir: Path, step: int, keep: int) -> None:
    path = output_dir / "checkpoints" / f"step-{step:08d}"
    accelerator.wait_for_everyone()
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        (path / "step.json").write_text(json.dumps({"step": step}) + "\n")  # written last: marks it complete
        for old in checkpoint_dirs(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def _save_final(cfg: TrainConfig, pipe: CMDPipeline, trained: torch.nn.Module, ema: EMAModel, step: int,
                run_info: dict[str, Any], ae_digest: str | None) -> Path:
    """``final/<component>`` (EMA), ``_raw``, the frozen parts (diffusion stages) and ``final/stage.json``."""
    final_dir = Path(cfg.output_dir) / "final"
    final = final_dir / COMPONENT[cfg.stage]
    raw = final.with_name(final.name + "_raw")
    trained.save_pretrained(str(raw))
    raw_digest = autoencoder_digest(trained)
    ema.store(trained.parameters())
    ema.copy_to(trained.parameters())
    trained.save_pretrained(str(final))
    ema_digest = autoencoder_digest(trained)
    ema.restore(trained.parameters())
    record: dict[str, Any] = {
        "stage": cfg.stage, "preset": cfg.preset, "tiny": cfg.tiny, "steps": step, "seed": cfg.seed,
        "component": COMPONENT[cfg.stage], "weights_sha256": {"ema": ema_digest, "raw": raw_digest},
        "global_batch_size": run_info["global_batch_size"], "sd_checkpoint": cfg.sd_checkpoint,
    }
    if cfg.stage != "autoencoder":
        frozen_dir = final_dir / "frozen"
        for name in FROZEN_PARTS:
            part = getattr(pipe, name)
            if part is not None:
                part.save_pretrained(str(frozen_dir / name))
        record["frozen_sha256"] = frozen_digests(pipe)
        record["autoencoder"] = {"path": cfg.autoencoder, "sha256": ae_digest}
    (final_dir / STAGE_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return final


# --- The loop -------------------------------------------------------------------------------------------


def train(
    cfg: TrainConfig,
    data: Sequence[Any] | BatchSource,
    *,
    stop_after_steps: int | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> Path:
    """Train ``cfg.stage``; resumes from the newest checkpoint in ``cfg.output_dir``.

    ``data``: an in-memory ``Sequence`` of clips, or a batch source
    ``data(start_step=, rank=, world_size=, batch_size=) -> Iterable[batch]`` (pixel or latent batches,
    see the module docstring; ``start_step`` counts micro-steps), e.g. ``cmdbench train``'s
    ``cmdbench.data.train_clips.ClipBatchSource``. With ``precompute_latents`` (diffusion stages) the
    pixel source also needs ``len()`` and ``describe()``: the latent store is built from it first.
    ``stop_after_steps`` ends the
    process-local loop early after that many optimizer steps (after checkpointing), as a kill would.
    ``on_step(step, loss)`` is called per optimizer step with the mean micro-batch loss.
    Returns the folder of the final (EMA) model, ``<output_dir>/final/<component>``.
    """
    output_dir = Path(cfg.output_dir)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, project_dir=str(output_dir))
    accum, global_batch = cfg.accumulation(accelerator.num_processes)
    accelerator.gradient_accumulation_steps = accum  # accelerate's setter: micro-steps per optimizer step
    rank, world = accelerator.process_index, accelerator.num_processes
    run_info = {"world_size": world, "batch_size": cfg.batch_size, "gradient_accumulation_steps": accum,
                "global_batch_size": global_batch, "mixed_precision": cfg.mixed_precision,
                "preset": cfg.preset, "tiny": cfg.tiny, "stage": cfg.stage}
    if accelerator.is_main_process:
        _save_config(cfg, output_dir)
        _save_run_info(output_dir, run_info)
    accelerator.wait_for_everyone()
    logger.info("%s stage: global batch %d = %d per process x %d process(es) x %d accumulation step(s)",
                cfg.stage, global_batch, cfg.batch_size, world, accum)
    set_seed(cfg.seed, device_specific=True)  # seed + rank: each process draws its own noise and timesteps
    preset = cfg.resolved_preset()
    pipe = build_components(cfg)
    ae_digest = autoencoder_digest(pipe.autoencoder) if cfg.stage != "autoencoder" else None
    pipe = pipe.to(accelerator.device)
    trainer = StageTrainer(cfg, pipe, accelerator.device)
    model = trainer.model()
    for module in trainer.frozen_modules():
        module.requires_grad_(False).eval()
    model.requires_grad_(True).train()
    _disable_internal_label_dropout(model)
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()

    source, store = _batch_source(cfg, data, pipe, preset, accelerator)

    lr, betas = cfg.optimizer
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=betas, weight_decay=cfg.weight_decay)
    ema = EMAModel(model.parameters(), decay=cfg.ema_decay, model_cls=type(model), model_config=model.config)
    ema.to(accelerator.device)
    model, optimizer = accelerator.prepare(model, optimizer)
    trainer.trained = model  # the trainer calls the prepared (autocast / DDP) model
    accelerator.register_for_checkpointing(ema)

    step = 0
    done = checkpoint_dirs(output_dir)
    if done:
        accelerator.load_state(str(done[-1]))
        step = json.loads((done[-1] / "step.json").read_text())["step"]
        logger.info("resumed from %s at step %d", done[-1], step)
    skipped = SkipRecord(output_dir, rank)
    if accelerator.is_main_process:
        skipped.truncate_after(step)
        if store is not None:
            skipped.set_store(store.root, store.replaced)
    accelerator.wait_for_everyone()

    batches = iter(source(start_step=step * accum, rank=rank, world_size=world, batch_size=cfg.batch_size))
    bar = _progress_bar(accelerator.is_main_process, cfg.max_steps * global_batch, step * global_batch, cfg.stage)
    steps_this_run = 0
    while step < cfg.max_steps:
        losses = []
        for _ in range(accum):
            batch = next(batches)
            skipped.add(step + 1, getattr(batch, "replaced", ()))
            with accelerator.accumulate(model):
                loss = trainer.loss(batch)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss.item()} at step {step + 1}; lower the learning rate")
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()  # a no-op until the last micro-batch (accelerate's AcceleratedOptimizer)
                optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
        if not accelerator.sync_gradients:
            raise RuntimeError("gradient accumulation fell out of step with the optimizer steps")
        ema.step(_unwrap(model).parameters())
        step += 1
        steps_this_run += 1
        value = sum(losses) / len(losses)
        bar.update(global_batch)
        bar.set_postfix(step=step, loss=f"{value:.4g}", refresh=False)
        if on_step is not None:
            on_step(step, value)
        if step % cfg.log_every == 0 and accelerator.is_main_process:
            logger.info("step %d loss %.6f (global batch %d)", step, value, global_batch)
        if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
            _checkpoint(accelerator, output_dir, step, cfg.keep_checkpoints)
        if stop_after_steps is not None and steps_this_run >= stop_after_steps:
            bar.close()
            return output_dir / "final" / COMPONENT[cfg.stage]

    bar.close()
    accelerator.wait_for_everyone()
    final = output_dir / "final" / COMPONENT[cfg.stage]
    if accelerator.is_main_process:
        final = _save_final(cfg, pipe, accelerator.unwrap_model(model), ema, step, run_info, ae_digest)
        if cfg.assemble_to is not None:
            from cmdbench.cmd.assemble import assemble

            out = assemble(cfg.autoencoder, cfg.content_run, output_dir, cfg.assemble_to)
            logger.info("assembled the sampling pipeline in %s", out)
    accelerator.wait_for_everyone()
    return final


def _progress_bar(main_process: bool, total_clips: int, done_clips: int, stage: str):
    """A tqdm bar on stderr counting training clips (global batch per step: clips/s and ETA), drawn only by
    the main process and only when stderr is a terminal (logs and piped output stay clean)."""
    import sys

    from tqdm import tqdm

    enabled = main_process and sys.stderr.isatty()
    return tqdm(total=total_clips, initial=done_clips, desc=f"train {stage}", unit="clip", disable=not enabled,
                file=sys.stderr, dynamic_ncols=True, smoothing=0.1, delay=0.5)


def _batch_source(cfg: TrainConfig, data: Sequence[Any] | BatchSource, pipe: CMDPipeline, preset: CMDPreset,
                  accelerator: Accelerator) -> tuple[BatchSource, LatentStore | None]:
    """``(batch source, latent store or None)`` of ``data``: itself (a batch source) or the in-memory path,
    and in latent mode the store built from it (:func:`latent_store_source`)."""
    if isinstance(data, Sequence):
        pixels: BatchSource = SequenceSource(data, cfg.seed)
    elif callable(data):
        pixels = data
    else:
        raise TypeError(f"train(cfg, data): data is a {type(data).__name__}; pass a Sequence of clips or a batch "
                        "source source(start_step=, rank=, world_size=, batch_size=) -> batches")
    if cfg.stage == "autoencoder" or not cfg.precompute_latents:
        return pixels, None
    pin = cfg.pin_memory if cfg.pin_memory is not None else accelerator.device.type == "cuda"
    return latent_store_source(cfg, pixels, pipe, preset, rank=accelerator.process_index,
                               world_size=accelerator.num_processes, pin_memory=pin)


def describe_steps(cfg: TrainConfig, n: int, world_size: int = 1) -> str:
    """``"1000 steps x global batch 8 (4 x 1 process(es) x 2 accumulation) = 8000 clips (~16.0 epochs of
    500)"`` for logs."""
    accum, total = cfg.accumulation(world_size)
    clips = cfg.max_steps * total
    return (f"{cfg.max_steps} steps x global batch {total} ({cfg.batch_size} x {world_size} process(es) x {accum} "
            f"accumulation) = {clips} clips (~{clips / n:.1f} epochs of {n})")


__all__ = [
    "TrainConfig", "TrainConfigError", "train", "sample_index", "sequence_batches", "SequenceBatch",
    "SequenceSource", "BatchSource", "latent_store_source", "rank_share", "StageTrainer", "checkpoint_dirs",
    "load_autoencoder", "autoencoder_folder", "build_components", "describe_steps", "frozen_digests",
    "lpips_per_frame",
]
