"""CMD presets: registry entries, full-size architectures on the meta device (shapes, parameters, tokens),
cost stages, checkpoint loading with a config check, and the generator's input validation."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from cmdbench.cmd import presets
from cmdbench.cmd.pipeline import CMDPipeline
from cmdbench.interfaces import ConditioningError, GeneratorSpec, UnsupportedSettingError, VideoGenerator
from cmdbench.registry import GENERATORS
from cmdbench.seeding import make_generators

NAMES = ["cmd-ucf101-64", "cmd-webvid-512x1024", "cmd-sd15-512", "cmd-tiny"]


@pytest.fixture(scope="module")
def meta():
    """Full-size generators on the meta device (no memory)."""
    return {name: GENERATORS.get(name)(GeneratorSpec(device="meta")) for name in NAMES[:3]}


def test_every_preset_is_registered_with_paper_defaults():
    for name in NAMES:
        assert name in GENERATORS
    ucf, webvid = presets.PRESETS["cmd-ucf101-64"], presets.PRESETS["cmd-webvid-512x1024"]
    assert (ucf.conditioning, ucf.num_classes, ucf.guidance_scale) == ("class", 101, 4.0)
    assert (webvid.conditioning, webvid.guidance_scale) == ("text", 7.5)
    assert webvid.defaults.num_frames == 16 and (webvid.height, webvid.width) == (512, 1024)


def test_full_size_shapes_and_token_counts(meta):
    # cmd-paper.md §2.5 / §4.2: content frame, motion latent, and 512 motion-DiT tokens in every setting.
    expected = {
        "cmd-ucf101-64": ((3, 64, 64), (8, 16, 64), 256, 256),
        "cmd-webvid-512x1024": ((4, 64, 128), (8, 16, 96), 384, 128),
        "cmd-sd15-512": ((4, 64, 64), (8, 16, 64), 256, 256),
    }
    for name, (content, motion, n_motion, n_content) in expected.items():
        gen = meta[name]
        d = gen.defaults
        assert gen.pipeline.latent_shapes(d.num_frames, d.height, d.width) == (content, motion)
        mm = gen.pipeline.motion_model
        assert (mm.num_motion_tokens, mm.num_content_tokens) == (n_motion, n_content), name
        assert gen.pipeline.autoencoder.content_shape == content


def test_parameter_counts_per_component(meta):
    counts = {name: presets.parameter_counts(gen.pipeline) for name, gen in meta.items()}
    web = counts["cmd-webvid-512x1024"]
    assert web["content_model"] == 865_910_724  # SD 2.1-base UNet (baselines.md §5.2: 865.91M)
    assert counts["cmd-sd15-512"]["content_model"] == 859_520_964  # SD 1.5 UNet (859.52M)
    assert web["vae"] == 83_653_863  # SD VAE (83.65M)
    assert 674e6 < web["motion_model"] < 677e6  # DiT-XL/2 + text projection (cmd-paper.md §4.3: ~675M)
    assert 455e6 < counts["cmd-ucf101-64"]["motion_model"] < 459e6  # DiT-L/2 (~457M)
    # DiT-XL/2 content model at 3x64x64, 101 classes (DiT's own 675M at 4x32x32, 1000 classes, learned sigma).
    assert counts["cmd-ucf101-64"]["content_model"] == 673_771_404
    # The generative part (content + motion + autoencoder) of the T2V preset against Table 10's 1.6B.
    generative = web["content_model"] + web["motion_model"] + web["autoencoder"]
    assert abs(generative - presets.PAPER_TOTAL_PARAMS) / presets.PAPER_TOTAL_PARAMS < 0.03


def test_cost_stages_run_on_meta(meta):
    gen = meta["cmd-webvid-512x1024"]
    stages = gen.cost_stages(num_frames=16, height=512, width=1024, steps=50)
    assert [s.name for s in stages] == ["text_encoder", "content", "motion", "decoder", "vae_decoder"]
    assert [s.paper_convention for s in stages] == [False, True, True, True, False]
    assert [s.calls for s in stages] == [1, 50, 50, 1, 16]  # the SD VAE decodes one frame per call
    shapes = {}
    for s in stages:
        out = s.forward(s.module, **s.make_inputs(1)) if s.forward else s.module(**s.make_inputs(1))
        out = out[0] if isinstance(out, tuple) else getattr(out, "sample", getattr(out, "last_hidden_state", out))
        shapes[s.name] = tuple(out.shape)
    assert shapes == {"text_encoder": (1, 77, 1024), "content": (1, 4, 64, 128), "motion": (1, 8, 16, 96),
                      "decoder": (1, 4, 16, 64, 128), "vae_decoder": (1, 3, 512, 1024)}
    with pytest.raises(UnsupportedSettingError, match="num_frames=16"):
        gen.cost_stages(num_frames=24, height=512, width=1024, steps=50)
    ucf = meta["cmd-ucf101-64"].cost_stages(num_frames=16, height=64, width=64, steps=50)
    assert [s.name for s in ucf] == ["content", "motion", "decoder"]


def _whole_clip_vae_stage(stage, num_frames):
    """The SD VAE stage as it used to be described: one call on every frame of the clip (the sampler never
    makes that call)."""

    def inputs(b):
        p = next(stage.module.parameters())
        per_call = stage.make_inputs(1)["latents"]  # (1, 4, h, w)
        return {"latents": torch.zeros(b * num_frames, *per_call.shape[1:], device=p.device, dtype=p.dtype)}

    return replace(stage, make_inputs=inputs, calls=1)


def _stage(stages, name):
    return next(s for s in stages if getattr(s, "name", getattr(s, "stage", None)) == name)


def test_vae_decoder_stage_is_the_call_the_pipeline_makes(meta, monkeypatch):
    # CMDPipeline.decode on the meta pipeline, its SD VAE replaced by a recorder: every real call's input
    gen = meta["cmd-webvid-512x1024"]
    pipe = gen.pipeline
    setting = dict(num_frames=16, height=128, width=256)
    stage = _stage(gen.cost_stages(**setting, steps=50), "vae_decoder")
    seen = []

    def decode(latents, return_dict=False):  # CPU pixels back: the meta VAE has no values
        seen.append(tuple(latents.shape))
        return (torch.zeros(latents.shape[0], 3, 128, 256),)

    monkeypatch.setattr(pipe.vae, "decode", decode)
    content_shape, motion_shape = pipe.latent_shapes(**setting)
    video = pipe.decode(torch.zeros(2, *content_shape, device="meta"), torch.zeros(2, *motion_shape, device="meta"))
    assert video.shape == (2, 16, 3, 128, 256)
    assert seen == [tuple(stage.make_inputs(2)["latents"].shape)] * stage.calls == [(2, 4, 16, 32)] * 16


def test_vae_decoder_flops_are_unchanged_and_its_memory_is_one_call(meta):
    from cmdbench.metrics.efficiency import count_generator_cost, count_stage
    from cmdbench.metrics.memory_prediction import GIB, predict_sampling_memory

    gen = meta["cmd-webvid-512x1024"]
    setting = dict(num_frames=16, height=512, width=1024, steps=50)
    cost = count_generator_cost(gen, **setting)
    # `cmdbench efficiency --count-only --json` with the whole-clip description: the totals must not move
    assert cost.true_tflops == pytest.approx(319.534919573504, rel=1e-9)
    assert cost.paper_tmacs == pytest.approx(46.372258807807995, rel=1e-9)  # excludes the SD decoder
    stage = _stage(gen.cost_stages(**setting), "vae_decoder")
    vae = _stage(cost.stages, "vae_decoder")
    assert vae.calls == 16 and vae.macs_per_call * vae.calls == count_stage(_whole_clip_vae_stage(stage, 16)).macs

    class WholeClip:  # the same generator with the whole-clip description, for comparison
        name = gen.name

        def cost_stages(self, **kw):
            return [_whole_clip_vae_stage(s, kw["num_frames"]) if s.name == "vae_decoder" else s
                    for s in gen.cost_stages(**kw)]

    per_frame, whole = (predict_sampling_memory(g, **setting) for g in (gen, WholeClip()))
    a, b = (_stage(m.stages, "vae_decoder") for m in (per_frame, whole))
    assert b.activations / a.activations == pytest.approx(16, rel=0.05)  # activations follow frames per call
    assert whole.stage_peak("vae_decoder") - per_frame.stage_peak("vae_decoder") > 10 * GIB
    assert per_frame.stage_peak("vae_decoder") < 5 * GIB  # weights (~3.8 GiB) + one frame's decode


def test_meta_build_honours_the_dtype_without_diffusers_float32_warning(caplog):
    for name in ("cmd-ucf101-64", "cmd-webvid-512x1024"):
        for dtype in (torch.float16, torch.bfloat16):
            pipe = presets.build_pipeline(presets.PRESETS[name], device="meta", dtype=dtype)
            for part in ("autoencoder", "content_model", "motion_model", "text_encoder", "vae"):
                module = getattr(pipe, part)
                if module is None:
                    continue
                tensors = [t for t in [*module.parameters(), *module.buffers()] if t.is_floating_point()]
                assert {t.dtype for t in tensors} == {dtype}, (name, part)
                assert {t.device.type for t in tensors} == {"meta"}, (name, part)
    assert "kept in float32" not in caplog.text  # diffusers logs it on ModelMixin.to(dtype)


class _CallCounter:
    """Counts a module's forward calls (each guided step is one call of batch 2B)."""

    def __init__(self, module):
        self.module, self.calls = module, 0

    def __enter__(self):
        original = self.module.forward

        def forward(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        self.module.forward = forward
        return self

    def __exit__(self, *exc):
        del self.module.forward


def test_sampling_runs_the_presets_motion_steps_and_cost_keeps_table9_reading(meta):
    """App. B.4: 50 content and 100 motion steps. ``sample(steps=preset.steps)`` runs ``preset.motion_steps``
    motion steps, another ``steps`` runs both stages for it, ``generator.motion_steps`` wins; the cost harness
    counts ``steps`` motion calls (Table 9) unless motion steps were set."""
    for name in ("cmd-ucf101-64", "cmd-webvid-512x1024", "cmd-sd15-512"):
        preset = presets.PRESETS[name]
        assert (preset.steps, preset.motion_steps) == (50, 100)
        assert meta[name].motion_steps_for(50) == 100 and meta[name].motion_steps_for(100) == 100
        assert meta[name].motion_steps_for(25) == 25
    ucf = meta["cmd-ucf101-64"]
    assert [s.calls for s in ucf.cost_stages(num_frames=16, height=64, width=64, steps=50)] == [50, 50, 1]

    preset = replace(presets.miniature(presets.UCF101_64), steps=3, motion_steps=5)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        gen = presets.CMDGenerator(preset, presets.build_pipeline(preset), GeneratorSpec(tiny=True))
    kw = {"labels": [4], "num_frames": 16, "height": 16, "width": 16, "generator": make_generators([0])}
    for steps, motion_override, expected in ((3, None, (3, 5)), (2, None, (2, 2)), (3, 4, (3, 4))):
        gen.motion_steps = motion_override
        with _CallCounter(gen.pipeline.content_model) as content, _CallCounter(gen.pipeline.motion_model) as motion:
            gen.sample(steps=steps, **{**kw, "generator": make_generators([0])})
        assert (content.calls, motion.calls) == expected, (steps, motion_override)
        counted = {s.name: s.calls for s in gen.cost_stages(num_frames=16, height=16, width=16, steps=steps)}
        assert (counted["content"], counted["motion"]) == (steps, motion_override or steps)


def test_tiny_generators_follow_the_protocol():
    gen = GENERATORS.get("cmd-tiny")(GeneratorSpec(tiny=True))
    assert isinstance(gen, VideoGenerator)
    d = gen.defaults
    video = gen.sample(prompts=["Fire"], num_frames=d.num_frames, height=d.height, width=d.width, steps=2,
                       generator=make_generators([0]))
    assert video.dtype == torch.uint8 and video.shape == (1, d.num_frames, 3, d.height, d.width)
    with pytest.raises(UnsupportedSettingError, match=r"num_frames=8 \(fixed clip length\)"):
        gen.sample(prompts=["Fire"], num_frames=16, height=16, width=16, steps=2, generator=make_generators([0]))
    with pytest.raises(ConditioningError, match="prompts"):
        gen.sample(num_frames=8, height=16, width=16, steps=2, generator=make_generators([0]))
    ucf = GENERATORS.get("cmd-ucf101-64")(GeneratorSpec(tiny=True))
    with pytest.raises(ConditioningError, match="0..100"):
        ucf.sample(labels=[101], num_frames=16, height=16, width=16, steps=2, generator=make_generators([0]))


def test_checkpoint_round_trip_and_mismatch(tmp_path):
    gen = GENERATORS.get("cmd-tiny")(GeneratorSpec(tiny=True))
    gen.pipeline.save_pretrained(tmp_path / "tiny")
    loaded = GENERATORS.get("cmd-tiny")(GeneratorSpec(checkpoint=str(tmp_path / "tiny")))
    assert isinstance(loaded.pipeline, CMDPipeline)
    kw = {"prompts": ["Fire"], "num_frames": 8, "height": 16, "width": 16, "steps": 2}
    assert torch.equal(gen.sample(**kw, generator=make_generators([4])), loaded.sample(**kw, generator=make_generators([4])))
    with pytest.raises(presets.CheckpointMismatchError, match=r"cmd-ucf101-64.*content_model is UNet2DConditionModel"):
        GENERATORS.get("cmd-ucf101-64")(GeneratorSpec(checkpoint=str(tmp_path / "tiny")))
    with pytest.raises(presets.CheckpointMismatchError, match="autoencoder.hidden_size=32"):
        GENERATORS.get("cmd-webvid-512x1024")(GeneratorSpec(checkpoint=str(tmp_path / "tiny")))
    with pytest.raises(FileNotFoundError, match="could not load CMD checkpoint"):
        GENERATORS.get("cmd-tiny")(GeneratorSpec(checkpoint=str(tmp_path / "nowhere")))


# -- reduced frame sizes and training cost ---------------------------------------------------------------------


def test_size_multiples_and_reduced_size_cost_stages_on_meta(meta):
    assert {n: g.pipeline.size_multiple for n, g in meta.items()} == {
        "cmd-ucf101-64": 4, "cmd-webvid-512x1024": 64, "cmd-sd15-512": 64}
    gen = meta["cmd-webvid-512x1024"]
    stages = {s.name: s for s in gen.cost_stages(num_frames=16, height=64, width=128, steps=1)}
    motion = stages["motion"].module(**stages["motion"].make_inputs(1))
    decoded = stages["decoder"].forward(stages["decoder"].module, **stages["decoder"].make_inputs(1))
    assert motion.shape == (1, 8, 16, 4 + 8)  # latent 8x16 -> AE grid 4x8 -> W_m = 12
    assert decoded.shape == (1, 4, 16, 8, 16)
    for bad, match in (((16, 96, 128), "multiples of 64 \\(native 512x1024\\)"),
                       ((8, 64, 64), "num_frames=16 \\(fixed clip length\\)")):
        with pytest.raises(UnsupportedSettingError, match=match):
            gen.check_setting(*bad)
    # The pixel content DiT takes non-square frames too (positions per grid), like every other CMD network.
    ucf = meta["cmd-ucf101-64"]
    ucf.check_setting(16, 32, 64)
    content = {s.name: s for s in ucf.cost_stages(num_frames=16, height=32, width=64, steps=1)}["content"]
    assert content.module(**content.make_inputs(1)).sample.shape == (1, 3, 32, 64)


def test_tiny_preset_samples_at_a_non_native_size():
    gen = GENERATORS.get("cmd-tiny")(GeneratorSpec(tiny=True))
    assert (gen.defaults.height, gen.defaults.width) == (16, 16)
    kwargs = dict(num_frames=8, height=8, width=24, steps=2)
    pair = gen.sample(prompts=["Fire", "Sky"], generator=make_generators([0, 1]), **kwargs)
    again = gen.sample(prompts=["Sky"], generator=make_generators([1]), **kwargs)
    assert pair.dtype == torch.uint8 and pair.shape == (2, 8, 3, 8, 24)
    assert (pair[1:].int() - again.int()).abs().max() <= 1  # batch-size invariant, deterministic per seed
    assert pair.float().std() > 0
    with pytest.raises(UnsupportedSettingError, match="multiples of 8 \\(native 16x16\\)"):
        gen.sample(prompts=["Fire"], generator=make_generators([0]), num_frames=8, height=12, width=16, steps=2)


def test_training_cost_stages_on_meta(meta):
    gen = meta["cmd-webvid-512x1024"]
    stages = gen.training_cost_stages(num_frames=16, height=512, width=512)
    assert [s.name for s in stages] == ["autoencoder", "content", "motion"]
    assert all(s.calls == 1 and s.guidance_passes == 1 and s.paper_convention for s in stages)
    outs = {s.name: (s.forward(s.module, **s.make_inputs(1)) if s.forward else s.module(**s.make_inputs(1)))
            for s in stages}
    assert outs["autoencoder"].shape == (1, 4, 16, 64, 64)  # encoder then decoder on the latent clip
    assert outs["content"].sample.shape == (1, 4, 64, 64)
    assert outs["motion"].shape == (1, 8, 16, 64)
    motion_inputs = stages[2].make_inputs(1)
    mm = stages[2].module
    tokens = (16 // 2) * (64 // 2) + (motion_inputs["content"].shape[2] // mm.config.content_patch_size) ** 2
    assert tokens == 320  # 256 motion + 64 content tokens: the paper's Table 8 motion cost
