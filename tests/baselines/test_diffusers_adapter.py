"""The diffusers pipeline adapter (``diffusers:<path-or-id>``) on tiny random pipelines saved offline.

The pipelines are built here with random weights in diffusers' real save_pretrained layout: a
``TextToVideoSDPipeline`` (UNet3DConditionModel, AutoencoderKL, CLIP text model) and an ``AnimateDiffPipeline``
(UNet2DConditionModel + MotionAdapter); the CLIP tokenizer's vocab.json/merges.txt are written from
clip-anytorch's bundled BPE. Oracles: the pipeline called directly with cmdbench's per-sample noise
(``cmdbench.seeding.randn_per_sample``) as ``latents``; the pipeline's own numpy output; FLOPs of the real
UNet on real inputs of the traced shapes.
"""

from __future__ import annotations

import json
import warnings

import pandas as pd
import pytest
import torch

from cmdbench.interfaces import GeneratorSpec, UnsupportedSettingError
from cmdbench.registry import GENERATORS, UnknownNameError, load_plugins
from cmdbench.seeding import make_generators, randn_per_sample
from cmdbench.testing import check_generator

load_plugins()
from baselines.diffusers_adapter.generator import (  # noqa: E402
    DiffusersVideoGenerator,
    NotAVideoPipelineError,
    load_diffusers_generator,
)

TEXT_DIM = 16


def clip_tokenizer(directory):
    import clip.clip
    from transformers import CLIPTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    bpe = clip.clip._tokenizer
    (directory / "vocab.json").write_text(json.dumps(bpe.encoder))
    merges = sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.get)
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), pad_token="<|endoftext|>",
                         model_max_length=77)


def tiny_parts(tmp):
    from diffusers import AutoencoderKL, DDIMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    vae = AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, layers_per_block=1,
                        norm_num_groups=4, sample_size=16)  # f = 2
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=TEXT_DIM, intermediate_size=32,
                                        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                                        projection_dim=TEXT_DIM))
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              set_alpha_to_one=False)
    return {"vae": vae, "text_encoder": text, "tokenizer": clip_tokenizer(tmp / "bpe"), "scheduler": scheduler}


@pytest.fixture(scope="module")
def t2v_dir(tmp_path_factory):
    """A tiny random TextToVideoSDPipeline saved with save_pretrained (8 MB)."""
    from diffusers import TextToVideoSDPipeline, UNet3DConditionModel

    tmp = tmp_path_factory.mktemp("t2v")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet3DConditionModel(sample_size=8, in_channels=4, out_channels=4,
                                    down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                                    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), block_out_channels=(16, 32),
                                    layers_per_block=1, norm_num_groups=8, cross_attention_dim=TEXT_DIM,
                                    attention_head_dim=4)
        parts = tiny_parts(tmp)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        TextToVideoSDPipeline(unet=unet, **parts).save_pretrained(tmp / "pipe")
    return tmp / "pipe"


@pytest.fixture(scope="module")
def gen(t2v_dir):
    return GENERATORS.get(f"diffusers:{t2v_dir}")(GeneratorSpec())


def settings(**kw):
    return {"num_frames": 4, "height": 16, "width": 16, "steps": 2, "guidance_scale": 9.0, **kw}


# --- contract ------------------------------------------------------------------------------------------------


def test_contract_passes_for_a_text_to_video_sd_pipeline(t2v_dir):
    case = check_generator(f"diffusers:{t2v_dir}", GeneratorSpec())
    assert case.gen.name == f"diffusers:{t2v_dir}"
    assert case.gen.defaults.num_frames == 16 and case.gen.defaults.guidance_scale == 9.0  # from __call__
    assert (case.gen.defaults.height, case.gen.defaults.width) == (16, 16)  # sample_size 8 x VAE factor 2


def test_contract_passes_for_an_animatediff_pipeline(tmp_path):
    from diffusers import AnimateDiffPipeline, MotionAdapter, UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(block_out_channels=(16, 32), layers_per_block=1, sample_size=8, in_channels=4,
                                    out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=TEXT_DIM,
                                    norm_num_groups=8, attention_head_dim=4)
        adapter = MotionAdapter(block_out_channels=(16, 32), motion_layers_per_block=1, motion_norm_num_groups=8,
                                motion_num_attention_heads=2, motion_max_seq_length=32)
        parts = tiny_parts(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        AnimateDiffPipeline(unet=unet, motion_adapter=adapter, **parts).save_pretrained(tmp_path / "ad")
    case = check_generator(f"diffusers:{tmp_path / 'ad'}", GeneratorSpec())
    assert type(case.gen.denoiser).__name__ == "UNetMotionModel"
    # AnimateDiff repeats the text states per frame: the traced inputs scale as batch x frames.
    stages = {s.name: s for s in case.gen.cost_stages(num_frames=4, height=32, width=32, steps=2)}
    assert stages["denoiser"].make_inputs(3)["encoder_hidden_states"].shape == (12, 77, TEXT_DIM)


# --- seeding, output, stages --------------------------------------------------------------------------------


def test_sample_i_is_the_pipeline_run_on_cmdbench_per_sample_noise(gen):
    seeds = [5, 2]
    video = gen.sample(prompts=["a cat", "a dog"], **settings(), generator=make_generators(seeds))
    for i, seed in enumerate(seeds):
        noise = randn_per_sample(make_generators([seed]), (4, 4, 8, 8))  # (1, C, T, h, w), float32, CPU
        expected = gen.pipe(prompt=[["a cat", "a dog"][i]], num_frames=4, height=16, width=16, num_inference_steps=2,
                            guidance_scale=9.0, latents=noise, output_type="np").frames  # (1, T, H, W, 3) in [0, 1]
        expected = torch.from_numpy(expected).permute(0, 1, 4, 2, 3).mul(255).round().to(torch.uint8)
        assert (video[i : i + 1].int() - expected.int()).abs().max() <= 1  # batched vs single VAE decode


def test_stage_events_bracket_text_encoder_denoiser_and_decoder(gen):
    events, unet_calls = [], []
    gen.stage_hook = lambda name, event: events.append((name, event))
    handle = gen.denoiser.register_forward_hook(lambda *_: unet_calls.append(events[-1]))  # after the call
    try:
        gen.sample(prompts=["a cat"], **settings(steps=3), generator=make_generators([0]))
    finally:
        gen.stage_hook = None
        handle.remove()
    assert events == [("text_encoder", "start"), ("text_encoder", "end"),   # the prompt
                      ("text_encoder", "start"), ("text_encoder", "end"),   # the empty prompt (guidance)
                      ("denoiser", "start"), ("denoiser", "end"),
                      ("vae_decoder", "start"), ("vae_decoder", "end")]
    assert unet_calls == [("denoiser", "start")] * 3  # every UNet call inside the denoiser stage
    assert not gen.denoiser._forward_pre_hooks and "decode" not in vars(gen.vae)  # nothing left behind


def test_guidance_one_disables_classifier_free_guidance(gen):
    calls = []
    handle = gen.denoiser.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    try:
        gen.sample(prompts=["a cat"], **settings(guidance_scale=1.0), generator=make_generators([0]))
        gen.sample(prompts=["a cat"], **settings(guidance_scale=None), generator=make_generators([0]))
    finally:
        handle.remove()
    assert calls == [1, 1, 2, 2]  # no unconditional pass, then the pipeline's default 9.0


def test_impossible_settings(gen):
    with pytest.raises(UnsupportedSettingError, match="height=15 is not a multiple of 2"):
        gen.sample(prompts=["a"], **settings(height=15), generator=make_generators([0]))
    with pytest.raises(UnsupportedSettingError, match="guidance_scale=0.5"):
        gen.sample(prompts=["a"], **settings(guidance_scale=0.5), generator=make_generators([0]))
    with pytest.raises(UnsupportedSettingError, match="steps=1001; allowed 1..1000"):
        gen.sample(prompts=["a"], **settings(steps=1001), generator=make_generators([0]))


# --- cost stages -----------------------------------------------------------------------------------------------


def test_cost_stages_trace_the_pipeline_on_meta_and_count_like_the_real_unet(gen):
    from cmdbench.metrics.efficiency import count_flops

    stages = gen.cost_stages(num_frames=4, height=32, width=48, steps=7)
    assert [s.name for s in stages] == ["text_encoder", "denoiser", "vae_decoder"]
    assert all(next(s.module.parameters()).is_meta for s in stages)
    den = stages[1]
    assert (den.calls, den.guidance_passes, den.paper_convention) == (7, 2, True)
    inputs = den.make_inputs(2)
    assert inputs["sample"].shape == (2, 4, 4, 16, 24) and inputs["encoder_hidden_states"].shape == (2, 77, TEXT_DIM)
    real = {"sample": torch.randn(1, 4, 4, 16, 24), "timestep": torch.tensor(999),
            "encoder_hidden_states": torch.randn(1, 77, TEXT_DIM)}
    meta_count = count_flops(den.module, den.make_inputs(1))
    real_count = count_flops(gen.denoiser, real)
    assert (meta_count.flops, meta_count.attention_macs) == (real_count.flops, real_count.attention_macs)
    assert meta_count.attention_macs > 0 and meta_count.flops > 0
    dec = stages[2]
    assert dec.make_inputs(1)["z"].shape == (4, 4, 16, 24)  # T latent frames, decoded as images
    assert count_flops(dec.module, dec.make_inputs(1), forward=dec.forward).flops > 0


def test_meta_device_counts_without_reading_weights(t2v_dir, monkeypatch):
    import diffusers

    def no_weights(*args, **kwargs):
        raise AssertionError("weights were loaded for a meta build")

    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained", no_weights)
    meta = load_diffusers_generator(str(t2v_dir), GeneratorSpec(device="meta"))
    stages = meta.cost_stages(num_frames=16, height=512, width=1024, steps=50)  # any size: nothing is allocated
    assert stages[1].make_inputs(1)["sample"].shape == (1, 4, 16, 256, 512)
    with pytest.raises(UnsupportedSettingError, match="meta device"):
        meta.sample(prompts=["a"], **settings(), generator=make_generators([0]))


# --- loading, names, errors -------------------------------------------------------------------------------------


def test_clear_loading_errors(tmp_path, t2v_dir):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'missing'} does not exist"):
        GENERATORS.get(f"diffusers:{tmp_path / 'missing'}")(GeneratorSpec())
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no model_index.json"):
        GENERATORS.get(f"diffusers:{tmp_path / 'empty'}")(GeneratorSpec())
    with pytest.raises(ValueError, match="tiny .* does not apply"):
        GENERATORS.get(f"diffusers:{t2v_dir}")(GeneratorSpec(tiny=True))
    with pytest.raises(UnknownNameError, match="write diffusers:<path-or-id>"):
        GENERATORS.get("diffusers:")
    with pytest.raises(UnknownNameError, match="Did you mean 'diffusers:...'"):
        GENERATORS.get("difusers:x")


def test_an_image_pipeline_is_refused(tmp_path):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    unet = UNet2DModel(sample_size=8, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    with pytest.raises(NotAVideoPipelineError, match="DDPMPipeline is not a text-to-video pipeline .* lacks prompt"):
        DiffusersVideoGenerator(DDPMPipeline(unet=unet, scheduler=DDPMScheduler()), name="diffusers:ddpm")


def test_listed_as_a_scheme():
    names = [e.name for e in GENERATORS.entries()]
    assert "diffusers:<path-or-id>" in names and "diffusers:<path-or-id>" not in GENERATORS.names()


def test_cli_bench_end_to_end(t2v_dir, tmp_path, capsys):
    from cmdbench.cli import main

    rc = main(["bench", "--generator", f"diffusers:{t2v_dir}", "--seeds", "0-1", "--batch-size", "2",
               "--frames", "4", "--steps", "2", "--records", str(tmp_path), "--no-progress", "--save-videos"])
    out = capsys.readouterr().out
    assert rc == 0, out
    rows = pd.read_csv(next(tmp_path.glob("*.csv")))
    metrics = set(rows["metric"])
    assert {"sampling_time", "sampling_time_excl_vae_decoder", "stage_time/text_encoder", "stage_time/denoiser",
            "stage_time/vae_decoder", "time_per_step", "peak_memory"} <= metrics
    assert set(rows["generator"]) == {f"diffusers:{t2v_dir}"}
    assert (rows["num_frames"] == 4).all() and (rows["steps"] == 2).all() and (rows["guidance_scale"] == 9.0).all()
    assert len(list(tmp_path.glob("*.videos/seed-*.mp4"))) == 2
