"""latte-1: tiny sampling, published size on meta (T5 built lazily), MACs, frames, checkpoint round trip."""

from __future__ import annotations

import pytest
import torch

from baselines.latte.generator import NAME, build
from cmdbench.interfaces import GeneratorSpec, UnsupportedSettingError
from cmdbench.metrics.efficiency import count_flops
from cmdbench.registry import GENERATORS


@pytest.fixture(scope="module")
def tiny():
    return build(GeneratorSpec(tiny=True))


@pytest.fixture(scope="module")
def full_meta():
    return build(GeneratorSpec(device="meta"))


def test_registered():
    assert GENERATORS.get(NAME) is build


def test_tiny_samples_uint8_video(tiny, checks):
    video = checks.sample_at_defaults(tiny, [0, 1])
    d = tiny.defaults
    assert video.dtype == torch.uint8 and video.shape == (2, d.num_frames, 3, d.height, d.width)
    assert video.float().std() > 1.0


def test_padding_is_masked_out_of_the_caption(tiny):
    """With the mask, a prompt's noise prediction does not depend on the padding tokens' states."""
    with torch.no_grad():
        states, mask = tiny.encode_text(["a cat"])
    noisy = states.clone()
    noisy[mask == 0] += 5.0
    latents = torch.randn(1, 4, tiny.defaults.num_frames, 4, 4)
    with torch.no_grad():
        a = tiny.predict_noise(latents, torch.tensor(500), states, mask)
        b = tiny.predict_noise(latents, torch.tensor(500), noisy, mask)
        c = tiny.predict_noise(latents, torch.tensor(500), noisy, torch.ones_like(mask))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_text_encoder_is_built_only_when_needed(full_meta, checks):
    assert full_meta._text_encoder is None  # building the generator did not build T5-XXL
    assert checks.millions(full_meta.denoiser) == pytest.approx(1057.25, abs=0.01)  # baselines.md §6.5
    assert checks.millions(full_meta.text_encoder) == pytest.approx(4762.31, abs=0.01)  # T5 v1.1 XXL encoder


@pytest.mark.slow
def test_meta_forward_shape_and_macs_at_512x1024x16(full_meta, checks):
    denoiser = {s.name: s for s in full_meta.cost_stages(num_frames=16, height=512, width=1024, steps=50)}[
        "denoiser"]
    inputs = denoiser.make_inputs(1)
    assert full_meta.denoiser(**inputs).sample.shape == (1, 8, 16, 64, 128)
    fc = count_flops(full_meta.denoiser, inputs)
    macs, scores = fc.macs_excl_attention, fc.attention_macs
    # baselines.md §4.3 [V]: 31.80 TMAC excluding scores, 4.62 TMAC of scores
    assert macs / 1e12 == pytest.approx(31.80, rel=0.01)
    assert scores / 1e12 == pytest.approx(4.62, rel=0.01)


def test_frames_other_than_the_position_table_are_refused(tiny, checks):
    with pytest.raises(UnsupportedSettingError, match=f"allowed {tiny.defaults.num_frames}"):
        checks.sample_at_defaults(tiny, [0], num_frames=tiny.defaults.num_frames + 1)


@pytest.mark.slow
def test_checkpoint_round_trip(tiny, tmp_path, checks):
    from baselines.latte.generator import TEXT_LENGTH

    tiny.save_pretrained(tmp_path / "ckpt")
    # A T5 tokenizer cannot be built offline; a CLIP BPE tokenizer of the same ids stands in for it.
    checks.clip_tokenizer(tmp_path / "ckpt" / "tokenizer", pad_token="!", max_length=TEXT_LENGTH)
    loaded = build(GeneratorSpec(checkpoint=str(tmp_path / "ckpt"), tiny=True))
    assert torch.equal(checks.sample_at_defaults(tiny, [3]), checks.sample_at_defaults(loaded, [3]))


# --- parity with diffusers.LattePipeline ------------------------------------------------------------------

WORDS = ["a", "cat", "on", "the", "sofa", "red", "ball", "bouncing", "slowly", "in", "garden", "sunset", "."]


def word_tokenizer():
    """A T5-style tokenizer built locally: lower-case word vocabulary (upper case -> <unk>), ``</s>`` appended,
    ``<pad>`` = 0, as T5's tokenizer pads and ends."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=120)


@pytest.fixture(scope="module")
def latte_checkpoint(tmp_path_factory):
    """A tiny random Latte saved by ``LattePipeline.save_pretrained`` (the published repository layout)."""
    from diffusers import AutoencoderKL, DDIMScheduler, LattePipeline, LatteTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    from baselines._common.text_video import TINY_VAE_CONFIG
    from baselines.latte.generator import SCHEDULER_CONFIG, TINY_T5_CONFIG, TINY_TRANSFORMER_CONFIG

    tokenizer = word_tokenizer()
    torch.manual_seed(0)
    pipe = LattePipeline(
        tokenizer=tokenizer,
        text_encoder=T5EncoderModel(T5Config(**{**TINY_T5_CONFIG, "vocab_size": len(tokenizer)})).eval(),
        vae=AutoencoderKL(**TINY_VAE_CONFIG).eval(),
        transformer=LatteTransformer3DModel(**TINY_TRANSFORMER_CONFIG).eval(),
        scheduler=DDIMScheduler(**SCHEDULER_CONFIG),
    )
    path = tmp_path_factory.mktemp("latte") / "ckpt"
    pipe.save_pretrained(path)
    return path, pipe


def record_inputs(module):
    """Every ``hidden_states`` the module is called with (a list filled by a forward pre-hook)."""
    seen: list[torch.Tensor] = []
    handle = module.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append((kwargs.get("hidden_states", args[0] if args else None)).clone()),
        with_kwargs=True)
    return seen, handle


def test_guided_sampling_matches_latte_pipeline_step_by_step(latte_checkpoint, monkeypatch):
    """Our sampler on the saved checkpoint == ``LattePipeline`` (same scheduler, same initial noise), per
    denoising step and in the final latents, for each prompt of a batch run alone through the pipeline:
    prompts lower-cased, the prompt's own tokens, and the empty prompt cropped to the prompt's length."""
    from cmdbench.seeding import make_generators, randn_per_sample

    path, pipe = latte_checkpoint
    gen = build(GeneratorSpec(checkpoint=str(path), tiny=True))
    prompts = ["A Red ball bouncing slowly in the garden .", "the cat on the sofa"]  # 10 and 6 tokens (with </s>)
    seeds, steps, guidance = [5, 6], 3, 4.5
    d = gen.defaults
    shape = (4, d.num_frames, d.height // 8, d.width // 8)

    ours, handle = record_inputs(gen.denoiser)
    decoded: list[torch.Tensor] = []
    decode = gen.vae.decode
    monkeypatch.setattr(gen.vae, "decode", lambda z: decoded.append(z.clone()) or decode(z))
    gen.sample(prompts=prompts, num_frames=d.num_frames, height=d.height, width=d.width, steps=steps,
               guidance_scale=guidance, generator=make_generators(seeds))
    handle.remove()
    scale = gen.vae.config.scaling_factor

    for i, (prompt, seed) in enumerate(zip(prompts, seeds, strict=True)):
        theirs, handle = record_inputs(pipe.transformer)
        latents = pipe(prompt=prompt, negative_prompt="", num_inference_steps=steps, guidance_scale=guidance,
                       video_length=d.num_frames, height=d.height, width=d.width, clean_caption=False,
                       latents=randn_per_sample(make_generators([seed]), shape), output_type="latent").frames
        handle.remove()
        assert len(theirs) == len(ours) == steps
        for step, (a, b) in enumerate(zip(ours, theirs, strict=True)):  # (2B, ...) [null, cond] halves
            torch.testing.assert_close(a[i], b[0], rtol=1e-5, atol=1e-5, msg=f"prompt {i}, step {step}")
        final = decoded[i].permute(1, 0, 2, 3)[None] * scale  # (1, 4, T, h, w), as the pipeline returns it
        torch.testing.assert_close(final, latents, rtol=1e-5, atol=1e-5)


def test_t5_loads_in_float16_keeping_its_float32_modules(latte_checkpoint):
    """``from_pretrained`` in float16 keeps T5's ``_keep_in_fp32_modules`` (``wo``) in float32 with the saved
    values bit for bit (a float32 load cast whole to float16 would round them); random weights split alike."""
    path, pipe = latte_checkpoint
    loaded = build(GeneratorSpec(checkpoint=str(path), tiny=True, dtype="float16")).text_encoder
    saved = dict(pipe.text_encoder.named_parameters())
    wo = [n for n in saved if n.endswith(".wo.weight")]
    assert wo
    for name, param in loaded.named_parameters():
        if name in wo:
            assert param.dtype == torch.float32 and torch.equal(param, saved[name])
        else:
            assert param.dtype == torch.float16, name
    random_t5 = build(GeneratorSpec(tiny=True, dtype="float16")).text_encoder
    assert {n: p.dtype for n, p in random_t5.named_parameters() if n.endswith(".wo.weight")} == dict.fromkeys(
        wo, torch.float32)
