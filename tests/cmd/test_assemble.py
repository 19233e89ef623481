"""Assembling trained stages into a sampling pipeline (`cmdbench train assemble`), loading it with
`--checkpoint`, refusing stages that were not trained together, and the CLI end to end on a miniature
UCF-101 made of encoded video files."""

from __future__ import annotations

import json
import math
import shutil

import pandas
import pytest
import torch
from accelerate.state import AcceleratorState

from cmdbench.cmd import presets
from cmdbench.cmd.assemble import ASSEMBLY_FILE, AssemblyError, assemble, read_assembly
from cmdbench.cmd.autoencoder import CMDAutoencoder
from cmdbench.cmd.motion_dit import MotionDiT
from cmdbench.cmd.pipeline import CMDPipeline
from cmdbench.cmd.training import TrainConfig, train
from cmdbench.data.synthetic import moving_shape
from cmdbench.interfaces import GeneratorSpec
from cmdbench.seeding import make_generators

TINY = presets.TINY


def _reset():
    AcceleratorState._reset_state(reset_partial_state=True)


def clips(n: int = 3, label: bool = False, num_frames: int = TINY.num_frames) -> list:
    out = []
    for i in range(n):
        video, caption = moving_shape(i, label=i, num_frames=num_frames, height=TINY.height, width=TINY.width)
        out.append((video, i if label else caption))
    return out


def run(root, name: str, stage: str, data, **kw):
    _reset()
    cfg = TrainConfig(stage=stage, output_dir=str(root / name), batch_size=2, max_steps=2, checkpoint_every=2,
                      learning_rate=1e-3, **kw)
    train(cfg, data)
    _reset()
    return root / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A cmd-tiny autoencoder, content and motion run (2 steps each), plus a second autoencoder."""
    root = tmp_path_factory.mktemp("runs")
    data = clips()
    ae = run(root, "ae", "autoencoder", data)
    content = run(root, "content", "content", data, autoencoder=str(ae), seed=1)
    motion = run(root, "motion", "motion", data, autoencoder=str(ae / "final" / "autoencoder"), seed=2)
    other_ae = run(root, "ae2", "autoencoder", data, seed=5)
    return {"ae": ae, "content": content, "motion": motion, "ae2": other_ae, "root": root, "data": data}


def test_assembled_folder_holds_the_trained_weights_and_samples(runs, tmp_path):
    out = assemble(runs["ae"], runs["content"], runs["motion"] / "final" / "motion_model", tmp_path / "cmd")
    pipe = CMDPipeline.from_pretrained(out, local_files_only=True)
    # EMA weights of each stage, the autoencoder both diffusion stages learned, the frozen parts they used.
    for component, folder in (("autoencoder", runs["ae"] / "final" / "autoencoder"),
                              ("content_model", runs["content"] / "final" / "content_model"),
                              ("motion_model", runs["motion"] / "final" / "motion_model")):
        cls = type(getattr(pipe, component))
        want = cls.from_pretrained(folder).state_dict()
        got = getattr(pipe, component).state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want), component
    from transformers import CLIPTextModel

    frozen = CLIPTextModel.from_pretrained(runs["content"] / "final" / "frozen" / "text_encoder").state_dict()
    assert all(torch.equal(pipe.text_encoder.state_dict()[k], v) for k, v in frozen.items())
    assert pipe.motion_scheduler.config.beta_schedule == "linear"  # DiT's schedule, as the motion stage trained
    assert pipe.content_scheduler.config.beta_schedule == "scaled_linear"  # SD's, as the content UNet trained
    meta = read_assembly(out)
    assert (meta["preset"], meta["tiny"], meta["weights"]) == ("cmd-tiny", False, "ema")
    assert {s: meta["stages"][s]["steps"] for s in meta["stages"]} == {"autoencoder": 2, "content": 2, "motion": 2}
    assert meta["stages"]["motion"]["seed"] == 2

    gen = presets.make_generator(TINY, GeneratorSpec(checkpoint=str(out)))
    a = gen.sample(prompts=["Fire", "Fire"], num_frames=8, height=16, width=16, steps=2,
                   generator=make_generators([0, 1]))
    b = gen.sample(prompts=["Fire"], num_frames=8, height=16, width=16, steps=2, generator=make_generators([1]))
    assert a.shape == (2, 8, 3, 16, 16) and a.dtype == torch.uint8
    assert (a[1].int() - b[0].int()).abs().max() <= 2  # per-sample seeds, as with any generator


def test_raw_weights_on_request(runs, tmp_path):
    out = assemble(runs["ae"], runs["content"], runs["motion"], tmp_path / "raw", raw=True)
    pipe = CMDPipeline.from_pretrained(out, local_files_only=True)
    raw = MotionDiT.from_pretrained(runs["motion"] / "final" / "motion_model_raw").state_dict()
    ema = MotionDiT.from_pretrained(runs["motion"] / "final" / "motion_model").state_dict()
    got = pipe.motion_model.state_dict()
    assert all(torch.equal(got[k], raw[k]) for k in raw)
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)
    # The autoencoder stays the one the diffusion stages trained on (its EMA weights here).
    ae = CMDAutoencoder.from_pretrained(runs["ae"] / "final" / "autoencoder").state_dict()
    assert all(torch.equal(pipe.autoencoder.state_dict()[k], ae[k]) for k in ae)
    assert read_assembly(out)["weights"] == "raw"


def test_stages_that_do_not_belong_together_are_refused(runs, tmp_path):
    root, data = runs["root"], runs["data"]
    ae, content, motion = runs["ae"], runs["content"], runs["motion"]
    with pytest.raises(AssemblyError, match="does not exist"):
        assemble(tmp_path / "nope", content, motion, tmp_path / "o")
    with pytest.raises(AssemblyError, match="output of a 'content' run, not a 'motion' run"):
        assemble(ae, content, content, tmp_path / "o")
    with pytest.raises(AssemblyError, match="neither a training output_dir"):
        assemble(ae, content, tmp_path, tmp_path / "o")
    # The diffusion stages learned the latents of `ae`, not of `ae2`.
    with pytest.raises(AssemblyError, match="not the autoencoder of autoencoder run"):
        assemble(runs["ae2"], content, motion, tmp_path / "o")
    # A motion run on another autoencoder.
    motion2 = run(root, "motion_on_ae2", "motion", data, autoencoder=str(runs["ae2"]))
    with pytest.raises(AssemblyError, match="latents of different autoencoders"):
        assemble(ae, content, motion2, tmp_path / "o")
    # Different frozen parts (the record of another text encoder).
    tampered = tmp_path / "motion_other_text"
    shutil.copytree(motion, tampered)
    record = json.loads((tampered / "final" / "stage.json").read_text())
    record["frozen_sha256"]["text_encoder"] = "0" * 64
    (tampered / "final" / "stage.json").write_text(json.dumps(record))
    with pytest.raises(AssemblyError, match="different frozen parts \\(text_encoder differ"):
        assemble(ae, content, tampered, tmp_path / "o")
    # An unfinished run.
    _reset()
    cfg = TrainConfig(stage="motion", output_dir=str(tmp_path / "unfinished"), batch_size=2, max_steps=4,
                      checkpoint_every=1, autoencoder=str(ae))
    train(cfg, data, stop_after_steps=1)
    _reset()
    with pytest.raises(AssemblyError, match="has not finished"):
        assemble(ae, content, tmp_path / "unfinished", tmp_path / "o")
    # Another preset.
    ucf_ae = run(root, "ucf_ae", "autoencoder", clips(label=True, num_frames=16), preset="cmd-ucf101-64", tiny=True)
    with pytest.raises(AssemblyError, match="different presets"):
        assemble(ucf_ae, content, motion, tmp_path / "o")
    # An existing folder that is not an assembly is never overwritten.
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(AssemblyError, match="not an assembled pipeline folder"):
        assemble(ae, content, motion, tmp_path / "precious")


def test_the_motion_stage_assembles_itself_when_told_where(runs, tmp_path):
    out = tmp_path / "auto"
    run(tmp_path, "motion", "motion", runs["data"], autoencoder=str(runs["ae"]), content_run=str(runs["content"]),
        assemble_to=str(out))
    meta = read_assembly(out)
    assert meta["stages"]["motion"]["run_dir"] == str((tmp_path / "motion").resolve())
    assert meta["stages"]["content"]["run_dir"] == str(runs["content"].resolve())
    with pytest.raises(ValueError, match="assemble_to assembles the pipeline at the end of the motion stage"):
        TrainConfig(stage="content", output_dir="x", assemble_to=str(out))


def test_loading_errors_name_the_fix(runs, tmp_path):
    out = assemble(runs["ae"], runs["content"], runs["motion"], tmp_path / "cmd")
    with pytest.raises(presets.CheckpointMismatchError, match="assembled from cmd-tiny runs"):
        presets.make_generator(presets.UCF101_64, GeneratorSpec(checkpoint=str(out)))
    with pytest.raises(FileNotFoundError, match="cmdbench train assemble"):
        presets.make_generator(TINY, GeneratorSpec(checkpoint=str(runs["motion"])))
    with pytest.raises(FileNotFoundError, match="cmdbench train assemble"):
        presets.make_generator(TINY, GeneratorSpec(checkpoint=str(runs["motion"] / "final" / "motion_model")))
    assert (out / ASSEMBLY_FILE).is_file()


def test_cli_trains_three_stages_on_ucf101_files_assembles_samples_and_evaluates(tmp_path, capsys):
    """A miniature UCF-101 of AVI files -> autoencoder -> content -> motion (cmd-ucf101-64 miniature, 16 frames)
    -> assemble -> sample and evaluate from the assembled folder, all through the CLI."""
    from cmdbench.cli import main
    from cmdbench.data.synthetic import write_fake_ucf101

    root = write_fake_ucf101(tmp_path / "ucf", classes=(0, 1, 2), train_per_class=2, test_per_class=1)
    base = {"preset": "cmd-ucf101-64", "tiny": True, "dataset": "ucf101", "data_dir": str(root), "batch_size": 2,
            "max_steps": 2, "checkpoint_every": 2, "learning_rate": 1e-3}
    stages = {  # decoding in the training process, in a DataLoader worker, and into a latent store
        "autoencoder": {"num_workers": 0},
        "content": {"autoencoder": str(tmp_path / "ae"), "num_workers": 1},
        "motion": {"autoencoder": str(tmp_path / "ae"), "gradient_accumulation_steps": 2, "num_workers": 0,
                   "precompute_latents": True, "clips_per_video": 2},
    }
    dirs = {"autoencoder": tmp_path / "ae", "content": tmp_path / "content", "motion": tmp_path / "motion"}
    for stage, extra in stages.items():
        cfg = tmp_path / f"{stage}.json"
        cfg.write_text(json.dumps({**base, **extra, "output_dir": str(dirs[stage])}))
        _reset()
        assert main(["train", stage, "--config", str(cfg)]) == 0, stage
    printed = capsys.readouterr().out
    assert "6 clips per epoch" in printed and "12 clips per epoch" in printed  # 6 train videos, 1 or 2 windows each
    assert "global batch 4 (2 x 1 process(es) x 2 accumulation)" in printed
    assert "data ucf101: listed=6 usable=6" in printed  # the dataset report, once per run
    (store,) = (dirs["motion"] / "latents").iterdir()
    assert json.loads((store / "index-rank00000.json").read_text())["num_samples"] == 12  # one epoch, encoded
    _reset()
    out = tmp_path / "cmd"
    assert main(["train", "assemble", "--autoencoder", str(dirs["autoencoder"]), "--content",
                 str(dirs["content"] / "final" / "content_model"), "--motion", str(dirs["motion"]),
                 "--out", str(out)]) == 0
    assert "cmd-ucf101-64 (tiny) pipeline" in capsys.readouterr().out
    samples = tmp_path / "samples"
    assert main(["sample", "cmd-ucf101-64", "--checkpoint", str(out), "--seeds", "0-1", "--steps", "2",
                 "--out", str(samples)]) == 0
    assert sorted(p.name for p in samples.glob("*.mp4")) == ["seed-000000.mp4", "seed-000001.mp4"]
    # evaluate --generator loads and samples the same folder and scores it with a 16-frame FVD protocol against
    # the real videos of the miniature (the random-weight I3D stand-in: the value only shows the path runs).
    capsys.readouterr()
    assert main(["evaluate", "--generator", "cmd-ucf101-64", "--checkpoint", str(out), "--seeds", "0-1",
                 "--steps", "2", "--metric", "fvd2048_16f", "--extractor", "i3d-random-tiny", "--protocol", "tats",
                 "--real", str(root / "UCF-101"), "--num-real", "0", "--records", str(tmp_path / "records"),
                 "--cache-dir", str(tmp_path / "ref_cache"), "--non-strict", "--allow-singular"]) == 0
    printed = capsys.readouterr().out
    assert "fvd2048_16f = " in printed and "16 frames each" in printed and "RANDOM WEIGHTS" in printed
    assert "not conformant (9 real / 2 fake" in printed  # the UCF-101 tree's 9 videos, 2 seeds
    (row,) = pandas.read_csv(next((tmp_path / "records").glob("eval-*.csv"))).to_dict("records")
    assert (row["generator"], row["checkpoint"], row["metric"], row["num_frames"]) == (
        "cmd-ucf101-64", str(out), "fvd2048_16f", 16)
    assert math.isfinite(row["value"]) and row["value"] >= 0
    # Loading the stage folder itself points at the assembly command.
    assert main(["sample", "cmd-ucf101-64", "--checkpoint", str(dirs["motion"]), "--seeds", "0",
                 "--out", str(tmp_path / "s2")]) == 2
    assert "cmdbench train assemble" in capsys.readouterr().err
    # reproduce --tiny samples its own tiny generators: it refuses a checkpoint instead of ignoring it.
    assert main(["reproduce", "ucf101", "--tiny", "--checkpoint", str(out), "--work-dir", str(tmp_path / "w")]) == 2
    assert "does not load --checkpoint; score a trained model" in capsys.readouterr().err
