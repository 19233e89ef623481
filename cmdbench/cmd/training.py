"""Training CMD's three stages with accelerate (Yu et al., ICLR 2024, §3.2, App. B.3, Tables 5-7).

Stages and losses (paper):
- ``autoencoder``: reconstruction, ``||x − g(f(x))||²`` (ℓ2; ``ae_loss="l1"`` optional). In latent mode
  ``x`` is the clip of SD VAE latents (each frame encoded, times the VAE's scaling factor). Adam, lr 1e-5,
  betas (0.5, 0.9), no weight decay (App. B.3).
- ``content``: ε-prediction ``||ε − ε_θI(x̄_t, c, t)||²`` on content frames ``x̄`` from the frozen
  autoencoder (Eq. 7), with the content model's noise schedule (SD's for the UNet, DiT's linear one for the
  pixel DiT). Adam, lr 1e-4, betas (0.9, 0.999).
- ``motion``: ε-prediction ``||ε − ε_θM(z_t, c, x̄, t)||²`` on motion latents ``z`` with the clean
  content frame ``x̄`` as a dense condition (Eq. 8), DiT's linear schedule. Adam, lr 1e-4, betas (0.9, 0.999).
Both diffusion stages drop the condition with probability ``cond_dropout`` (0.1): the null class
(index ``num_classes``) or the empty prompt "", so classifier-free guidance works at sampling time.

Mechanics: ``accelerate.Accelerator`` (one GPU, or ``accelerate launch`` over many; ``mixed_precision``
"no" | "fp16" | "bf16"), gradient-norm clipping (1.0), diffusers ``EMAModel`` (decay 0.999 per the paper,
with diffusers' built-in ``(1 + n)/(10 + n)`` ramp over the first steps). Checkpoints are
``accelerator.save_state`` folders (model, optimizer, EMA, every RNG) plus ``step.json``; a run restarted
with the same config resumes from the newest one and continues exactly: the data order is a function of
``(seed, step, rank)`` only, and the noise, timesteps and dropout come from the restored RNGs.

The dataset is any sequence of items with ``video`` (uint8 ``(T, 3, H, W)``) and ``condition`` (caption
str, class int, or None), e.g. ``cmdbench.data.datasets.folder`` (the ``cmdbench train`` command builds it;
this module imports only the core and the CMD networks).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.training_utils import EMAModel

from cmdbench.cmd.autoencoder import CMDAutoencoder
from cmdbench.cmd.pipeline import CMDPipeline
from cmdbench.cmd.presets import PRESETS, SCHEDULES, CMDPreset, build_pipeline, miniature

logger = logging.getLogger(__name__)

STAGES = ("autoencoder", "content", "motion")
MIXED_PRECISION = ("no", "fp16", "bf16")
AE_LOSSES = ("l2", "l1")
# Paper optimisers (App. B.3): autoencoder Adam 1e-5 (0.5, 0.9); diffusion models Adam 1e-4 (0.9, 0.999).
PAPER_OPTIMIZER = {
    "autoencoder": (1e-5, (0.5, 0.9)),
    "content": (1e-4, (0.9, 0.999)),
    "motion": (1e-4, (0.9, 0.999)),
}
COMPONENT = {"autoencoder": "autoencoder", "content": "content_model", "motion": "motion_model"}


class TrainConfigError(ValueError):
    """A training configuration that cannot run (the message names the field and what is allowed)."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; saved as ``train_config.json`` beside the checkpoints.

    stage: "autoencoder" | "content" | "motion". preset: a name in ``PRESETS``; ``tiny`` trains its
    random miniature. dataset / data_dir / dataset_options: the dataset registry name (``folder``,
    ``ucf101``, ``webvid``), its root and extra keyword options (used by ``cmdbench train``).
    autoencoder: a trained ``CMDAutoencoder`` folder (or a CMD pipeline folder) for the diffusion stages.
    init_from: a CMD pipeline folder whose components initialise the run (e.g. to continue a stage).
    sd_checkpoint: a local Stable Diffusion folder: its UNet initialises the content model (fine-tuned
    with no new parameters, Eq. 7), and its text encoder, tokenizer and VAE are used frozen.
    batch_size: per process. learning_rate / adam_betas: ``None`` takes the paper's (``PAPER_OPTIMIZER``).
    checkpoint_every: steps between checkpoints (the last step always checkpoints); ``keep_checkpoints``
    newest ones are kept. precompute_latents: encode the dataset once with the frozen autoencoder and train
    the diffusion stages from the cache (``latent_cache`` folder, default ``<output_dir>/latents``).
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
    precompute_latents: bool = False
    latent_cache: str | None = None
    log_every: int = 50

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
        for name in ("batch_size", "max_steps", "checkpoint_every", "keep_checkpoints", "log_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise bad(name, "use a positive integer")
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
        if self.stage != "autoencoder" and self.precompute_latents and self.autoencoder is None:
            raise TrainConfigError("precompute_latents needs a trained autoencoder: set TrainConfig.autoencoder")

    @property
    def optimizer(self) -> tuple[float, tuple[float, float]]:
        lr, betas = PAPER_OPTIMIZER[self.stage]
        return (self.learning_rate or lr, tuple(self.adam_betas or betas))

    def resolved_preset(self) -> CMDPreset:
        preset = PRESETS[self.preset]
        return miniature(preset) if self.tiny else preset

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


# --- Data ---------------------------------------------------------------------------------------------


def sample_index(seed: int, global_position: int, n: int) -> int:
    """Dataset index at ``global_position`` of a seeded epoch-wise shuffle: a fresh permutation of ``n``
    per epoch, a function of ``(seed, position)`` only (so a resumed run sees the same order)."""
    epoch, offset = divmod(global_position, n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return int(perm[offset])


def batch_indices(cfg: TrainConfig, step: int, rank: int, world: int, n: int) -> list[int]:
    """The ``batch_size`` dataset indices process ``rank`` trains on at ``step``."""
    start = (step * world + rank) * cfg.batch_size
    return [sample_index(cfg.seed, start + j, n) for j in range(cfg.batch_size)]


def _item(dataset: Sequence[Any], index: int) -> tuple[torch.Tensor, Any]:
    item = dataset[index]
    video = getattr(item, "video", None)
    if video is None:
        if isinstance(item, tuple) and len(item) >= 2 and isinstance(item[0], torch.Tensor):
            return item[0], item[1]
        reason = getattr(item, "reason", "no video")
        raise ValueError(f"dataset item {index} could not be read: {reason}")
    return video, getattr(item, "condition", None)


def videos_to_model_space(videos: torch.Tensor, vae, generators: Sequence[torch.Generator] | None) -> torch.Tensor:
    """uint8 ``(B, T, 3, H, W)`` -> float ``(B, C, T, h, w)``: pixels in [-1, 1], or SD latents × scale."""
    x = videos.float() / 127.5 - 1.0  # (B, T, 3, H, W)
    if vae is None:
        return x.permute(0, 2, 1, 3, 4)  # (B, 3, T, H, W)
    b, t = x.shape[:2]
    frames = x.reshape(b * t, *x.shape[2:]).to(vae.device, vae.dtype)
    dist = vae.encode(frames).latent_dist
    if generators is None:
        lat = dist.sample()
    else:  # per-sample noise: video i's latents depend only on its generator
        lat = torch.cat([dist.mean[i * t:(i + 1) * t] + dist.std[i * t:(i + 1) * t]
                         * torch.randn(dist.mean[i * t:(i + 1) * t].shape, generator=g).to(dist.mean)
                         for i, g in enumerate(generators)])
    lat = lat.float() * float(vae.config.scaling_factor)  # (B*T, 4, h, w)
    return lat.reshape(b, t, *lat.shape[1:]).permute(0, 2, 1, 3, 4)  # (B, 4, T, h, w)


def _check_clip(video: torch.Tensor, preset: CMDPreset, index: int) -> None:
    want = (preset.num_frames, 3, preset.height, preset.width)
    if tuple(video.shape) != want or video.dtype != torch.uint8:
        raise ValueError(
            f"dataset item {index}: clip is {video.dtype} {tuple(video.shape)}; preset {preset.name} trains on "
            f"uint8 (T, 3, H, W) = {want} (set the dataset's clip length and size to the preset's)"
        )


class LatentCache:
    """``(content (N, C, h, w), motion (N, D, L, W_m), conditions)`` of a whole dataset, from the frozen
    autoencoder, saved to one ``.pt`` file keyed by the dataset and autoencoder."""

    def __init__(self, content: torch.Tensor, motion: torch.Tensor, conditions: list[Any]):
        self.content, self.motion, self.conditions = content, motion, conditions

    @staticmethod
    def key(dataset: Sequence[Any], autoencoder_path: str, preset: CMDPreset, seed: int) -> str:
        describe = getattr(dataset, "describe", lambda: {"len": len(dataset)})()
        blob = json.dumps({"data": describe, "ae": str(Path(autoencoder_path).resolve()), "preset": preset.name,
                           "size": [preset.num_frames, preset.height, preset.width], "seed": seed},
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @classmethod
    @torch.no_grad()
    def build(cls, dataset, autoencoder: CMDAutoencoder, vae, preset: CMDPreset, seed: int,
              batch_size: int = 8) -> LatentCache:
        contents, motions, conditions = [], [], []
        for start in range(0, len(dataset), batch_size):
            idx = list(range(start, min(start + batch_size, len(dataset))))
            items = [_item(dataset, i) for i in idx]
            for (video, _), i in zip(items, idx, strict=True):
                _check_clip(video, preset, i)
            videos = torch.stack([v for v, _ in items])
            gens = [torch.Generator().manual_seed(seed * 1_000_003 + i) for i in idx]
            x = videos_to_model_space(videos, vae, gens).to(autoencoder.device, autoencoder.dtype)
            content, motion = autoencoder.encode(x)
            contents.append(content.float().cpu())
            motions.append(motion.float().cpu())
            conditions.extend(c for _, c in items)
        return cls(torch.cat(contents), torch.cat(motions), conditions)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part")
        torch.save({"content": self.content, "motion": self.motion, "conditions": self.conditions}, tmp)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> LatentCache:
        data = torch.load(path, map_location="cpu", weights_only=False)
        return cls(data["content"], data["motion"], data["conditions"])

    def __len__(self) -> int:
        return len(self.conditions)


# --- Models -------------------------------------------------------------------------------------------


def load_autoencoder(path: str | Path) -> CMDAutoencoder:
    """A trained ``CMDAutoencoder``: a model folder (``config.json``) or a pipeline folder (``autoencoder/``)."""
    path = Path(path)
    if (path / "autoencoder" / "config.json").is_file():
        return CMDAutoencoder.from_pretrained(path, subfolder="autoencoder", local_files_only=True)
    if (path / "config.json").is_file():
        return CMDAutoencoder.from_pretrained(path, local_files_only=True)
    raise FileNotFoundError(
        f"autoencoder folder {path} has neither config.json nor autoencoder/config.json "
        "(train one with `cmdbench train autoencoder` and pass its final/autoencoder folder)"
    )


def build_components(cfg: TrainConfig) -> CMDPipeline:
    """Every component of the preset: random weights seeded by ``cfg.seed``, then ``init_from`` /
    ``autoencoder`` weights where given."""
    preset = cfg.resolved_preset()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        pipe = build_pipeline(preset, sd_checkpoint=cfg.sd_checkpoint)
    if cfg.init_from is not None:
        from cmdbench.cmd.presets import check_pipeline_matches

        init = CMDPipeline.from_pretrained(cfg.init_from, local_files_only=True)
        check_pipeline_matches(init, preset, repr(cfg.init_from))
        pipe = init
    if cfg.autoencoder is not None:
        ae = load_autoencoder(cfg.autoencoder)
        want = pipe.autoencoder.config
        diffs = [k for k in ("in_channels", "num_frames", "sample_size", "patch_size", "motion_channels")
                 if _norm(ae.config[k]) != _norm(want[k])]
        if diffs:
            detail = ", ".join(f"{k}={ae.config[k]!r} (preset needs {want[k]!r})" for k in diffs)
            raise TrainConfigError(f"autoencoder {cfg.autoencoder} does not fit preset {preset.name}: {detail}")
        pipe.register_modules(autoencoder=ae.eval())
    elif cfg.stage != "autoencoder":
        logger.warning("no trained autoencoder given: the %s stage trains on latents of a random one", cfg.stage)
    return pipe


def _norm(v):
    return list(v) if isinstance(v, (list, tuple)) else v


# --- The training step ----------------------------------------------------------------------------------


@dataclass
class Batch:
    """One batch in model space. ``video`` (AE stage) or ``content``/``motion`` (diffusion stages), plus
    the raw conditions (captions or labels)."""

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
        schedule = self.preset.content_schedule if cfg.stage == "content" else self.preset.motion_schedule
        self.noise_scheduler = DDPMScheduler.from_config(SCHEDULES[schedule])
        self.trained: torch.nn.Module = getattr(pipe, COMPONENT[cfg.stage])  # replaced by the prepared model

    def model(self) -> torch.nn.Module:
        return self.trained

    def frozen_modules(self) -> list[torch.nn.Module]:
        names = {"autoencoder": ("vae",), "content": ("autoencoder", "vae", "text_encoder"),
                 "motion": ("autoencoder", "vae", "text_encoder")}[self.cfg.stage]
        return [m for m in (getattr(self.pipe, n) for n in names) if m is not None]

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
        """Conditions with dropout (prob ``cond_dropout``): null class / empty prompt."""
        self._check_conditions(conditions)
        drop = (torch.rand(len(conditions)) < self.cfg.cond_dropout).tolist()
        if self.preset.conditioning == "class":
            null = self.preset.num_classes
            labels = torch.tensor([null if d else int(c) for c, d in zip(conditions, drop, strict=True)])
            return {"class_labels": labels.to(self.device)}
        prompts = ["" if d else c for c, d in zip(conditions, drop, strict=True)]
        return {"encoder_hidden_states": self.pipe.encode_prompt(prompts, self.device).float()}

    # losses -------------------------------------------------------------------------------------------
    def loss(self, batch: Batch) -> torch.Tensor:
        stage = self.cfg.stage
        if stage == "autoencoder":
            recon = self.model()(batch.video)  # (B, C, L, H, W)
            if self.cfg.ae_loss == "l1":
                return F.l1_loss(recon.float(), batch.video.float())
            return F.mse_loss(recon.float(), batch.video.float())
        target = batch.content if stage == "content" else batch.motion
        noise = torch.randn(target.shape).to(target)  # CPU draw: the same noise on every device
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (target.shape[0],)).to(self.device)
        noisy = self.noise_scheduler.add_noise(target, noise, t)
        cond = self.condition_inputs(batch.conditions)
        model = self.model()
        if stage == "content":
            if isinstance(_unwrap(model), UNet2DConditionModel):
                out = model(noisy, t, encoder_hidden_states=cond["encoder_hidden_states"]).sample
            else:
                out = model(noisy, timestep=t, class_labels=cond["class_labels"], return_dict=False)[0]
        else:
            out = model(noisy, t, batch.content, **cond, return_dict=False)
        return F.mse_loss(out[:, : target.shape[1]].float(), noise.float())


def _unwrap(model):
    return getattr(model, "module", model)


def _disable_internal_label_dropout(model: torch.nn.Module) -> None:
    """Label embedders that drop labels on their own in train mode would drop twice: training drops
    conditions itself (``condition_inputs``)."""
    for module in model.modules():
        if hasattr(module, "token_drop") and hasattr(module, "dropout_prob"):
            module.dropout_prob = 0.0


# --- Checkpoints ----------------------------------------------------------------------------------------


def checkpoint_dirs(output_dir: Path) -> list[Path]:
    """Checkpoint folders ``checkpoints/step-NNNNNNNN`` that finished writing, oldest first."""
    root = output_dir / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step-*") if (p / "step.json").is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def _save_config(cfg: TrainConfig, output_dir: Path) -> None:
    path = output_dir / "train_config.json"
    if path.is_file():
        old = TrainConfig.from_json(path)
        changed = [f.name for f in dataclasses.fields(cfg)
                   if getattr(old, f.name) != getattr(cfg, f.name) and f.name not in ("max_steps", "log_every")]
        if changed:
            raise TrainConfigError(
                f"{path} exists with a different config (fields {changed}); resume with the same config "
                "(only max_steps and log_every may change) or use a new output_dir"
            )
    output_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(cfg.to_json() + "\n")


# --- The loop -------------------------------------------------------------------------------------------


def train(
    cfg: TrainConfig,
    dataset: Sequence[Any],
    *,
    stop_after_steps: int | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> Path:
    """Train ``cfg.stage`` on ``dataset``; resumes from the newest checkpoint in ``cfg.output_dir``.

    ``stop_after_steps`` ends the process-local loop early (after checkpointing), as a kill would.
    Returns the folder of the final (EMA) model, ``<output_dir>/final/<component>``.
    """
    output_dir = Path(cfg.output_dir)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, project_dir=str(output_dir))
    if accelerator.is_main_process:
        _save_config(cfg, output_dir)
    set_seed(cfg.seed, device_specific=True)  # seed + rank: each process draws its own noise and timesteps
    preset = cfg.resolved_preset()
    pipe = build_components(cfg).to(accelerator.device)
    trainer = StageTrainer(cfg, pipe, accelerator.device)
    model = trainer.model()
    for module in trainer.frozen_modules():
        module.requires_grad_(False).eval()
    model.requires_grad_(True).train()
    _disable_internal_label_dropout(model)
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()

    cache = None
    if cfg.stage != "autoencoder" and cfg.precompute_latents:
        key = LatentCache.key(dataset, cfg.autoencoder, preset, cfg.seed)
        cache_path = Path(cfg.latent_cache or output_dir / "latents") / f"latents-{key}.pt"
        if not cache_path.is_file():
            if accelerator.is_main_process:
                LatentCache.build(dataset, pipe.autoencoder, pipe.vae, preset, cfg.seed).save(cache_path)
            accelerator.wait_for_everyone()
        cache = LatentCache.load(cache_path)
    n = len(cache) if cache is not None else len(dataset)
    if n == 0:
        raise ValueError("the training dataset is empty")

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

    def fetch(step: int) -> Batch:
        idx = batch_indices(cfg, step, accelerator.process_index, accelerator.num_processes, n)
        if cache is not None:
            return Batch([cache.conditions[i] for i in idx], content=cache.content[idx].to(accelerator.device),
                         motion=cache.motion[idx].to(accelerator.device))
        items = [_item(dataset, i) for i in idx]
        for (video, _), i in zip(items, idx, strict=True):
            _check_clip(video, preset, i)
        videos = torch.stack([v for v, _ in items])
        gens = [torch.Generator().manual_seed(cfg.seed * 1_000_003 + i) for i in idx]
        with torch.no_grad():
            x = videos_to_model_space(videos, pipe.vae, gens).to(accelerator.device)
            conditions = [c for _, c in items]
            if cfg.stage == "autoencoder":
                return Batch(conditions, video=x)
            content, motion = pipe.autoencoder.encode(x.to(pipe.autoencoder.dtype))
        return Batch(conditions, content=content.float(), motion=motion.float())

    steps_this_run = 0
    while step < cfg.max_steps:
        batch = fetch(step)
        loss = trainer.loss(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower the learning rate")
        accelerator.backward(loss)
        if accelerator.sync_gradients:
            accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(_unwrap(model).parameters())
        step += 1
        steps_this_run += 1
        value = float(loss.detach())
        if on_step is not None:
            on_step(step, value)
        if step % cfg.log_every == 0 and accelerator.is_main_process:
            logger.info("step %d loss %.6f", step, value)
        if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
            _checkpoint(accelerator, output_dir, step, cfg.keep_checkpoints)
        if stop_after_steps is not None and steps_this_run >= stop_after_steps:
            return output_dir / "final" / COMPONENT[cfg.stage]

    final = output_dir / "final" / COMPONENT[cfg.stage]
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        trained = accelerator.unwrap_model(model)
        trained.save_pretrained(str(final.with_name(final.name + "_raw")))
        ema.store(trained.parameters())
        ema.copy_to(trained.parameters())
        trained.save_pretrained(str(final))
        ema.restore(trained.parameters())
    return final


def _checkpoint(accelerator: Accelerator, output_dir: Path, step: int, keep: int) -> None:
    path = output_dir / "checkpoints" / f"step-{step:08d}"
    accelerator.wait_for_everyone()
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        (path / "step.json").write_text(json.dumps({"step": step}) + "\n")  # written last: marks it complete
        for old in checkpoint_dirs(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def describe_steps(cfg: TrainConfig, n: int) -> str:
    """``"1000 steps x 4 clips = 4000 clips (~8.0 epochs of 500)"`` for logs."""
    clips = cfg.max_steps * cfg.batch_size
    return f"{cfg.max_steps} steps x {cfg.batch_size} clips = {clips} clips (~{clips / n:.1f} epochs of {n})"


__all__ = [
    "TrainConfig", "TrainConfigError", "train", "LatentCache", "batch_indices", "sample_index",
    "checkpoint_dirs", "load_autoencoder", "build_components", "describe_steps",
]
