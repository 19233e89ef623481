"""The README's "first hour", run exactly as documented: two folders of videos -> FVD, CLIPSIM and PSNR in one
command, offline, with the stand-ins; then the same through the diffusers adapter on a tiny random
text-to-video pipeline. The commands below are the documented ones (only the folder names are filled in).
"""

from __future__ import annotations

import json
import shlex
import warnings

import pytest
import torch

from tests.commands.conftest import notes_of, records_of, write_videos

# The documented commands, verbatim (README "The first hour").
TWO_FOLDERS = (
    "cmdbench evaluate --real real/ --videos fake/ --name my-model "
    "--metric fvd2048_16f --metric clipsim --metric psnr "
    "--extractor i3d-random-tiny --clip-weights clip-random-tiny --non-strict --allow-singular --records runs/"
)
TABLE = "cmdbench table runs/"
DIFFUSERS = (
    "cmdbench evaluate --generator diffusers:pipeline/ --seeds 0-5 --steps 2 --prompts prompts.txt "
    "--real real/ --metric fvd2048_16f --metric clipsim "
    "--extractor i3d-random-tiny --clip-weights clip-random-tiny --non-strict --allow-singular --records runs/"
)


def run_documented(cli, command: str, root) -> int:
    argv = shlex.split(command)
    assert argv[0] == "cmdbench"
    paths = {"real/", "fake/", "runs/", "pipeline/", "prompts.txt"}
    return cli([str(root / a) if a in paths else (f"diffusers:{root / 'pipeline'}" if a == "diffusers:pipeline/"
                                                    else a) for a in argv[1:]])


@pytest.mark.slow
def test_two_folders_give_fvd_clipsim_and_psnr_in_one_command(cli, tmp_path, capsys):
    # real/: originals; fake/: generated videos of the same names, with the prompts in fake/captions.csv
    write_videos(tmp_path / "real", 6, seed=0, captions=False)
    write_videos(tmp_path / "fake", 6, seed=1, shift=40)
    assert run_documented(cli, TWO_FOLDERS, tmp_path) == 0
    out = capsys.readouterr().out
    lines = {line.split(" = ")[0]: line for line in out.splitlines() if " = " in line}
    assert set(lines) == {"fvd2048_16f", "clipsim", "psnr"}
    assert "[videogpt: i3d-random-tiny sha256:" in lines["fvd2048_16f"]
    assert "real 6 clips (32x32) vs fake 6 clips (32x32), 16 frames each" in lines["fvd2048_16f"]
    assert "not conformant (6 real / 6 fake; the protocol takes 2048 / 2048)" in lines["fvd2048_16f"]
    assert "[clip-random-tiny/every-frame/clip-preprocess: weights sha256:" in lines["clipsim"]
    for name in ("fvd2048_16f", "clipsim"):
        assert "RANDOM WEIGHTS" in lines[name]
    assert " dB  [psnr" in lines["psnr"] and "6 videos (vs their originals) of 16 frames (32x32)" in lines["psnr"]
    rows = records_of(tmp_path / "runs").set_index("metric")
    assert (rows["n"] == 6).all() and rows["generator"].str.startswith("folder:my-model@").all()
    assert notes_of(rows.loc["clipsim"])["random_weights"] is True
    assert rows.loc["fvd2048_16f", "protocol"].startswith("videogpt; not conformant (6 real / 6 fake")

    assert run_documented(cli, TABLE, tmp_path) == 0
    table = capsys.readouterr().out
    assert "fvd2048_16f (not conformant: 6 real / 6 fake) (random weights)" in table
    assert "clipsim (random weights) [cosine]" in table and "psnr [dB]" in table


def tiny_text_to_video_pipeline(directory) -> None:
    """A random TextToVideoSDPipeline in diffusers' save_pretrained layout (UNet3D, AutoencoderKL f=2, CLIP text
    model with clip-anytorch's BPE as the tokenizer files): 16 frames of 16x16 by default."""
    import clip.clip
    from diffusers import AutoencoderKL, DDIMScheduler, TextToVideoSDPipeline, UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    bpe, tok = clip.clip._tokenizer, directory / "bpe"
    tok.mkdir(parents=True)
    (tok / "vocab.json").write_text(json.dumps(bpe.encoder))
    merges = sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.get)
    (tok / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet3DConditionModel(sample_size=8, in_channels=4, out_channels=4,
                                    down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                                    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), block_out_channels=(16, 32),
                                    layers_per_block=1, norm_num_groups=8, cross_attention_dim=16, attention_head_dim=4)
        vae = AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, layers_per_block=1,
                            norm_num_groups=4, sample_size=16)
        text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                            num_attention_heads=2, max_position_embeddings=77, projection_dim=16))
    tokenizer = CLIPTokenizer(str(tok / "vocab.json"), str(tok / "merges.txt"), pad_token="<|endoftext|>",
                              model_max_length=77)
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              set_alpha_to_one=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        TextToVideoSDPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=tokenizer,
                              scheduler=scheduler).save_pretrained(directory / "pipeline")


@pytest.mark.slow
def test_a_diffusers_pipeline_through_the_adapter_gives_fvd_and_clipsim(cli, tmp_path, capsys):
    pytest.importorskip("baselines.diffusers_adapter.generator")
    write_videos(tmp_path / "real", 6, seed=0, captions=False)
    tiny_text_to_video_pipeline(tmp_path)
    (tmp_path / "prompts.txt").write_text("a red ball bouncing\na cat on a sofa\n")
    assert run_documented(cli, DIFFUSERS, tmp_path) == 0
    out = capsys.readouterr().out
    lines = {line.split(" = ")[0]: line for line in out.splitlines() if " = " in line}
    assert set(lines) == {"fvd2048_16f", "clipsim"}
    assert "real 6 clips (32x32) vs fake 6 clips (16x16), 16 frames each" in lines["fvd2048_16f"]
    assert "frame sizes differ (real 32x32 vs fake 16x16)" in lines["fvd2048_16f"]
    assert all("RANDOM WEIGHTS" in line for line in lines.values())
    rows = records_of(tmp_path / "runs")
    assert set(rows["generator"]) == {f"diffusers:{tmp_path / 'pipeline'}"} and (rows["n"] == 6).all()
    assert (rows["num_frames"] == 16).all() and (rows["steps"] == 2).all()
    saved = sorted(p.name for p in (tmp_path / "runs").glob("*.videos/*.mp4"))
    assert saved == [f"seed-{s:06d}.mp4" for s in range(6)]  # written before scoring
