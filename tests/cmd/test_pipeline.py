"""CMDPipeline (Algorithm 1) on random miniatures: determinism, batch invariance, save/load round trip,
guidance forms, the structure of the two stages, latent-mode decoding and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmdbench.cmd import presets
from cmdbench.cmd.dit_blocks import AdaLNFinalLayer, AdaLNZeroBlock
from cmdbench.cmd.pipeline import (
    CMDPipeline,
    diffusers_scale_to_paper_weight,
    guide_diffusers,
    guide_paper,
    paper_weight_to_diffusers_scale,
)
from cmdbench.interfaces import ConditioningError, UnsupportedSettingError
from cmdbench.seeding import make_generators

STEPS = {"content_steps": 2, "motion_steps": 3}


def _build(preset) -> CMDPipeline:
    """A random miniature whose DiT blocks and final layers are redrawn N(0, 0.05): at DiT's initialisation
    (adaLN-Zero) a DiT outputs exactly zero, and guidance or conditions would have nothing to act on."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        pipe = presets.build_pipeline(presets.miniature(preset))
        with torch.no_grad():
            for model in (pipe.content_model, pipe.motion_model):
                for module in model.modules():
                    if isinstance(module, (AdaLNZeroBlock, AdaLNFinalLayer)):
                        for p in module.parameters():
                            p.normal_(std=0.05)
        return pipe


@pytest.fixture(scope="module")
def text_pipe() -> CMDPipeline:
    return _build(presets.TINY)


@pytest.fixture(scope="module")
def class_pipe() -> CMDPipeline:
    return _build(presets.UCF101_64)


@pytest.fixture(scope="module")
def latent_pipe() -> CMDPipeline:
    return _build(presets.WEBVID_512X1024)


def test_same_seed_same_video_and_different_seeds_differ(text_pipe):
    a = text_pipe(["Fire", "Fire"], generator=make_generators([3, 4]), **STEPS)
    b = text_pipe(["Fire", "Fire"], generator=make_generators([3, 4]), **STEPS)
    assert torch.equal(a.frames, b.frames)
    assert torch.equal(a.motion_latents, b.motion_latents)
    assert not torch.equal(a.content_frames[0], a.content_frames[1])
    assert a.frames.dtype == torch.uint8 and a.frames.shape == (2, 8, 3, 16, 16)


def test_sample_does_not_depend_on_its_batch(text_pipe):
    batch = text_pipe(["Fire", "a cat on a sofa", "Fireworks"], generator=make_generators([0, 1, 2]), **STEPS)
    alone = text_pipe(["a cat on a sofa"], generator=make_generators([1]), **STEPS)
    torch.testing.assert_close(batch.content_frames[1:2], alone.content_frames, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(batch.motion_latents[1:2], alone.motion_latents, atol=1e-4, rtol=1e-4)
    assert (batch.frames[1].int() - alone.frames[0].int()).abs().max() <= 2


def test_save_pretrained_then_from_pretrained_gives_identical_outputs(text_pipe, class_pipe, latent_pipe, tmp_path):
    for name, pipe, cond in (
        ("text", text_pipe, {"prompt": ["Fire"]}),
        ("class", class_pipe, {"class_labels": [7]}),
        ("latent", latent_pipe, {"prompt": ["Fire"]}),
    ):
        pipe.save_pretrained(tmp_path / name)
        loaded = CMDPipeline.from_pretrained(tmp_path / name, local_files_only=True)
        loaded.set_progress_bar_config(disable=True)
        assert type(loaded.motion_model) is type(pipe.motion_model)
        public = lambda cfg: {k: v for k, v in cfg.items() if not k.startswith("_")}  # noqa: E731
        assert public(loaded.motion_model.config) == public(pipe.motion_model.config)
        before = pipe(**cond, generator=make_generators([5]), output_type="pt", **STEPS)
        after = loaded(**cond, generator=make_generators([5]), output_type="pt", **STEPS)
        assert torch.equal(before.frames, after.frames), name


def test_guidance_conversion_formulas():
    g = torch.Generator().manual_seed(0)
    eps_c, eps_u = torch.randn(2, 3, 5, generator=g), torch.randn(2, 3, 5, generator=g)
    w = 4.0
    s = paper_weight_to_diffusers_scale(w)
    assert s == 5.0 and diffusers_scale_to_paper_weight(s) == w
    # Independent expansion of Algorithm 1: (1 + w) eps_c - w eps_u.
    expected = 5.0 * eps_c - 4.0 * eps_u
    torch.testing.assert_close(guide_paper(eps_c, eps_u, w), expected)
    torch.testing.assert_close(guide_diffusers(eps_c, eps_u, s), expected)
    # Using w as s (the ambiguity the conversion resolves) gives something else.
    assert not torch.allclose(guide_diffusers(eps_c, eps_u, w), expected)


@pytest.mark.parametrize("which", ["text", "class"])
def test_paper_and_diffusers_forms_agree_after_conversion(which, text_pipe, class_pipe):
    pipe, cond = (text_pipe, {"prompt": ["Fire"]}) if which == "text" else (class_pipe, {"class_labels": [42]})
    w = 4.0
    paper = pipe(**cond, guidance_scale=w, guidance_form="paper", generator=make_generators([9]), **STEPS)
    diff = pipe(**cond, guidance_scale=w + 1, guidance_form="diffusers", generator=make_generators([9]), **STEPS)
    torch.testing.assert_close(paper.content_frames, diff.content_frames, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(paper.motion_latents, diff.motion_latents, atol=1e-5, rtol=1e-5)
    # The guidance actually acts: reading w as s (no conversion) changes the result.
    unconverted = pipe(**cond, guidance_scale=w, guidance_form="diffusers", generator=make_generators([9]), **STEPS)
    assert (unconverted.content_frames - paper.content_frames).abs().max() > 1e-3


class _Spy:
    """Records the inputs of a module's forward."""

    def __init__(self, module):
        self.calls: list[tuple[tuple, dict]] = []
        self.module = module
        self.original = module.forward

    def __enter__(self):
        def forward(*args, **kwargs):
            self.calls.append((args, kwargs))
            return self.original(*args, **kwargs)

        self.module.forward = forward
        return self

    def __exit__(self, *exc):
        self.module.forward = self.original


def test_motion_stage_sees_the_finished_content_frame_in_both_branches(class_pipe):
    labels = [3, 99]
    with _Spy(class_pipe.motion_model) as motion, _Spy(class_pipe.content_model) as content:
        out = class_pipe(class_labels=labels, guidance_scale=2.0, generator=make_generators([0, 1]), **STEPS)
    assert len(content.calls) == STEPS["content_steps"] and len(motion.calls) == STEPS["motion_steps"]
    null = class_pipe.num_classes
    for args, kwargs in motion.calls:
        z, _, frame = args[:3]
        assert z.shape[0] == 4  # [uncond; cond] for a batch of 2
        torch.testing.assert_close(frame, torch.cat([out.content_frames, out.content_frames]))
        assert kwargs["class_labels"].tolist() == [null, null, *labels]
    for _, kwargs in content.calls:
        assert kwargs["class_labels"].tolist() == [null, null, *labels]


def test_no_guidance_runs_the_conditional_branch_only(text_pipe):
    with _Spy(text_pipe.motion_model) as motion:
        text_pipe(["Fire"], guidance_scale=0.0, generator=make_generators([0]), **STEPS)
    assert all(args[0].shape[0] == 1 for args, _ in motion.calls)


def test_unconditional_text_branch_is_the_empty_prompt(text_pipe):
    with _Spy(text_pipe.content_model) as content:
        text_pipe(["Fire"], generator=make_generators([0]), **STEPS)
    states = content.calls[0][1]["encoder_hidden_states"]
    torch.testing.assert_close(states[0:1], text_pipe.encode_prompt([""], torch.device("cpu")))
    torch.testing.assert_close(states[1:2], text_pipe.encode_prompt(["Fire"], torch.device("cpu")))


def test_prompt_embeds_path_equals_prompt_path(text_pipe):
    embeds, mask = text_pipe.encode_prompt_with_mask(["Fire"], torch.device("cpu"))
    a = text_pipe(["Fire"], generator=make_generators([2]), output_type="latent", **STEPS)
    b = text_pipe(prompt_embeds=embeds, prompt_attention_mask=mask, generator=make_generators([2]),
                  output_type="latent", **STEPS)
    assert a.frames is None
    torch.testing.assert_close(a.motion_latents, b.motion_latents)
    # Without the mask every position counts (documented default): the motion condition differs.
    c = text_pipe(prompt_embeds=embeds, generator=make_generators([2]), output_type="latent", **STEPS)
    torch.testing.assert_close(c.content_frames, a.content_frames)  # SD's UNet reads all positions anyway
    assert (c.motion_latents - a.motion_latents).abs().max() > 1e-4


def _hf_clip_tokenizer(tmp_path):
    """A transformers ``CLIPTokenizer`` holding clip-anytorch's vocabulary and merges (offline)."""
    import json

    from transformers import CLIPTokenizer

    from cmdbench.cmd.pipeline import _clip_bpe

    bpe = _clip_bpe()
    (tmp_path / "vocab.json").write_text(json.dumps(bpe.encoder))
    merges = sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.get)
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), model_max_length=77)


def test_encode_prompt_with_mask_marks_start_prompt_and_end_tokens(text_pipe, tmp_path):
    cpu = torch.device("cpu")
    prompts = ["", "Fire", "a cat on a sofa"]
    feats, mask = text_pipe.encode_prompt_with_mask(prompts, cpu)
    assert feats.shape == (3, 77, 32) and mask.shape == (3, 77) and mask.dtype == torch.long
    torch.testing.assert_close(feats, text_pipe.encode_prompt(prompts, cpu), atol=0, rtol=0)
    # <start> + words + <end>: 2, 3 and 7 real tokens, then padding.
    assert mask.sum(dim=1).tolist() == [2, 3, 7]
    for row, n in zip(mask, [2, 3, 7], strict=True):
        assert row[:n].eq(1).all() and row[n:].eq(0).all()
    # transformers' CLIPTokenizer (the SD checkpoint path) gives the same ids and mask.
    hf = CMDPipeline(**{**text_pipe.components, "tokenizer": _hf_clip_tokenizer(tmp_path)})
    hf_feats, hf_mask = hf.encode_prompt_with_mask(prompts, cpu)
    torch.testing.assert_close(hf_mask, mask, atol=0, rtol=0)
    real = mask.bool()[..., None].expand_as(feats)
    torch.testing.assert_close(hf_feats[real], feats[real])


def test_sampling_gives_the_motion_model_the_masked_mean_in_both_branches(text_pipe):
    """The motion DiT's text condition is the float64 masked mean of the prompt's and the empty prompt's
    features; the content UNet gets the features only (SD convention)."""
    pooled = []
    hook = text_pipe.motion_model.text_proj.register_forward_hook(lambda _m, args, _o: pooled.append(args[0]))
    try:
        with _Spy(text_pipe.motion_model) as motion, _Spy(text_pipe.content_model) as content:
            text_pipe(["a cat on a sofa"], generator=make_generators([0]), **STEPS)
    finally:
        hook.remove()
    feats, mask = text_pipe.encode_prompt_with_mask(["", "a cat on a sofa"], torch.device("cpu"))
    for _, kwargs in motion.calls:
        torch.testing.assert_close(kwargs["encoder_attention_mask"], mask, atol=0, rtol=0)  # [uncond; cond]
    assert all("encoder_attention_mask" not in kwargs for _, kwargs in content.calls)
    w = mask.double()[..., None]
    expected = ((feats.double() * w).sum(1) / w.sum(1)).float()  # (2, E)
    assert len(pooled) == STEPS["motion_steps"]
    for got in pooled:
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    assert (expected - feats.mean(1)).abs().max() > 1e-3  # the plain mean over 77 positions is another thing


def test_text_mask_errors(text_pipe, class_pipe):
    gen = make_generators([0])
    embeds, mask = text_pipe.encode_prompt_with_mask(["Fire"], torch.device("cpu"))
    with pytest.raises(ConditioningError, match=r"prompt_attention_mask has shape \(1, 5\)"):
        text_pipe(prompt_embeds=embeds, prompt_attention_mask=mask[:, :5], generator=gen, **STEPS)
    with pytest.raises(ConditioningError, match="no real token"):
        text_pipe(prompt_embeds=embeds, prompt_attention_mask=torch.zeros_like(mask), generator=gen, **STEPS)
    with pytest.raises(ConditioningError, match="goes with prompt_embeds"):
        text_pipe(["Fire"], prompt_attention_mask=mask, generator=gen, **STEPS)
    with pytest.raises(ConditioningError, match="class-conditional"):
        class_pipe(class_labels=[1], prompt_attention_mask=mask, generator=gen, **STEPS)


def test_latent_mode_decodes_each_frame_with_the_vae_scaling_factor(latent_pipe):
    out = latent_pipe(["Fire"], generator=make_generators([0]), output_type="latent", **STEPS)
    ae_video = latent_pipe.autoencoder.decode(out.content_frames, out.motion_latents)  # (1, 4, L, h, w)
    with _Spy(latent_pipe.vae) as vae:
        vae.module.decode, original = (lambda lat, **kw: (vae.calls.append(((lat,), kw)), original(lat, **kw))[1],
                                       latent_pipe.vae.decode)
        try:
            frames = latent_pipe.decode(out.content_frames, out.motion_latents)
        finally:
            latent_pipe.vae.decode = original
    scale = latent_pipe.vae.config.scaling_factor
    assert scale == pytest.approx(0.18215)
    assert len(vae.calls) == ae_video.shape[2]
    for i, (args, _) in enumerate(vae.calls):
        torch.testing.assert_close(args[0], ae_video[:, :, i] / scale)
    assert frames.shape == (1, 16, 3, 32, 64) and frames.min() >= -1 and frames.max() <= 1


def test_output_types(text_pipe):
    gens = lambda: make_generators([1])  # noqa: E731
    u8 = text_pipe(["Fire"], generator=gens(), output_type="uint8", **STEPS).frames
    pt = text_pipe(["Fire"], generator=gens(), output_type="pt", **STEPS).frames
    npy = text_pipe(["Fire"], generator=gens(), output_type="np", **STEPS).frames
    assert pt.dtype == torch.float32 and pt.min() >= 0 and pt.max() <= 1
    assert isinstance(npy, np.ndarray) and npy.shape == (1, 8, 16, 16, 3)
    np.testing.assert_allclose(npy, pt.permute(0, 1, 3, 4, 2).numpy(), atol=1e-6)
    assert (u8.float() - pt * 255).abs().max() <= 0.5 + 1e-3


def test_bad_inputs(text_pipe, class_pipe):
    gen = make_generators([0])
    with pytest.raises(UnsupportedSettingError, match="num_frames=8"):
        text_pipe(["Fire"], num_frames=16, generator=gen, **STEPS)
    with pytest.raises(UnsupportedSettingError, match=r"12x16 .* multiples of 8 \(native 16x16\)"):
        text_pipe(["Fire"], height=12, generator=gen, **STEPS)
    with pytest.raises(ConditioningError, match="prompt"):
        text_pipe(generator=gen, **STEPS)
    with pytest.raises(ConditioningError, match="one per sample"):
        text_pipe(["a", "b"], generator=gen, **STEPS)
    with pytest.raises(ConditioningError, match="class_labels"):
        class_pipe(generator=gen, **STEPS)
    with pytest.raises(ConditioningError, match="0..100"):
        class_pipe(class_labels=[101], generator=gen, **STEPS)
    with pytest.raises(ValueError, match="guidance_form"):
        text_pipe(["Fire"], guidance_form="cfg", generator=gen, **STEPS)
    with pytest.raises(UnsupportedSettingError, match="negative"):
        text_pipe(["Fire"], guidance_scale=0.5, guidance_form="diffusers", generator=gen, **STEPS)
    with pytest.raises(UnsupportedSettingError, match="content_steps"):
        text_pipe(["Fire"], generator=gen, content_steps=0)
    with pytest.raises(ValueError, match="generator"):
        text_pipe(["Fire"], **STEPS)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_half_precision_matches_cpu_noise(text_pipe):
    """On the GPU in fp16 the per-sample noise is the CPU draw, so the content frame stays close to CPU fp32."""
    cpu = text_pipe(["Fire"], generator=make_generators([0]), output_type="latent", **STEPS)
    gpu_pipe = _build(presets.TINY).to("cuda", torch.float16)
    gpu = gpu_pipe(["Fire"], generator=make_generators([0]), output_type="latent", **STEPS)
    torch.testing.assert_close(gpu.content_frames, cpu.content_frames, atol=5e-2, rtol=5e-2)
