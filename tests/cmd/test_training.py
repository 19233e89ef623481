"""CMD training (accelerate, EMA, checkpoints): resume equals straight-through, data order, caches, bad config."""

from __future__ import annotations

import json

import pytest
import torch
from accelerate.state import AcceleratorState
from diffusers.training_utils import EMAModel

from cmdbench.cmd import presets
from cmdbench.cmd.autoencoder import CMDAutoencoder
from cmdbench.cmd.motion_dit import MotionDiT
from cmdbench.cmd.training import (
    LatentCache,
    TrainConfig,
    TrainConfigError,
    batch_indices,
    checkpoint_dirs,
    sample_index,
    train,
)
from cmdbench.data.synthetic import moving_shape

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


@pytest.mark.parametrize("stage", ["motion", "autoencoder"])
def test_resume_after_a_kill_equals_training_straight_through(tmp_path, stage):
    data = clips()
    straight = train(config(tmp_path, "straight", stage=stage), data)
    AcceleratorState._reset_state(reset_partial_state=True)
    cfg = config(tmp_path, "killed", stage=stage)
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
    cfg = TrainConfig(stage="motion", output_dir="unused", batch_size=3, seed=5)
    n = 7
    epoch0 = [sample_index(5, i, n) for i in range(n)]
    assert sorted(epoch0) == list(range(n))  # each clip once per epoch: nothing dropped or repeated
    assert batch_indices(cfg, 2, 0, 1, n) == [sample_index(5, 6 + j, n) for j in range(3)]
    # Two processes split a global batch without overlap within an epoch.
    world = [batch_indices(cfg, 0, r, 2, n) for r in range(2)]
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


def test_precomputed_latents_match_the_autoencoder(tmp_path):
    ae_dir = tmp_path / "ae"
    torch.manual_seed(0)
    ae = presets.build_pipeline(TINY).autoencoder
    ae.save_pretrained(ae_dir)
    data = clips(3)
    cfg = config(tmp_path, "cached", stage="content", max_steps=2, precompute_latents=True,
                 autoencoder=str(ae_dir))
    train(cfg, data)
    files = list((tmp_path / "cached" / "latents").glob("latents-*.pt"))
    assert len(files) == 1
    cache = LatentCache.load(files[0])
    video = torch.stack([v for v, _ in data]).float() / 127.5 - 1  # (B, T, 3, H, W)
    content, motion = ae.encode(video.permute(0, 2, 1, 3, 4))
    torch.testing.assert_close(cache.content, content.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache.motion, motion.detach(), atol=1e-5, rtol=1e-5)
    assert cache.conditions == [c for _, c in data]


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
    from cmdbench.data.synthetic import write_folder

    write_folder(tmp_path / "videos", 3, num_frames=10, height=20, width=20)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"preset": "cmd-tiny", "dataset": "folder", "data_dir": str(tmp_path / "videos"),
                               "output_dir": str(tmp_path / "run"), "batch_size": 2, "max_steps": 2,
                               "checkpoint_every": 1}))
    assert main(["train", "content", "--config", str(cfg)]) == 0
    assert (tmp_path / "run" / "final" / "content_model" / "config.json").is_file()
    assert [p.name for p in checkpoint_dirs(tmp_path / "run")] == ["step-00000001", "step-00000002"]
    assert "3 clips" in capsys.readouterr().out
    AcceleratorState._reset_state(reset_partial_state=True)
    assert main(["train", "motion", "--config", str(tmp_path / "missing.json")]) == 2


@pytest.mark.slow
def test_two_process_cpu_training_with_torchrun(tmp_path):
    """DDP over two CPU processes (gloo): both ranks checkpoint their RNG, the run finishes."""
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
                               "checkpoint_every": 2}))
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = ["torchrun", "--nproc_per_node", "2", "-m", "cmdbench", "train", "motion", "--config", str(cfg)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    step = tmp_path / "run" / "checkpoints" / "step-00000002"
    assert (step / "random_states_0.pkl").is_file() and (step / "random_states_1.pkl").is_file()
    assert (tmp_path / "run" / "final" / "motion_model" / "config.json").is_file()
    assert proc.stdout.count("final EMA weights") == 1
