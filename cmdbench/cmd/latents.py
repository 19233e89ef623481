"""Encoding training clips with CMD's frozen encoders, and the precomputed latent store (§3.2, App. B.3).

The diffusion stages train on ``(content frame, motion latent) = f(x)`` of the frozen autoencoder
(Eq. 7-8); in latent mode ``x`` is the clip of Stable Diffusion VAE latents (each frame encoded, one
posterior sample, times the VAE's scaling factor). This module computes them:

- :func:`videos_to_model_space`: uint8 clips -> pixels in [-1, 1], or SD latents. The VAE sees at most
  ``max_frames_per_call`` frames per call (default 16; the old single call on all ``B*T`` frames needed
  ~96 GiB at 512x1024 for 128 frames) and runs in inference mode, under bf16/fp16 autocast when asked.
  Chunking changes nothing else: the posterior mean and std are gathered in float32, then each video's
  noise is drawn from its own generator, so a video's latents depend only on its pixels and generator.
- :func:`encode_clips`: the above, then the autoencoder's ``encode`` (also inference mode + autocast).
- :func:`autoencoder_digest` / :func:`latent_store_key`: the store's identity hashes the encoders'
  **weights** and config (not their folder), the dataset's ``describe()``, the clip geometry and seed.
- :func:`build_latent_store` / :func:`open_latent_loader`: write and stream the sharded store of
  :mod:`cmdbench.data.latent_store` (WebDataset shards, one writer per rank, resumable, O(shard) reads).

What a precomputed store means for the data path: each stored sample is **one window** of a video and,
in latent mode, **one VAE posterior sample** of it, frozen at build time; the online path draws a fresh
window and posterior sample on every access. To keep epochs from all seeing the same frames, build the
store from a loader with ``clips_per_video > 1`` (``cmdbench.data.train_clips``: one epoch of it lists
``clips_per_video`` random windows per video), so the store holds that many windows per video (and
posterior samples), and training cycles through them. The cost is disk (about 47 KB per sample at
UCF-101's 3x64x64 + 8x16x64 fp16, 92 KB at WebVid's 4x64x128 + 8x16x96, tar headers included) and the loss of fresh
randomness beyond ``clips_per_video``; the gain is that the diffusion stages skip decoding and both
encoders. Noise for sample ``n`` of rank ``r`` comes from :func:`sample_seed` (from the clip's key
``(epoch, position)`` when the batch carries one), so a resumed build redraws exactly the same noise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmdbench.data.latent_store import (
    DEFAULT_SAMPLES_PER_SHARD,
    LatentBatch,
    LatentStore,
    LatentStoreError,
    LatentStoreInfo,
    LatentStoreWriter,
    open_latent_loader,
    stored_samples,
    wait_for_store,
)
from cmdbench.seeding import randn_per_sample

logger = logging.getLogger(__name__)

AUTOCAST_DTYPES = (None, torch.bfloat16, torch.float16)


# --- Frozen encoders ----------------------------------------------------------------------------------


def _check_autocast(dtype: torch.dtype | None) -> None:
    if dtype not in AUTOCAST_DTYPES:
        raise ValueError(f"autocast_dtype={dtype!r} is not allowed; use None, torch.bfloat16 or torch.float16")


@contextmanager
def frozen_inference(device: torch.device | str, autocast_dtype: torch.dtype | None):
    """Inference mode, plus autocast to ``autocast_dtype`` on ``device``'s type when it is given."""
    _check_autocast(autocast_dtype)
    device_type = torch.device(device).type
    with torch.inference_mode(), torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        yield


def _check_videos(videos: torch.Tensor) -> None:
    if not isinstance(videos, torch.Tensor) or videos.ndim != 5 or videos.shape[2] != 3 or videos.dtype != torch.uint8:
        got = f"{videos.dtype} {tuple(videos.shape)}" if isinstance(videos, torch.Tensor) else type(videos).__name__
        raise ValueError(f"expected uint8 videos (B, T, 3, H, W), got {got}")


def videos_to_model_space(videos: torch.Tensor, vae, generators: Sequence[torch.Generator] | None, *,
                          max_frames_per_call: int = 16, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """uint8 ``(B, T, 3, H, W)`` -> float32 ``(B, C, T, h, w)``: pixels in [-1, 1] (``vae=None``, on the CPU),
    or SD VAE latents x ``scaling_factor`` (``C = 4``, ``h, w = H/8, W/8``, on the VAE's device).

    ``generators``: one per video for its posterior noise (``None``: the global RNG). The VAE encodes at
    most ``max_frames_per_call`` frames per call (chunks may cross video boundaries: each frame is
    encoded on its own).
    """
    _check_videos(videos)
    if vae is None:
        return (videos.float() / 127.5 - 1.0).permute(0, 2, 1, 3, 4)  # (B, 3, T, H, W)
    if not isinstance(max_frames_per_call, int) or max_frames_per_call < 1:
        raise ValueError(f"max_frames_per_call={max_frames_per_call!r}: use a positive integer")
    b, t = videos.shape[:2]
    if generators is not None and len(generators) != b:
        raise ValueError(f"{len(generators)} generators for {b} videos; pass one per video")
    frames = videos.reshape(b * t, *videos.shape[2:])  # uint8 (B*T, 3, H, W)
    means, stds = [], []
    with frozen_inference(vae.device, autocast_dtype):
        for start in range(0, b * t, max_frames_per_call):
            chunk = frames[start:start + max_frames_per_call].to(vae.device).float() / 127.5 - 1.0  # (n, 3, H, W)
            dist = vae.encode(chunk.to(vae.dtype)).latent_dist
            means.append(dist.mean.float())  # (n, 4, h, w)
            stds.append(torch.exp(0.5 * dist.logvar.float()))  # diffusers' std, kept in float32
    mean, std = torch.cat(means), torch.cat(stds)  # (B*T, 4, h, w) float32
    if generators is None:
        noise = torch.randn(mean.shape).to(mean.device)
    else:  # per-video noise: video i's latents depend only on its frames and its generator
        noise = randn_per_sample(generators, (t, *mean.shape[1:]), device=mean.device).reshape(mean.shape)
    lat = (mean + std * noise) * float(vae.config.scaling_factor)  # (B*T, 4, h, w), a normal (non-inference) tensor
    return lat.reshape(b, t, *lat.shape[1:]).permute(0, 2, 1, 3, 4)  # (B, 4, T, h, w)


def encode_clips(videos: torch.Tensor, autoencoder, vae, generators: Sequence[torch.Generator] | None, *,
                 max_frames_per_call: int = 16,
                 autocast_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``(B, T, 3, H, W)`` -> float32 ``(content (B, C, h, w), motion (B, D, L, W_m))`` on the
    autoencoder's device: :func:`videos_to_model_space`, then ``autoencoder.encode`` (inference mode,
    autocast when given). The results are ordinary tensors (usable as inputs of a trained model)."""
    x = videos_to_model_space(videos, vae, generators, max_frames_per_call=max_frames_per_call,
                              autocast_dtype=autocast_dtype)
    with frozen_inference(autoencoder.device, autocast_dtype):
        content, motion = autoencoder.encode(x.to(autoencoder.device, autoencoder.dtype))
    return content.float().clone(), motion.float().clone()  # clone outside inference mode


# --- Identity of a store --------------------------------------------------------------------------------


# Config entries that describe how a module was saved or loaded, not what it computes: transformers writes
# them on save/load (the weights' dtypes are hashed with the weights anyway).
VOLATILE_CONFIG_KEYS = frozenset({"transformers_version", "architectures", "dtype", "torch_dtype"})


def _public_config(module: torch.nn.Module) -> dict[str, Any] | None:
    """A module's config as a plain dict without private ``_`` keys (they hold the folder it was loaded
    from) and :data:`VOLATILE_CONFIG_KEYS`: diffusers' ``FrozenDict`` or transformers' ``PretrainedConfig``
    (through its ``to_dict()``)."""
    config = getattr(module, "config", None)
    if config is None:
        return None
    items = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return {k: v for k, v in items.items() if not k.startswith("_") and k not in VOLATILE_CONFIG_KEYS}


def autoencoder_digest(module: torch.nn.Module) -> str:
    """sha256 of a module's weights (every state-dict entry's name, dtype, shape and bytes, in name order)
    and of its config (diffusers or transformers, see :func:`_public_config`). Two folders with the same
    weights give the same digest; any changed weight or config value changes it. The one weight digest of
    cmdbench's training records, latent-store keys and assembly checks (any frozen or trained module)."""
    h = hashlib.sha256(type(module).__name__.encode())
    config = _public_config(module)
    if config is not None:
        h.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(module.state_dict().items()):
        if tensor.device.type == "meta":
            raise ValueError(f"cannot hash {type(module).__name__}: {name} is on the meta device (no weights)")
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"\n{name}|{flat.dtype}|{tuple(tensor.shape)}\n".encode())
        h.update(flat.view(torch.uint8).numpy())
    return h.hexdigest()


def latent_store_key(dataset_describe: dict[str, Any], autoencoder, vae, preset, seed: int, *,
                     autocast_dtype: torch.dtype | None = None) -> str:
    """16 hex digits naming a store: the dataset's ``describe()`` (index digest, clip spec), the encoders'
    weight digests, the preset's clip geometry, the seed (posterior noise) and the autocast dtype."""
    _check_autocast(autocast_dtype)
    blob = json.dumps({
        "data": dataset_describe,
        "autoencoder": autoencoder_digest(autoencoder),
        "vae": autoencoder_digest(vae) if vae is not None else None,
        "preset": {k: getattr(preset, k, None) for k in ("name", "num_frames", "height", "width", "sd_version")},
        "seed": seed,
        "autocast": str(autocast_dtype),
    }, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def sample_seed(seed: int, rank: int, position: int, clip_key: Any = None) -> int:
    """Seed of one stored sample's posterior noise: from the clip's ``(epoch, position)`` when its key has
    them (independent of how the build was split over ranks), else from ``(rank, position)`` of the rank's
    input stream."""
    epoch, global_position = getattr(clip_key, "epoch", None), getattr(clip_key, "position", None)
    if isinstance(epoch, int) and isinstance(global_position, int):
        entropy = [seed, 0, epoch, global_position]
    else:
        entropy = [seed, 1, rank, position]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> 1)


def _key_dict(key: Any) -> dict[str, Any] | None:
    if key is None:
        return None
    if dataclasses.is_dataclass(key):
        return dataclasses.asdict(key)
    if hasattr(key, "_asdict"):
        return dict(key._asdict())
    return key if isinstance(key, dict) else {"repr": repr(key)}


def _unpack(batch: Any) -> tuple[torch.Tensor, list[Any], list[str], list[Any]]:
    videos, conditions, ids = batch.videos, list(batch.conditions), [str(i) for i in batch.ids]
    _check_videos(videos)
    keys = list(getattr(batch, "keys", None) or [None] * len(ids))
    if not len(conditions) == len(ids) == len(keys) == videos.shape[0]:
        raise ValueError(f"batch of {videos.shape[0]} videos has {len(conditions)} conditions, {len(ids)} ids and "
                         f"{len(keys)} keys (ids {ids[:4]}...)")
    return videos, conditions, ids, keys


# --- The store ------------------------------------------------------------------------------------------


def build_latent_store(batches: Iterable[Any], out_dir: str | Path, autoencoder, vae, *, rank: int, world_size: int,
                       seed: int, samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD,
                       autocast_dtype: torch.dtype | None = None, resume: bool = True,
                       num_samples: int | None = None, key: str | None = None, max_frames_per_call: int = 16,
                       first_sample: int = 0) -> LatentStoreInfo:
    """Encode this rank's ``batches`` and store them in ``out_dir`` (see :mod:`cmdbench.data.latent_store`).

    ``batches``: any iterable of objects with ``.videos`` (uint8 ``(B, T, 3, H, W)``), ``.conditions``,
    ``.ids`` and optionally ``.keys`` / ``.replaced`` (e.g. ``cmdbench.data.train_clips`` batches); it must
    yield the same batches when run again (a seeded loader does). ``num_samples``: how many samples this rank
    stores (required for an endless loader; the build fails if the input ends sooner). Every rank runs this
    on its own, at the same time; nothing waits for rank 0.

    Resume (``resume=True``): complete shards of an earlier build are kept; batches they already hold are
    read but not encoded, and the rest is written from the first missing sample. ``first_sample``: where
    ``batches`` starts in this rank's stream when the caller already skipped stored batches (at most
    :func:`cmdbench.data.latent_store.stored_samples`). ``key``: the store's name
    (:func:`latent_store_key`), recorded and checked on resume and by :func:`open_latent_loader`.
    """
    identity = {"key": key, "seed": seed, "autocast": str(autocast_dtype),
                "autoencoder": autoencoder_digest(autoencoder),
                "vae": autoencoder_digest(vae) if vae is not None else None}  # the same for every rank
    writer = LatentStoreWriter(out_dir, rank=rank, world_size=world_size, samples_per_shard=samples_per_shard,
                               identity=identity, target=num_samples, resume=resume)
    if writer.complete:
        logger.info("latent store %s: rank %d already complete (%d samples)", out_dir, rank, writer.stored)
        return writer.info()
    done = writer.stored
    if not isinstance(first_sample, int) or not 0 <= first_sample <= done:
        raise ValueError(f"first_sample={first_sample!r}: the input may skip at most the {done} samples rank {rank} "
                         f"has already stored in {out_dir}")
    if done:
        logger.info("latent store %s: rank %d resumes after %d stored samples", out_dir, rank, done)
    modes = [(m, m.training) for m in (autoencoder, vae) if m is not None]
    try:
        for module, _ in modes:
            module.eval()  # frozen encoders: no dropout while encoding
        position = _encode_into(writer, batches, autoencoder, vae, seed=seed, rank=rank, done=done,
                                position=first_sample, num_samples=num_samples,
                                max_frames_per_call=max_frames_per_call, autocast_dtype=autocast_dtype)
    finally:
        for module, training in modes:
            module.train(training)
    if num_samples is not None and position < num_samples:
        raise LatentStoreError(f"rank {rank}: the input ended after {position} samples, num_samples={num_samples}; "
                               f"{out_dir} stays unfinished (complete shards are kept for a resume)")
    return writer.finish()


def finished_store(root: str | Path, key: str) -> LatentStore | None:
    """The store in ``root`` when every rank of the build that wrote it finished (with the name ``key``),
    whatever number of processes built it (a store built on 8 GPUs serves a run on 4); ``None`` when it is
    missing, unfinished or unusable (building then resumes it, or names what is wrong)."""
    try:
        return LatentStore.open(root, identity={"key": key})
    except LatentStoreError:
        return None


def _encode_into(writer: LatentStoreWriter, batches: Iterable[Any], autoencoder, vae, *, seed: int, rank: int,
                 done: int, position: int, num_samples: int | None, max_frames_per_call: int,
                 autocast_dtype: torch.dtype | None) -> int:
    """Encode and write the samples of ``batches`` from ``done`` on; returns the stream position reached."""
    if num_samples is None or position < num_samples:
        for batch in batches:
            videos, conditions, ids, keys = _unpack(batch)
            take = len(ids) if num_samples is None else min(len(ids), num_samples - position)
            if position + take > done:  # batches wholly stored by an earlier build are not encoded
                generators = [torch.Generator().manual_seed(sample_seed(seed, rank, position + j, k))
                              for j, k in enumerate(keys)]
                content, motion = encode_clips(videos, autoencoder, vae, generators,
                                               max_frames_per_call=max_frames_per_call,
                                               autocast_dtype=autocast_dtype)
                content, motion = content.cpu(), motion.cpu()  # one transfer per batch
                if position >= done:  # a batch stored in part had its replacements recorded already
                    writer.note_replaced(getattr(batch, "replaced", None) or [])
                for j in range(take):
                    if position + j >= done:
                        writer.write(content=content[j], motion=motion[j], condition=conditions[j], sample_id=ids[j],
                                     clip_key=_key_dict(keys[j]))
            position += take
            if num_samples is not None and position >= num_samples:
                break
    return position


__all__ = [
    "LatentBatch", "LatentStoreInfo", "autoencoder_digest", "build_latent_store", "encode_clips", "finished_store",
    "frozen_inference", "latent_store_key", "open_latent_loader", "sample_seed", "stored_samples",
    "videos_to_model_space", "wait_for_store",
]
