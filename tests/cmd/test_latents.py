"""Encoding clips with CMD's frozen encoders and the precomputed latent store (cmdbench.cmd.latents).

Oracles: the pre-issue-9 single-call VAE encoding (kept below verbatim), the autoencoder's own
``encode`` of each clip, and float64 pixel arithmetic."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import dataclass, field
from itertools import count

import pytest
import torch

from cmdbench.cmd.autoencoder import CMDAutoencoder
from cmdbench.cmd.content import build_vae
from cmdbench.cmd.latents import (
    autoencoder_digest,
    build_latent_store,
    encode_clips,
    latent_store_key,
    open_latent_loader,
    sample_seed,
    videos_to_model_space,
)
from cmdbench.cmd.presets import SD15_512, TINY, build_pipeline, miniature
from cmdbench.data.latent_store import LatentStore, LatentStoreError, index_name, stored_samples
from cmdbench.data.policy import SkippedItem
from cmdbench.data.synthetic import moving_shape


def unbounded_reference(videos: torch.Tensor, vae, generators) -> torch.Tensor:
    """``videos_to_model_space`` as cmdbench.cmd.training had it before issue 9: every frame in one fp32 call."""
    x = videos.float() / 127.5 - 1.0
    b, t = x.shape[:2]
    frames = x.reshape(b * t, *x.shape[2:]).to(vae.device, vae.dtype)
    dist = vae.encode(frames).latent_dist
    lat = torch.cat([dist.mean[i * t:(i + 1) * t] + dist.std[i * t:(i + 1) * t]
                     * torch.randn(dist.mean[i * t:(i + 1) * t].shape, generator=g).to(dist.mean)
                     for i, g in enumerate(generators)])
    lat = lat.float() * float(vae.config.scaling_factor)
    return lat.reshape(b, t, *lat.shape[1:]).permute(0, 2, 1, 3, 4)


def gens(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def videos(n: int, frames: int, size: int, first: int = 0) -> torch.Tensor:
    return torch.stack([moving_shape(first + i, label=first + i, num_frames=frames, height=size, width=size)[0]
                        for i in range(n)])  # uint8 (n, T, 3, H, W)


@pytest.fixture(scope="module")
def tiny_vae():
    torch.manual_seed(0)
    return build_vae("1.5", tiny=True).eval()


@pytest.fixture(scope="module")
def pixel_pipe():
    torch.manual_seed(0)
    return build_pipeline(TINY)  # RGB 8x16x16, autoencoder content (3, 16, 16), motion (4, 8, 8)


@pytest.fixture(scope="module")
def latent_pipe():
    torch.manual_seed(0)
    return build_pipeline(miniature(SD15_512))  # 16x32x32 clips -> tiny SD VAE latents 4x16x4x4


# --- videos_to_model_space -------------------------------------------------------------------------------


def test_pixel_space_is_x_over_127_5_minus_1():
    v = videos(2, 4, 8)
    v[0, 0, 0, 0, 0], v[0, 0, 0, 0, 1] = 0, 255
    x = videos_to_model_space(v, None, None)
    want = (v.double() / 127.5 - 1.0).permute(0, 2, 1, 3, 4)
    assert x.dtype == torch.float32 and x.shape == (2, 3, 4, 8, 8)
    torch.testing.assert_close(x.double(), want, rtol=0, atol=1e-7)
    assert x[0, 0, 0, 0, 0] == -1 and x[0, 0, 0, 0, 1] == 1


def test_bounded_vae_calls_equal_the_single_fp32_call(tiny_vae, monkeypatch):
    v = videos(3, 8, 32)
    want = unbounded_reference(v, tiny_vae, gens(5, 6, 7))
    calls: list[int] = []
    encode = tiny_vae.encode
    monkeypatch.setattr(tiny_vae, "encode", lambda frames: calls.append(frames.shape[0]) or encode(frames))
    got = videos_to_model_space(v, tiny_vae, gens(5, 6, 7), max_frames_per_call=5)
    assert calls == [5, 5, 5, 5, 4]  # 24 frames, never more than 5 per call, chunks crossing videos
    assert got.shape == (3, 4, 8, 4, 4) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_each_videos_noise_comes_from_its_own_generator(tiny_vae):
    v = videos(3, 8, 32)
    batch = videos_to_model_space(v, tiny_vae, gens(1, 2, 3), max_frames_per_call=7)
    alone = videos_to_model_space(v[1:2], tiny_vae, gens(2), max_frames_per_call=7)
    torch.testing.assert_close(batch[1:2], alone, rtol=1e-5, atol=1e-6)
    other = videos_to_model_space(v[1:2], tiny_vae, gens(9), max_frames_per_call=7)
    assert (other - alone).abs().mean() > 1e-3  # a posterior sample, not the mean


def test_autocast_runs_the_frozen_encoders_in_bf16(latent_pipe):
    seen: list[torch.dtype] = []

    def record(module, inputs, output):
        assert torch.is_inference_mode_enabled()  # frozen: no autograd graph, no version counters
        seen.append(output.dtype)

    hooks = [latent_pipe.vae.encoder.conv_in.register_forward_hook(record),
             latent_pipe.autoencoder.encoder_pre_layer.register_forward_hook(record)]
    v = videos(2, 16, 32)
    try:
        full = encode_clips(v, latent_pipe.autoencoder, latent_pipe.vae, gens(1, 2))
        assert seen == [torch.float32] * 3  # 32 frames: two VAE calls of 16, one autoencoder call
        seen.clear()
        half = encode_clips(v, latent_pipe.autoencoder, latent_pipe.vae, gens(1, 2), autocast_dtype=torch.bfloat16)
        assert seen == [torch.bfloat16] * 3
    finally:
        for h in hooks:
            h.remove()
    for a, b in zip(half, full, strict=True):
        assert a.dtype == torch.float32 and not torch.equal(a, b)
        torch.testing.assert_close(a, b, rtol=0.05, atol=0.05)  # bf16 has 8 bits of mantissa


def test_encoded_latents_can_feed_a_trained_model(pixel_pipe):
    content, motion = encode_clips(videos(2, 8, 16), pixel_pipe.autoencoder, None, None)
    layer = torch.nn.Linear(motion.shape[-1], 1)
    layer(motion).sum().backward()  # an inference-mode tensor here would raise
    assert layer.weight.grad is not None and not content.is_inference()


def test_bad_videos_are_refused(pixel_pipe):
    with pytest.raises(ValueError, match=r"uint8 videos \(B, T, 3, H, W\), got torch.float32"):
        videos_to_model_space(torch.zeros(1, 2, 3, 4, 4), None, None)
    with pytest.raises(ValueError, match="autocast_dtype"):
        encode_clips(videos(1, 8, 16), pixel_pipe.autoencoder, None, None, autocast_dtype=torch.float64)


# --- identity ---------------------------------------------------------------------------------------------


def test_one_digest_for_diffusers_and_transformers_modules(pixel_pipe, tmp_path):
    """The frozen text encoder (a transformers model: its config is a PretrainedConfig, which writes its
    version, architectures and dtype on save/load) is hashed by the same function as the CMD models."""
    from transformers import CLIPTextModel

    text = build_pipeline(TINY).text_encoder
    before = autoencoder_digest(text)
    text.save_pretrained(tmp_path / "text")  # sets config.architectures on the saved model
    loaded = CLIPTextModel.from_pretrained(tmp_path / "text")
    assert autoencoder_digest(loaded) == autoencoder_digest(text) == before
    changed = CLIPTextModel.from_pretrained(tmp_path / "text")
    changed.config.hidden_act = "gelu"  # same weights, other activation
    assert autoencoder_digest(changed) != before
    with torch.no_grad():
        loaded.get_parameter("final_layer_norm.bias")[0] += 1e-3
    assert autoencoder_digest(loaded) != before


def test_digest_and_key_hash_the_weights_not_the_folder(pixel_pipe, tmp_path):
    ae = pixel_pipe.autoencoder
    ae.save_pretrained(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "moved" / "b")
    a = CMDAutoencoder.from_pretrained(tmp_path / "a")
    b = CMDAutoencoder.from_pretrained(tmp_path / "moved" / "b")
    data = {"name": "folder", "index": "abc"}
    assert autoencoder_digest(a) == autoencoder_digest(b) == autoencoder_digest(ae)
    key = latent_store_key(data, a, None, TINY, 0)
    assert latent_store_key(data, b, None, TINY, 0) == key

    with torch.no_grad():
        b.encoder_pre_layer.weight[0, 0, 0, 0] += 1e-3  # one weight
    assert autoencoder_digest(b) != autoencoder_digest(a)
    assert latent_store_key(data, b, None, TINY, 0) != key
    other_config = CMDAutoencoder(**{**dict(a.config), "_name_or_path": None, "output_activation": "none"})
    other_config.load_state_dict(a.state_dict())
    assert autoencoder_digest(other_config) != autoencoder_digest(a)  # same weights, other maths
    assert autoencoder_digest(CMDAutoencoder.from_pretrained(tmp_path / "a").half()) != autoencoder_digest(a)

    assert latent_store_key({**data, "index": "abd"}, a, None, TINY, 0) != key
    assert latent_store_key(data, a, None, TINY, 1) != key
    assert latent_store_key(data, a, None, TINY, 0, autocast_dtype=torch.bfloat16) != key
    vae = build_vae("1.5", tiny=True)
    with_vae = latent_store_key(data, a, vae, TINY, 0)
    with torch.no_grad():
        vae.decoder.conv_out.bias[0] += 1e-3  # the decoder does not encode, but it is the same VAE file
    assert with_vae != key and latent_store_key(data, a, vae, TINY, 0) != with_vae


# --- building and reading the store -----------------------------------------------------------------------


@dataclass(frozen=True)
class Key:  # the fields of cmdbench.data.train_clips.ClipKey
    epoch: int
    position: int
    rank: int


@dataclass
class Batch:  # a TrainBatch-like batch
    videos: torch.Tensor
    conditions: list
    ids: list[str]
    keys: list | None = None
    replaced: list = field(default_factory=list)


def batches_of(pipe, first: int, n: int, batch: int, *, keys: bool = False, label: bool = False):
    preset_frames, size = pipe.autoencoder.config.num_frames, 16 if pipe.vae is None else 32
    for start in range(first, first + n, batch):
        idx = list(range(start, min(start + batch, first + n)))
        yield Batch(videos(len(idx), preset_frames, size, first=start),
                    [i if label else f"caption {i}" for i in idx], [f"clip{i}" for i in idx],
                    [Key(0, i, 0) for i in idx] if keys else None)


def read_all(root, n: int, **kw) -> dict[str, tuple]:
    """sample id -> (content, motion, condition) of one epoch read on one rank."""
    out = {}
    loader = open_latent_loader(root, batch_size=1, seed=0, rank=0, world_size=1, **kw)
    for _ in range(n):
        b = next(loader)
        out[b.ids[0]] = (b.content[0], b.motion[0], b.conditions[0])
    assert len(out) == n
    return out


def test_store_holds_the_autoencoder_encoding_of_each_clip(pixel_pipe, tmp_path):
    ae = pixel_pipe.autoencoder
    info = build_latent_store(batches_of(pixel_pipe, 0, 10, 3, label=True), tmp_path, ae, None, rank=0, world_size=1,
                              seed=0, samples_per_shard=4, key="k0")
    assert info.complete and info.num_samples == 10 and len(info.shards) == 3
    stored = read_all(tmp_path, 10, identity={"key": "k0"})
    for i in range(10):
        clip = videos(1, 8, 16, first=i)
        with torch.no_grad():
            content, motion = ae.encode((clip.float() / 127.5 - 1.0).permute(0, 2, 1, 3, 4))  # one clip alone
        got_c, got_m, cond = stored[f"clip{i}"]
        assert got_c.shape == (3, 16, 16) and got_m.shape == (4, 8, 8) and cond == i
        torch.testing.assert_close(got_c, content[0], rtol=1e-3, atol=1e-3)  # fp16 storage
        torch.testing.assert_close(got_m, motion[0], rtol=1e-3, atol=1e-3)


def test_latent_mode_store_matches_the_single_call_encoding_with_each_samples_seed(latent_pipe, tmp_path):
    ae, vae = latent_pipe.autoencoder, latent_pipe.vae
    build_latent_store(batches_of(latent_pipe, 0, 5, 2, keys=True), tmp_path, ae, vae, rank=0, world_size=1, seed=3,
                       samples_per_shard=2, max_frames_per_call=3)
    stored = read_all(tmp_path, 5)
    clips = videos(5, 16, 32)
    seeds = [sample_seed(3, 0, i, Key(0, i, 0)) for i in range(5)]
    with torch.no_grad():
        content, motion = ae.encode(unbounded_reference(clips, vae, gens(*seeds)))
    for i in range(5):
        got_c, got_m, _ = stored[f"clip{i}"]
        assert got_c.shape == (4, 4, 4)
        torch.testing.assert_close(got_c, content[i], rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(got_m, motion[i], rtol=1e-3, atol=1e-3)
    assert len({sample_seed(3, 0, 0, Key(e, 0, 0)) for e in range(3)}) == 3  # another epoch's window: new noise


def test_every_rank_builds_its_part_and_every_sample_is_read_once_per_epoch(pixel_pipe, tmp_path):
    parts = [(0, 5), (5, 4), (9, 6)]
    for rank, (first, n) in enumerate(parts):
        build_latent_store(batches_of(pixel_pipe, first, n, 2), tmp_path, pixel_pipe.autoencoder, None, rank=rank,
                           world_size=3, seed=0, samples_per_shard=3)
    store = LatentStore.open(tmp_path)
    seen = []
    for rank in range(2):
        lo, hi = store.rank_range(rank, 2)
        loader = open_latent_loader(tmp_path, batch_size=1, seed=7, rank=rank, world_size=2)
        seen += [next(loader).ids[0] for _ in range(hi - lo)]
    assert Counter(seen) == Counter(f"clip{i}" for i in range(15))


def test_interrupted_build_resumes_to_the_uninterrupted_store(pixel_pipe, tmp_path, monkeypatch):
    ae = pixel_pipe.autoencoder
    encoded: list[int] = []
    encode = ae.encode
    monkeypatch.setattr(ae, "encode", lambda x: encoded.append(x.shape[0]) or encode(x))

    def with_replacement(first_batches):
        for k, b in enumerate(first_batches):
            if k == 4:
                b.replaced = [SkippedItem("bad.mp4", "truncated stream", "decode")]
            yield b

    def killed_after(n_batches):
        for k, b in enumerate(with_replacement(batches_of(pixel_pipe, 0, 20, 3))):
            if k == n_batches:
                raise KeyboardInterrupt("killed")
            yield b

    whole = tmp_path / "whole"
    build_latent_store(with_replacement(batches_of(pixel_pipe, 0, 20, 3)), whole, ae, None, rank=0, world_size=1,
                       seed=0, samples_per_shard=4)
    encoded.clear()
    part = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):  # 5 batches = 15 samples: shards 0-2 complete, shard 3 partial
        build_latent_store(killed_after(5), part, ae, None, rank=0, world_size=1, seed=0, samples_per_shard=4)
    assert stored_samples(part, 0) == 12 and list(part.glob("*.tmp"))
    encoded.clear()
    info = build_latent_store(with_replacement(batches_of(pixel_pipe, 0, 20, 3)), part, ae, None, rank=0,
                              world_size=1, seed=0, samples_per_shard=4)
    assert encoded == [3, 3, 2]  # batches 0-3 (samples 0-11) are stored: batches 4-6 (samples 12-19) encoded
    assert info.resumed_samples == 12 and info.num_samples == 20 and not list(part.glob("*.tmp"))
    for name in info.shards:  # same batches -> same latents -> byte-identical shards
        assert (part / name).read_bytes() == (whole / name).read_bytes(), name
    index = json.loads((part / index_name(0)).read_text())
    assert [r for s in index["shards"] for r in s["replaced"]] == [
        {"source": "bad.mp4", "reason": "truncated stream", "stage": "decode"}]  # recorded once

    # a caller that skipped the stored batches itself (first_sample) gets the same store
    skipped = tmp_path / "skipped"
    with pytest.raises(KeyboardInterrupt):
        build_latent_store(killed_after(5), skipped, ae, None, rank=0, world_size=1, seed=0, samples_per_shard=4)
    encoded.clear()
    build_latent_store(batches_of(pixel_pipe, 12, 8, 3), skipped, ae, None, rank=0, world_size=1, seed=0,
                       samples_per_shard=4, first_sample=12)
    assert encoded == [3, 3, 2]
    assert read_all(skipped, 20).keys() == read_all(whole, 20).keys()
    with pytest.raises(ValueError, match="first_sample=13"):
        build_latent_store([], tmp_path / "x", ae, None, rank=0, world_size=1, seed=0, first_sample=13)


def test_num_samples_bounds_an_endless_loader_and_a_short_input_fails(pixel_pipe, tmp_path):
    pulled = count()

    def endless():
        for k in count():
            next(pulled)
            yield from batches_of(pixel_pipe, 3 * k, 3, 3)

    info = build_latent_store(endless(), tmp_path / "a", pixel_pipe.autoencoder, None, rank=0, world_size=1, seed=0,
                              num_samples=7, samples_per_shard=4)
    assert info.num_samples == 7 and next(pulled) == 3  # three batches pulled, not a fourth
    with pytest.raises(LatentStoreError, match="ended after 6 samples, num_samples=8"):
        build_latent_store(batches_of(pixel_pipe, 0, 6, 3), tmp_path / "b", pixel_pipe.autoencoder, None, rank=0,
                           world_size=1, seed=0, num_samples=8)
    assert not json.loads((tmp_path / "b" / index_name(0)).read_text())["complete"]

    def untouchable():
        raise AssertionError("a complete rank must not read its input")
        yield

    again = build_latent_store(untouchable(), tmp_path / "a", pixel_pipe.autoencoder, None, rank=0, world_size=1,
                               seed=0, num_samples=7, samples_per_shard=4)
    assert again.num_samples == 7 and again.resumed_samples == 7


def test_a_build_with_other_weights_does_not_resume_into_the_store(pixel_pipe, tmp_path):
    build_latent_store(batches_of(pixel_pipe, 0, 3, 3), tmp_path, pixel_pipe.autoencoder, None, rank=0,
                       world_size=1, seed=0)
    other = CMDAutoencoder(**{k: v for k, v in pixel_pipe.autoencoder.config.items() if not k.startswith("_")})
    with pytest.raises(LatentStoreError, match="different build.*identity"):
        build_latent_store(batches_of(pixel_pipe, 0, 3, 3), tmp_path, other, None, rank=0, world_size=1, seed=0)


def test_store_built_from_the_training_clip_loader(pixel_pipe, tmp_path, monkeypatch):
    from cmdbench.data import synthetic
    from cmdbench.data.train_clips import ClipKey, TrainClipSpec, build_train_clips, make_train_loader

    synthetic.write_folder(tmp_path / "videos", 4, num_frames=24, height=16, width=16)
    clips = build_train_clips("folder", tmp_path / "videos", TrainClipSpec(num_frames=8, size=(16, 16),
                                                                           clips_per_video=2, seed=0))
    ae, key = pixel_pipe.autoencoder, latent_store_key(clips.describe(), pixel_pipe.autoencoder, None, TINY, 0)

    def loader(start_step: int = 0):
        return make_train_loader(clips, batch_size=3, seed=0, rank=0, world_size=1, start_step=start_step,
                                 num_workers=0)

    whole = tmp_path / "whole"
    build_latent_store(loader(), whole, ae, None, rank=0, world_size=1, seed=0, num_samples=len(clips),
                       samples_per_shard=4, key=key)
    batch = next(open_latent_loader(whole, batch_size=8, seed=0, rank=0, world_size=1, identity={"key": key}))
    assert Counter(batch.ids) == Counter(f"video_{i:04d}" for i in range(4) for _ in range(2))  # 2 windows each
    for j, clip_key in enumerate(batch.clip_keys):
        clip = clips[ClipKey(**clip_key)]  # the same window, read again
        with torch.no_grad():
            content, motion = ae.encode((clip.video[None].float() / 127.5 - 1.0).permute(0, 2, 1, 3, 4))
        torch.testing.assert_close(batch.content[j], content[0], rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(batch.motion[j], motion[0], rtol=1e-3, atol=1e-3)

    # killed after two batches (one complete shard of 4), resumed with a loader that skips stored batches
    part = tmp_path / "part"

    def killed():
        for k, b in enumerate(loader()):
            if k == 2:
                raise KeyboardInterrupt
            yield b

    with pytest.raises(KeyboardInterrupt):
        build_latent_store(killed(), part, ae, None, rank=0, world_size=1, seed=0, num_samples=len(clips),
                           samples_per_shard=4, key=key)
    start = stored_samples(part, 0) // 3
    assert start == 1
    build_latent_store(loader(start), part, ae, None, rank=0, world_size=1, seed=0, num_samples=len(clips),
                       samples_per_shard=4, key=key, first_sample=3 * start)
    for name in ("shard-rank00000-000000.tar", "shard-rank00000-000001.tar"):
        assert (part / name).read_bytes() == (whole / name).read_bytes()
