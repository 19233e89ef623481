"""CMD training (accelerate, EMA, checkpoints): resume equals straight-through, data order, caches, bad config."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from accelerate.state import AcceleratorState
from diffusers.training_utils import EMAModel

from cmdbench.cmd import presets
from cmdbench.cmd.autoencoder import CMDAutoencoder
from cmdbench.cmd.motion_dit import MotionDiT
from cmdbench.cmd.training import (
    SequenceSource,
    StageTrainer,
    TrainConfig,
    TrainConfigError,
    build_components,
    checkpoint_dirs,
    describe_steps,
    lpips_per_frame,
    sample_index,
    sequence_batches,
    train,
)
from cmdbench.data.synthetic import moving_shape
from cmdbench.perceptual import load_backbone, load_lpips

TINY = presets.TINY


def clips(n: int = 3) -> list[tuple[torch.Tensor, str]]:
    """In-memory (video uint8 (T, 3, H, W), caption) pairs at the cmd-tiny clip size."""
    out = []
    for i in range(n):
        video, caption = moving_shape(i, label=i, num_frames=TINY.num_frames, height=TINY.height, width=TINY.width)
        out.append((video, caption))
    return out


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def config(tmp_path, name: str, **kw) -> TrainConfig:
    base = {"stage": "motion", "output_dir": str(tmp_path / name), "preset": "cmd-tiny", "batch_size": 2,
            "max_steps": 4, "checkpoint_every": 2, "log_every": 1}
    return TrainConfig(**{**base, **kw})


def state(path) -> dict[str, torch.Tensor]:
    cls = MotionDiT if "motion" in str(path) else CMDAutoencoder
    return cls.from_pretrained(path).state_dict()


@pytest.mark.parametrize(("stage", "accumulation"), [("motion", 1), ("autoencoder", 1), ("motion", 2)])
def test_resume_after_a_kill_equals_training_straight_through(tmp_path, stage, accumulation):
    data = clips()
    kw = {"stage": stage, "gradient_accumulation_steps": accumulation}
    straight = train(config(tmp_path, "straight", **kw), data)
    AcceleratorState._reset_state(reset_partial_state=True)
    cfg = config(tmp_path, "killed", **kw)
    train(cfg, data, stop_after_steps=3)  # step 3 is lost, as in a kill after the step-2 checkpoint
    assert [p.name for p in checkpoint_dirs(tmp_path / "killed")] == ["step-00000002"]
    AcceleratorState._reset_state(reset_partial_state=True)
    steps: list[int] = []
    resumed = train(cfg, data, on_step=lambda step, loss: steps.append(step))
    assert steps == [3, 4]  # continued from the checkpoint, not from scratch
    for suffix in ("", "_raw"):
        a = state(str(straight) + suffix)
        b = state(str(resumed) + suffix)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5, msg=f"{suffix or 'ema'} {k}")
    # The trained weights moved away from their initialisation, and the EMA differs from the raw model.
    init = presets.build_pipeline(presets.TINY)
    raw, ema = state(str(straight) + "_raw"), state(straight)
    component = init.motion_model if stage == "motion" else init.autoencoder
    key = next(k for k, v in component.state_dict().items() if v.ndim == 2 and k in raw)
    assert not torch.equal(raw[key], component.state_dict()[key])
    assert not torch.equal(raw[key], ema[key])
    saved = json.loads((tmp_path / "straight" / "train_config.json").read_text())
    assert saved["stage"] == stage and saved["ema_decay"] == 0.999


def test_data_order_is_a_function_of_seed_and_step_only():
    n = 7
    data = [(torch.full((1, 3, 1, 1), i, dtype=torch.uint8), f"clip {i}") for i in range(n)]

    def drawn(**kw) -> list[int]:  # the items of the first batch, read back from their pixels
        batch = next(sequence_batches(data, batch_size=3, seed=5, **kw))
        assert batch.conditions == [f"clip {i}" for i in batch.videos[:, 0, 0, 0, 0].tolist()]
        return batch.videos[:, 0, 0, 0, 0].tolist()

    epoch0 = [sample_index(5, i, n) for i in range(n)]
    assert sorted(epoch0) == list(range(n))  # each clip once per epoch: nothing dropped or repeated
    assert drawn(start_step=2) == [sample_index(5, 6 + j, n) for j in range(3)]
    # Two processes split a global batch without overlap within an epoch.
    world = [drawn(rank=r, world_size=2) for r in range(2)]
    assert world[0] + world[1] == [sample_index(5, j, n) for j in range(6)]
    epoch1 = [sample_index(5, n + i, n) for i in range(n)]
    assert sorted(epoch1) == list(range(n)) and epoch1 != epoch0  # reshuffled each epoch


def test_autoencoder_overfits_two_clips(tmp_path):
    losses: list[float] = []
    cfg = config(tmp_path, "ae", stage="autoencoder", max_steps=60, checkpoint_every=60, learning_rate=3e-3,
                 batch_size=2)
    train(cfg, clips(2), on_step=lambda step, loss: losses.append(loss))
    assert len(losses) == 60
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first / 10, (first, last)


def test_precomputed_latents_match_the_autoencoder_and_the_store_is_keyed_by_its_weights(tmp_path, monkeypatch):
    from cmdbench.cmd import latents
    from cmdbench.data.clips import SkippedClip
    from cmdbench.data.latent_store import LatentStore

    ae_dir = tmp_path / "ae"
    torch.manual_seed(0)
    ae = presets.build_pipeline(TINY).autoencoder
    ae.save_pretrained(ae_dir)
    data = [*clips(3), SkippedClip("broken.mp4", "moov atom not found", 3)]  # replaced by a readable clip
    stores = tmp_path / "stores"  # shared by the runs below
    cfg = config(tmp_path, "cached", stage="content", max_steps=2, precompute_latents=True,
                 autoencoder=str(ae_dir), latent_store=str(stores), latent_samples_per_shard=2)
    train(cfg, data)
    key = latents.latent_store_key(SequenceSource(data, 0).describe(), ae, None, TINY, 0)
    assert [p.name for p in stores.iterdir()] == [f"latents-{key}"]
    store = LatentStore.open(stores / f"latents-{key}")
    assert store.num_samples == 4 and len(store.shards) == 2  # one epoch, 2 samples per shard
    video = torch.stack([v for v, _ in data[:3]]).float() / 127.5 - 1  # (B, T, 3, H, W)
    content, motion = ae.encode(video.permute(0, 2, 1, 3, 4))
    batch = next(latents.open_latent_loader(store.root, batch_size=4, seed=0, rank=0, world_size=1))
    assert set(batch.ids) == {"0", "1", "2"}  # one epoch: every readable clip, one of them for the broken one
    for j, i in enumerate(int(i) for i in batch.ids):  # stored fp16: within fp16 rounding of the autoencoder
        torch.testing.assert_close(batch.content[j], content[i].detach(), atol=2e-3, rtol=1e-3)
        torch.testing.assert_close(batch.motion[j], motion[i].detach(), atol=2e-3, rtol=1e-3)
        assert batch.conditions[j] == data[i][1]
    (line,) = (tmp_path / "cached" / "skipped.jsonl").read_text().splitlines()  # the replaced clip, named once
    assert json.loads(line) | {"store": None} == {"step": 0, "rank": None, "source": "broken.mp4", "store": None,
                                                  "reason": "moov atom not found", "stage": "decode"}

    # A second run with the same data and autoencoder trains from the same store without encoding again.
    calls: list[int] = []
    real = latents.encode_clips
    monkeypatch.setattr(latents, "encode_clips", lambda *a, **k: calls.append(1) or real(*a, **k))
    AcceleratorState._reset_state(reset_partial_state=True)
    train(config(tmp_path, "again", stage="motion", max_steps=1, precompute_latents=True, autoencoder=str(ae_dir),
                 latent_store=str(stores), latent_samples_per_shard=2), data)
    assert calls == [] and len(list(stores.iterdir())) == 1
    assert "broken.mp4" in (tmp_path / "again" / "skipped.jsonl").read_text()  # recorded with the store it reuses
    # Other weights in the same folder layout make another store (the key hashes weights, not paths).
    with torch.no_grad():
        ae.encoder_pre_layer.weight.add_(0.01)
    ae.save_pretrained(ae_dir)
    AcceleratorState._reset_state(reset_partial_state=True)
    train(config(tmp_path, "other", stage="content", max_steps=1, precompute_latents=True, autoencoder=str(ae_dir),
                 latent_store=str(stores), latent_samples_per_shard=2), data)
    assert calls and len(list(stores.iterdir())) == 2


def test_ema_uses_the_paper_decay():
    model = torch.nn.Linear(2, 2)
    ema = EMAModel(model.parameters(), decay=0.999)
    assert ema.get_decay(10_000) == pytest.approx(0.999)


def test_bad_configs(tmp_path):
    with pytest.raises(TrainConfigError, match="stage"):
        TrainConfig(stage="vae", output_dir="x")
    with pytest.raises(TrainConfigError, match="preset"):
        TrainConfig(stage="motion", output_dir="x", preset="cmd-huge")
    with pytest.raises(TrainConfigError, match="mixed_precision"):
        TrainConfig(stage="motion", output_dir="x", mixed_precision="fp8")
    with pytest.raises(TrainConfigError, match="unknown keys"):
        TrainConfig.from_dict({"stage": "motion", "output_dir": "x", "lr": 1.0})
    with pytest.raises(TrainConfigError, match=r"dataset_options\['stride'\] is a clip setting, not a listing option "
                                               r"of the 'folder' dataset: set the top-level TrainConfig field \"stride\""):
        TrainConfig(stage="motion", output_dir="x", dataset_options={"stride": 2})
    with pytest.raises(TrainConfigError, match=r"\['num_clips'\].*field \"clips_per_video\""):
        TrainConfig(stage="motion", output_dir="x", dataset_options={"num_clips": 4})
    with pytest.raises(TrainConfigError, match="both stride=2 and fps=8"):
        TrainConfig(stage="motion", output_dir="x", stride=2, fps=8)
    with pytest.raises(TrainConfigError, match="policy='ignore' is not allowed"):
        TrainConfig(stage="motion", output_dir="x", policy="ignore")
    with pytest.raises(TrainConfigError, match="num_workers=-1"):
        TrainConfig(stage="motion", output_dir="x", num_workers=-1)
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(TrainConfigError, match="bad.json"):
        TrainConfig.from_json(bad)
    # Resuming into a folder trained with another config is refused.
    train(config(tmp_path, "run", max_steps=1, checkpoint_every=1), clips(2))
    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(TrainConfigError, match="different config"):
        train(config(tmp_path, "run", max_steps=2, seed=3), clips(2))
    AcceleratorState._reset_state(reset_partial_state=True)
    wrong = [(torch.zeros(4, 3, 16, 16, dtype=torch.uint8), "a")]
    with pytest.raises(ValueError, match=r"\(8, 3, 16, 16\)"):
        train(config(tmp_path, "wrong", max_steps=1), wrong)
    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(ValueError, match="caption"):
        train(config(tmp_path, "nocap", max_steps=1), [(clips(1)[0][0], None)])


def test_cli_trains_from_a_folder_of_videos(tmp_path, capsys):
    from cmdbench.cli import main
    from cmdbench.commands.train import build_dataset
    from cmdbench.data.synthetic import write_folder
    from cmdbench.data.train_clips import TrainClipSpec

    write_folder(tmp_path / "videos", 3, num_frames=10, height=20, width=20)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"preset": "cmd-tiny", "dataset": "folder", "data_dir": str(tmp_path / "videos"),
                               "output_dir": str(tmp_path / "run"), "batch_size": 2, "max_steps": 2,
                               "checkpoint_every": 1}))
    assert main(["train", "content", "--config", str(cfg)]) == 0
    assert (tmp_path / "run" / "final" / "content_model" / "config.json").is_file()
    assert [p.name for p in checkpoint_dirs(tmp_path / "run")] == ["step-00000001", "step-00000002"]
    assert "3 clips per epoch" in capsys.readouterr().out
    AcceleratorState._reset_state(reset_partial_state=True)
    assert main(["train", "motion", "--config", str(tmp_path / "missing.json")]) == 2
    # Clip settings are config fields, routed to the training clips; the listing options are checked.
    fields = {"stride": 2, "clips_per_video": 3, "policy": "skip", "num_workers": 0, "seed": 4}
    source = build_dataset(TrainConfig(stage="content", output_dir="x", dataset="folder",
                                       data_dir=str(tmp_path / "videos"), **fields))
    assert source.dataset.spec == TrainClipSpec(num_frames=8, size=(16, 16), stride=2, clips_per_video=3, seed=4,
                                                policy="skip")
    assert len(source) == 9 and source.num_workers == 0
    for options, message in (({"stride": 2}, 'set the top-level TrainConfig field "stride"'),
                             ({"split": "train"}, "unknown option\\(s\\) \\['split'\\]; allowed \\['captions'\\]")):
        cfg.write_text(json.dumps({"dataset": "folder", "data_dir": str(tmp_path / "videos"), "output_dir": "x",
                                   "dataset_options": options}))
        assert main(["train", "content", "--config", str(cfg)]) == 2
        assert re.search(message, capsys.readouterr().err), options


@pytest.mark.slow
def test_two_process_cpu_training_with_torchrun(tmp_path):
    """DDP over two CPU processes (gloo) in latent mode: both ranks build their half of the latent store at
    once, wait for each other's, train, checkpoint their RNG; the run finishes."""
    import os
    import shutil
    import subprocess

    from cmdbench.data.synthetic import write_folder

    if shutil.which("torchrun") is None:
        pytest.skip("torchrun is not on PATH")
    write_folder(tmp_path / "videos", 4, num_frames=10, height=20, width=20)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"preset": "cmd-tiny", "dataset": "folder", "data_dir": str(tmp_path / "videos"),
                               "output_dir": str(tmp_path / "run"), "batch_size": 1, "max_steps": 2,
                               "checkpoint_every": 2, "global_batch_size": 4, "precompute_latents": True,
                               "clips_per_video": 2, "latent_samples_per_shard": 3}))
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = ["torchrun", "--nproc_per_node", "2", "-m", "cmdbench", "train", "motion", "--config", str(cfg)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    step = tmp_path / "run" / "checkpoints" / "step-00000002"
    assert (step / "random_states_0.pkl").is_file() and (step / "random_states_1.pkl").is_file()
    assert (tmp_path / "run" / "final" / "motion_model" / "config.json").is_file()
    assert proc.stdout.count("final EMA weights") == 1
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())  # 1 clip x 2 processes x 2 micro-steps
    assert (info["world_size"], info["gradient_accumulation_steps"], info["global_batch_size"]) == (2, 2, 4)
    (store,) = (tmp_path / "run" / "latents").iterdir()  # 4 videos x 2 windows, 4 per rank
    indices = [json.loads((store / f"index-rank0000{r}.json").read_text()) for r in range(2)]
    assert [(i["complete"], i["num_samples"], len(i["shards"])) for i in indices] == [(True, 4, 2), (True, 4, 2)]


# --- Gradient accumulation ------------------------------------------------------------------------------


def test_two_accumulated_micro_batches_of_one_equal_one_batch_of_two(tmp_path, monkeypatch):
    """The autoencoder stage is deterministic (no noise, no dropout): accumulating two micro-batches of one
    clip must hand the optimizer the (clipped) gradient of the batch of two, once per optimizer step
    (accelerate divides each micro-batch loss by the accumulation steps)."""
    seen: list[list[torch.Tensor]] = []
    real_step = torch.optim.Adam.step

    def step(self, *args, **kwargs):  # the gradients each optimizer step applies
        seen.append([p.grad.detach().clone() for group in self.param_groups for p in group["params"]])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    data = clips(4)
    common = {"stage": "autoencoder", "max_steps": 3, "checkpoint_every": 3, "learning_rate": 1e-3}
    runs = {}
    for name, kw in (("batch", {"batch_size": 2}), ("accum", {"batch_size": 1, "gradient_accumulation_steps": 2}),
                     ("single", {"batch_size": 1})):
        AcceleratorState._reset_state(reset_partial_state=True)
        seen.clear()
        losses: list[float] = []
        final = train(config(tmp_path, name, **common, **kw), data, on_step=lambda s, v, out=losses: out.append(v))
        runs[name] = (losses, list(seen), final)
    (loss_b, grads_b, final_b), (loss_a, grads_a, final_a) = runs["batch"], runs["accum"]
    grads_1 = runs["single"][1]
    assert len(loss_a) == len(grads_a) == 3  # steps count optimizer steps, not micro-batches
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    for step_b, step_a in zip(grads_b, grads_a, strict=True):
        for gb, ga in zip(step_b, step_a, strict=True):
            torch.testing.assert_close(ga, gb, atol=1e-7, rtol=1e-4)
    # One clip per step instead differs: the comparison can see a wrong accumulation.
    assert not torch.allclose(grads_1[0][0], grads_b[0][0], atol=1e-6)
    a, b = state(final_b), state(final_a)
    key = "encoder_pre_layer.weight"  # a weight with a real gradient ends up the same
    torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)


def test_global_batch_size_sets_the_accumulation_and_is_recorded(tmp_path):
    cfg = config(tmp_path, "g", stage="autoencoder", batch_size=2, global_batch_size=6, max_steps=1)
    assert cfg.accumulation(1) == (3, 6) and cfg.accumulation(3) == (1, 6)
    with pytest.raises(TrainConfigError, match="global_batch_size=6 is not batch_size 2 x 2 process"):
        cfg.accumulation(2)
    with pytest.raises(TrainConfigError, match="disagrees"):
        config(tmp_path, "x", batch_size=2, global_batch_size=6, gradient_accumulation_steps=2).accumulation(1)
    with pytest.raises(TrainConfigError, match="gradient_accumulation_steps"):
        config(tmp_path, "x", gradient_accumulation_steps=0)
    assert "global batch 6 (2 x 1 process(es) x 3 accumulation)" in describe_steps(cfg, 10)
    micro: list[int] = []
    train(cfg, clips(), on_step=lambda step, loss: micro.append(step))
    info = json.loads((tmp_path / "g" / "run_info.json").read_text())
    assert (info["global_batch_size"], info["gradient_accumulation_steps"], info["world_size"]) == (6, 3, 1)
    assert json.loads((tmp_path / "g" / "final" / "stage.json").read_text())["global_batch_size"] == 6


# --- Replaced clips are recorded ------------------------------------------------------------------------


def test_replaced_clips_are_recorded_once_even_across_a_resume(tmp_path):
    from cmdbench.data.clips import SkippedClip

    good = clips(3)
    data = [good[0], SkippedClip("broken_a.mp4", "moov atom not found", 1), good[1],
            SkippedClip("broken_b.mp4", "truncated", 3), good[2]]
    seen: list = []
    train(config(tmp_path, "straight", seed=3), data)
    straight = (tmp_path / "straight" / "skipped.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in straight]
    assert {r["source"] for r in records} == {"broken_a.mp4", "broken_b.mp4"}
    assert all(r["reason"] in ("moov atom not found", "truncated") and r["rank"] == 0 for r in records)
    # This seed's order hits broken clips in steps 2, 3 and 4: step 3 is the one a kill repeats.
    assert sorted({r["step"] for r in records}) == [2, 3, 4]
    AcceleratorState._reset_state(reset_partial_state=True)
    cfg = config(tmp_path, "killed", seed=3)
    train(cfg, data, stop_after_steps=3)
    AcceleratorState._reset_state(reset_partial_state=True)
    train(cfg, data, on_step=lambda step, loss: seen.append(step))
    assert seen == [3, 4]
    resumed = (tmp_path / "killed" / "skipped.jsonl").read_text().splitlines()
    assert resumed == straight  # step 3 was trained twice but recorded once


# --- Required parts, autocast, LPIPS ----------------------------------------------------------------------


def test_full_size_runs_need_their_real_parts(tmp_path):
    with pytest.raises(TrainConfigError, match="sd_checkpoint to a local Stable Diffusion 2.1-base folder"):
        TrainConfig(stage="autoencoder", output_dir="x", preset="cmd-webvid-512x1024")
    with pytest.raises(TrainConfigError, match="sd_checkpoint"):
        TrainConfig(stage="motion", output_dir="x", preset="cmd-sd15-512", autoencoder="ae")
    with pytest.raises(TrainConfigError, match="set autoencoder to the autoencoder run's output_dir"):
        TrainConfig(stage="content", output_dir="x", preset="cmd-ucf101-64")
    # Miniatures are exempt: they exist to run without real weights.
    TrainConfig(stage="content", output_dir="x", preset="cmd-ucf101-64", tiny=True)
    TrainConfig(stage="motion", output_dir="x", preset="cmd-webvid-512x1024", tiny=True)
    TrainConfig(stage="motion", output_dir="x", preset="cmd-tiny")


def test_the_autoencoder_folder_is_checked(tmp_path):
    data = clips(2)
    train(config(tmp_path, "ae", stage="autoencoder", max_steps=1), data)
    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train(config(tmp_path, "m1", autoencoder=str(tmp_path / "nope")), data)
    AcceleratorState._reset_state(reset_partial_state=True)
    train(config(tmp_path, "m2", max_steps=1, autoencoder=str(tmp_path / "ae")), data)  # the run's output_dir
    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(TrainConfigError, match="output of a 'motion' run"):
        train(config(tmp_path, "m3", autoencoder=str(tmp_path / "m2")), data)
    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(TrainConfigError, match="trained for preset cmd-tiny; this run is cmd-ucf101-64"):
        train(config(tmp_path, "u", preset="cmd-ucf101-64", tiny=True,
                     autoencoder=str(tmp_path / "ae" / "final" / "autoencoder")), [(v, 0) for v, _ in data])
    AcceleratorState._reset_state(reset_partial_state=True)
    bare = tmp_path / "bare_ucf_autoencoder"  # a CMDAutoencoder folder without its run: shapes are checked
    build_components(config(tmp_path, "x", preset="cmd-ucf101-64", tiny=True)).autoencoder.save_pretrained(bare)
    with pytest.raises(TrainConfigError, match="does not fit preset cmd-tiny: num_frames=16 \\(preset needs 8\\), patch_size=2 "):
        train(config(tmp_path, "m4", autoencoder=str(bare)), data)


def test_frozen_encoders_run_under_autocast_and_losses_stay_float32(tmp_path, monkeypatch):
    from transformers import CLIPTextModel

    flags: dict[str, list[bool]] = {"autoencoder": [], "text_encoder": []}
    real_encode, real_text = CMDAutoencoder.encode, CLIPTextModel.forward

    def encode(self, video):
        flags["autoencoder"].append(torch.is_autocast_enabled("cpu"))
        return real_encode(self, video)

    def text(self, *args, **kwargs):
        flags["text_encoder"].append(torch.is_autocast_enabled("cpu"))
        return real_text(self, *args, **kwargs)

    monkeypatch.setattr(CMDAutoencoder, "encode", encode)
    monkeypatch.setattr(CLIPTextModel, "forward", text)
    losses: list[float] = []
    train(config(tmp_path, "bf16", max_steps=1, mixed_precision="bf16"), clips(2),
          on_step=lambda step, loss: losses.append(loss))
    assert flags["autoencoder"] == [True] and flags["text_encoder"] and all(flags["text_encoder"])
    AcceleratorState._reset_state(reset_partial_state=True)
    flags = {"autoencoder": [], "text_encoder": []}
    train(config(tmp_path, "fp32", max_steps=1), clips(2))
    assert flags["autoencoder"] == [False] and not any(flags["text_encoder"])
    # The loss is reduced in float32 even when the model runs in bf16.
    cfg = config(tmp_path, "unused", mixed_precision="bf16")
    trainer = StageTrainer(cfg, build_components(cfg), torch.device("cpu"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = trainer.loss(next(sequence_batches(clips(2), batch_size=2, seed=0)))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


@pytest.fixture(scope="module")
def random_lpips() -> dict[str, torch.nn.Module]:
    """LPIPS with RANDOM backbones (no ImageNet file here: their values are not LPIPS), built once: torchvision
    initialises the whole VGG-16 / AlexNet, classifier included, which takes seconds."""
    torch.manual_seed(0)
    return {net: load_lpips(net, backbone="random") for net in ("vgg", "alex")}


@pytest.fixture
def cached_lpips(random_lpips, monkeypatch):
    from cmdbench.cmd import training

    monkeypatch.setattr(training, "load_lpips", lambda net, device="cpu", backbone="imagenet": random_lpips[net])
    return random_lpips


def lpips_trainer(weight: float, net: str = "vgg") -> StageTrainer:
    cfg = TrainConfig(stage="autoencoder", output_dir="unused", lpips_weight=weight, lpips_net=net,
                      lpips_backbone="random")  # a RANDOM backbone: these values are not LPIPS
    return StageTrainer(cfg, build_components(cfg), torch.device("cpu"))


def test_lpips_term_is_per_frame_mean_on_minus_one_to_one_frames(cached_lpips):
    torch.manual_seed(0)
    trainer = lpips_trainer(0.5)
    a = torch.rand(2, 3, 8, 16, 16) * 2 - 1  # (B, C, L, H, W)
    b = (a + 0.3 * torch.randn_like(a)).clamp(-1, 1)
    assert lpips_per_frame(trainer.lpips, a, a).item() == 0.0  # identical clips
    reference = torch.stack([trainer.lpips(a[i, :, t][None], b[i, :, t][None]).reshape(())
                             for i in range(2) for t in range(8)]).mean()  # lpips itself, frame by frame
    assert lpips_per_frame(trainer.lpips, a, b).item() == pytest.approx(reference.item(), rel=1e-5)
    assert reference.item() > 0


def test_lpips_term_changes_the_gradient_by_its_own_gradient(cached_lpips):
    torch.manual_seed(0)
    with_lpips = lpips_trainer(0.5)
    without = lpips_trainer(0.0)
    batch = next(sequence_batches(clips(2), batch_size=2, seed=0))
    grads = {}
    for name, trainer in (("with", with_lpips), ("without", without)):
        ae = trainer.model()
        ae.zero_grad()
        trainer.loss(batch).backward()
        grads[name] = ae.encoder_pre_layer.weight.grad.clone()
    # The difference is the gradient of 0.5 x the per-frame LPIPS computed by lpips itself.
    ae = without.model()
    ae.zero_grad()
    video = with_lpips.stage_inputs(batch).video
    recon = ae(video)
    frames = [with_lpips.lpips(recon[i, :, t][None], video[i, :, t][None]).reshape(())
              for i in range(2) for t in range(video.shape[2])]
    (0.5 * torch.stack(frames).mean()).backward()
    assert not torch.allclose(grads["with"], grads["without"])
    torch.testing.assert_close(grads["with"] - grads["without"], ae.encoder_pre_layer.weight.grad,
                               atol=1e-6, rtol=1e-4)


def test_lpips_configuration_errors_and_backbone_weights(tmp_path, monkeypatch, cached_lpips):
    import torchvision

    from cmdbench.weights import MissingWeightsError

    with pytest.raises(TrainConfigError, match="Stable Diffusion VAE latents"):
        TrainConfig(stage="autoencoder", output_dir="x", preset="cmd-webvid-512x1024", tiny=True, lpips_weight=0.1)
    with pytest.raises(TrainConfigError, match="autoencoder stage only"):
        TrainConfig(stage="motion", output_dir="x", lpips_weight=0.1)
    with pytest.raises(TrainConfigError, match="lpips_net"):
        TrainConfig(stage="autoencoder", output_dir="x", lpips_net="squeeze")
    with pytest.raises(TrainConfigError, match="at least 32x32"):  # AlexNet cannot see 16x16 frames
        lpips_trainer(0.1, net="alex")
    # The ImageNet backbone comes from the cmdbench weights cache; a missing file names the fetch command.
    monkeypatch.setenv("CMDBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    import lpips

    monkeypatch.setattr(lpips, "LPIPS", lambda **kw: cached_lpips[kw["net"]])  # skip the slow random init
    with pytest.raises(MissingWeightsError, match="cmdbench weights fetch torchvision_alexnet_imagenet1k_v1"):
        load_lpips("alex")
    # torchvision's features.{i} land in lpips' slices (a random torchvision AlexNet stands in for the file).
    tv = torchvision.models.alexnet(weights=None).state_dict()
    model = cached_lpips["alex"]
    load_backbone(model, tv)
    for key, value in model.net.state_dict().items():
        index, leaf = key.split(".", 2)[1:]
        assert torch.equal(value, tv[f"features.{index}.{leaf}"]), key


def test_autoencoder_trains_with_the_lpips_term(tmp_path, cached_lpips):
    losses: list[float] = []
    cfg = config(tmp_path, "ae", stage="autoencoder", max_steps=2, lpips_weight=1.0, lpips_net="vgg",
                 lpips_backbone="random")
    train(cfg, clips(2), on_step=lambda step, loss: losses.append(loss))
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)


def test_autoencoder_held_out_psnr_rises_on_mp4_footage(tmp_path):
    """Pixel autoencoder (cmd-ucf101-64 miniature) on moving-shape footage encoded as mp4 (decoded once):
    reconstruction PSNR of held-out videos rises from the random start, and keeps rising with training
    (the run resumes from its checkpoint between the two measurements)."""
    from cmdbench.data.clips import ClipSpec
    from cmdbench.data.datasets import folder
    from cmdbench.data.synthetic import write_folder

    write_folder(tmp_path / "train", 16, num_frames=20, height=32, width=32, seed=0)
    write_folder(tmp_path / "held_out", 4, num_frames=20, height=32, width=32, seed=1000)
    spec = ClipSpec(num_frames=16, size=(16, 16), seed=0)  # the cmd-ucf101-64 miniature's clips
    train_clips = list(folder(tmp_path / "train", clip=spec))  # decoded once: the loop is what is timed here
    held = torch.stack([item.video for item in folder(tmp_path / "held_out", clip=spec)])
    x = (held.float() / 127.5 - 1).permute(0, 2, 1, 3, 4)  # (N, 3, T, H, W)

    def psnr(ae) -> float:
        with torch.no_grad():
            recon = ae(x).clamp(-1, 1)
        mse = (((recon.double() - x.double()) / 2) ** 2).mean(dim=(1, 2, 3, 4))  # on the [0, 1] scale
        return float((10 * torch.log10(1 / mse)).mean())

    common = {"stage": "autoencoder", "output_dir": str(tmp_path / "run"), "preset": "cmd-ucf101-64",
              "tiny": True, "batch_size": 4, "learning_rate": 3e-3, "checkpoint_every": 20}
    curve = [psnr(build_components(TrainConfig(**common)).autoencoder)]
    for steps in (20, 100):
        AcceleratorState._reset_state(reset_partial_state=True)
        final = train(TrainConfig(**common, max_steps=steps), train_clips)
        curve.append(psnr(CMDAutoencoder.from_pretrained(str(final) + "_raw")))
    print("held-out PSNR (dB) at steps 0, 20, 100:", [round(v, 2) for v in curve])
    assert curve[1] > curve[0] + 5 and curve[2] > curve[1] + 1.5, curve


# --- The data path's loaders plug in as batch sources -------------------------------------------------------


def test_the_loop_takes_the_training_clip_loader(tmp_path):
    """``cmdbench.data.train_clips.make_train_loader`` (fresh windows, a DataLoader with a worker process) is a
    batch source of the loop: a killed and resumed run equals the straight run."""
    from cmdbench.data.synthetic import write_folder
    from cmdbench.data.train_clips import ClipBatchSource, TrainClipSpec, build_train_clips

    write_folder(tmp_path / "videos", 3, num_frames=12, height=20, width=20)
    spec = TrainClipSpec(num_frames=TINY.num_frames, size=(TINY.height, TINY.width), clips_per_video=2, seed=0)
    clip_loader = ClipBatchSource(build_train_clips("folder", tmp_path / "videos", spec), num_workers=1)
    straight = train(config(tmp_path, "straight"), clip_loader)
    AcceleratorState._reset_state(reset_partial_state=True)
    cfg = config(tmp_path, "killed")
    train(cfg, clip_loader, stop_after_steps=3)
    AcceleratorState._reset_state(reset_partial_state=True)
    resumed = train(cfg, clip_loader)
    a, b = state(straight), state(resumed)
    assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-5) for k in a)


def test_latent_mode_killed_in_the_store_build_and_in_training_resumes_exactly(tmp_path, monkeypatch):
    """Latent mode on the DataLoader of fresh windows (2 per video): a run killed while it builds its latent
    store, resumed (the build continues after its complete shards), killed again in training and resumed,
    ends equal to a straight run; a corrupt shard of the finished store stops a run by name."""
    from cmdbench.cmd import latents
    from cmdbench.data.latent_store import LatentStore, LatentStoreError, stored_samples
    from cmdbench.data.synthetic import write_folder
    from cmdbench.data.train_clips import ClipBatchSource, TrainClipSpec, build_train_clips

    write_folder(tmp_path / "videos", 3, num_frames=12, height=20, width=20)
    spec = TrainClipSpec(num_frames=TINY.num_frames, size=(TINY.height, TINY.width), clips_per_video=2, seed=0)
    source = ClipBatchSource(build_train_clips("folder", tmp_path / "videos", spec), num_workers=0)
    ae_dir = tmp_path / "ae"
    build_components(config(tmp_path, "unused")).autoencoder.save_pretrained(ae_dir)
    common = {"stage": "content", "precompute_latents": True, "autoencoder": str(ae_dir), "max_steps": 4,
              "latent_samples_per_shard": 2, "num_workers": 0}
    straight = train(config(tmp_path, "straight", **common), source)

    calls: list[int] = []
    real = latents.encode_clips

    def killed_at_the_third_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(latents, "encode_clips", killed_at_the_third_batch)
    cfg = config(tmp_path, "killed", **common)
    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, source)
    store = next((tmp_path / "killed" / "latents").iterdir())
    assert stored_samples(store, 0) == 4 and sorted(p.name for p in store.glob("*.tar")) == [
        "shard-rank00000-000000.tar", "shard-rank00000-000001.tar"]  # 6 clips: 2 complete shards, 1 lost
    calls.clear()
    AcceleratorState._reset_state(reset_partial_state=True)
    train(cfg, source, stop_after_steps=3)  # the build resumes; then a kill after step 3 (checkpoint at 2)
    assert len(calls) == 1  # only the missing batch was encoded again
    AcceleratorState._reset_state(reset_partial_state=True)
    steps: list[int] = []
    resumed = train(cfg, source, on_step=lambda step, loss: steps.append(step))
    assert steps == [3, 4] and len(calls) == 1  # the finished store is reused
    for suffix in ("", "_raw"):
        a = presets.build_pipeline(TINY).content_model.from_pretrained(str(straight) + suffix).state_dict()
        b = presets.build_pipeline(TINY).content_model.from_pretrained(str(resumed) + suffix).state_dict()
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5, msg=f"{suffix or 'ema'} {k}")
    ids = lambda root: [s["meta.json"] for i in range(3) for s in LatentStore.open(root).read_shard(i)]  # noqa: E731
    assert ids(store) == ids(next((tmp_path / "straight" / "latents").iterdir()))  # same clips, same order

    shard = store / "shard-rank00000-000001.tar"
    blob = bytearray(shard.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    shard.write_bytes(bytes(blob))
    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(LatentStoreError, match="shard .*shard-rank00000-000001.tar is corrupt"):
        train(config(tmp_path, "on_corrupt", **common, latent_store=str(store.parent)), source)


def test_a_finished_store_serves_any_number_of_processes(tmp_path, monkeypatch):
    """A store two processes built (here ranks 0 and 1 of 2, in turn) is read by a one-process run as it is:
    nothing is encoded again, every sample is read. The ranks' shares of an epoch add up to the epoch."""
    from cmdbench.cmd import latents
    from cmdbench.cmd.training import rank_share

    assert [[rank_share(n, r, w, b) for r in range(w)] for n, w, b in ((7, 2, 2), (3, 4, 1), (12, 2, 3))] == [
        [4, 3], [1, 1, 1, 0], [6, 6]]
    ae_dir = tmp_path / "ae"
    build_components(config(tmp_path, "unused")).autoencoder.save_pretrained(ae_dir)
    ae = CMDAutoencoder.from_pretrained(ae_dir)
    data = clips(3)
    source = SequenceSource(data, 0)
    key = latents.latent_store_key(source.describe(), ae, None, TINY, 0)
    store = tmp_path / "stores" / f"latents-{key}"
    for rank in range(2):
        latents.build_latent_store(source(start_step=0, rank=rank, world_size=2, batch_size=2), store, ae, None,
                                   rank=rank, world_size=2, seed=0, num_samples=rank_share(3, rank, 2, 2), key=key)
    monkeypatch.setattr(latents, "encode_clips", lambda *a, **k: pytest.fail("encoded again"))
    seen: list[str] = []
    real = latents.open_latent_loader

    def spy(*args, **kwargs):
        for batch in real(*args, **kwargs):
            seen.extend(batch.ids)
            yield batch

    monkeypatch.setattr("cmdbench.cmd.training.open_latent_loader", spy)
    train(config(tmp_path, "one", stage="content", max_steps=3, batch_size=1, precompute_latents=True,
                 autoencoder=str(ae_dir), latent_store=str(tmp_path / "stores")), data)
    assert sorted(seen) == ["0", "1", "2"]  # 3 steps of 1 = the epoch the two ranks stored
