"""modelscope-t2v: tiny sampling, published sizes on meta, paper-convention MACs, checkpoint round trip."""

from __future__ import annotations

import pytest
import torch

from baselines._common.loading import MissingWeightsError
from baselines.modelscope.generator import NAME, build
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
    assert video.float().std() > 1.0  # not a constant image


def test_published_parameter_counts(full_meta, checks):
    # baselines.md §2.1 [V]: UNet 1411.23M, text encoder 340.39M, VAE 83.65M
    assert checks.millions(full_meta.denoiser) == pytest.approx(1411.23, abs=0.01)
    assert checks.millions(full_meta.text_encoder) == pytest.approx(340.39, abs=0.01)
    assert checks.millions(full_meta.vae) == pytest.approx(83.65, abs=0.01)


def test_vae_decoder_stage_is_the_decode_call_the_sampler_makes(tiny, full_meta, checks, monkeypatch):
    from dataclasses import replace

    from baselines._common.text_video import decode_chunk
    from cmdbench.metrics.efficiency import count_generator_cost, count_stage

    assert [decode_chunk(t) for t in (1, 4, 8, 11, 12, 16, 24)] == [1, 4, 8, 1, 6, 8, 8]
    # the chunking changes no value: the SD VAE decodes every frame on its own
    z = torch.randn(12, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = tiny.vae.decode(z).sample
        chunked = torch.cat([tiny.vae.decode(c).sample for c in z.split(decode_chunk(12))])
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)
    # every real call of the sampler has the shape the cost stage describes, and there are `calls` per video
    seen, original = [], tiny.vae.decode

    def decode(latents, *args, **kwargs):
        seen.append(tuple(latents.shape))
        return original(latents, *args, **kwargs)

    monkeypatch.setattr(tiny.vae, "decode", decode)
    assert checks.sample_at_defaults(tiny, [0, 1], num_frames=12).shape[1] == 12
    stage = next(s for s in tiny.cost_stages(num_frames=12, height=32, width=32, steps=2) if s.name == "vae_decoder")
    assert seen == [tuple(stage.make_inputs(1)["z"].shape)] * (2 * stage.calls) == [(6, 4, 4, 4)] * 4
    # full size: one call of 8 frames, twice per video; the FLOPs of the whole clip in one call, unchanged
    cost = count_generator_cost(full_meta, 16, 512, 1024, 50)
    vae = next(s for s in cost.stages if s.stage == "vae_decoder")
    full = next(s for s in full_meta.cost_stages(num_frames=16, height=512, width=1024, steps=50)
                if s.name == "vae_decoder")
    assert vae.calls == 2 and tuple(full.make_inputs(1)["z"].shape) == (8, 4, 64, 128)
    p = next(full_meta.vae.parameters())
    one_call = replace(full, make_inputs=lambda b: {"z": torch.zeros(16 * b, 4, 64, 128, device=p.device, dtype=p.dtype)},
                       calls=1)
    assert vae.macs_per_call * vae.calls == count_stage(one_call).macs
    # `cmdbench efficiency --count-only --json` before the split: 4632.6 true TFLOPs, 939.0 paper TMAC
    assert cost.true_tflops == pytest.approx(4632.643389874175, rel=1e-9)
    assert cost.paper_tmacs == pytest.approx(938.972450816, rel=1e-9)


@pytest.mark.slow
def test_meta_forward_shape_and_paper_macs_at_512x1024x16(full_meta, checks):
    stages = {s.name: s for s in full_meta.cost_stages(num_frames=16, height=512, width=1024, steps=50)}
    assert list(stages) == ["text_encoder", "denoiser", "vae_decoder"]
    denoiser = stages["denoiser"]
    assert denoiser.calls == 50 and denoiser.guidance_passes == 2 and denoiser.paper_convention
    assert not stages["text_encoder"].paper_convention and not stages["vae_decoder"].paper_convention
    inputs = denoiser.make_inputs(1)
    out = full_meta.denoiser(**inputs).sample
    assert out.shape == (1, 4, 16, 64, 128) and out.device.type == "meta"
    fc = count_flops(full_meta.denoiser, inputs)
    # baselines.md §4.3 [V]: 18.75 TMAC per forward excluding 4.00 TMAC of attention scores
    assert fc.macs_excl_attention / 1e12 == pytest.approx(18.75, rel=1e-3)
    assert fc.attention_macs / 1e12 == pytest.approx(4.00, abs=0.005)
    # CMD Table 9 (fvcore's count, cmdbench.metrics.efficiency): 939.0 over 50 steps; norms add 0.03 TMAC
    assert fc.paper_macs * 50 / 1e12 == pytest.approx(939.0, rel=1e-3)


def test_sizes_in_multiples_of_8_as_diffusers(tiny, full_meta, checks):
    """``TextToVideoSDPipeline`` takes any multiple of 8 (the UNet resizes odd skip connections): 24x40
    (latent 3x5) samples; the full UNet takes a 9x13 latent (72x104 pixels, not multiples of 64)."""
    assert checks.sample_at_defaults(tiny, [0], height=24, width=40).shape[-2:] == (24, 40)
    assert full_meta.denoiser(**full_meta.denoiser_inputs(1, 2, 9, 13)).sample.shape == (1, 4, 2, 9, 13)
    with pytest.raises(UnsupportedSettingError, match="height=20 is not a multiple of 8"):
        checks.sample_at_defaults(tiny, [0], height=20)


@pytest.mark.slow
def test_checkpoint_round_trip(tiny, tmp_path, checks):
    tiny.save_pretrained(tmp_path / "ckpt")
    loaded = build(GeneratorSpec(checkpoint=str(tmp_path / "ckpt"), tiny=True))
    assert torch.equal(checks.sample_at_defaults(tiny, [3]), checks.sample_at_defaults(loaded, [3]))


def test_missing_component_is_named(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "ckpt")
    import shutil

    shutil.rmtree(tmp_path / "ckpt" / "vae")
    with pytest.raises(MissingWeightsError, match="vae"):
        build(GeneratorSpec(checkpoint=str(tmp_path / "ckpt")))
    with pytest.raises(MissingWeightsError, match="HF_HUB_OFFLINE|cannot load"):
        build(GeneratorSpec(checkpoint="no-such-org/no-such-model"))


def test_float16_loads_the_fp16_variant_files(tiny, tmp_path):
    """``variant="fp16"`` as the model card loads ModelScope: in float16 the ``*.fp16.safetensors`` files are
    read (here holding other weights than the default files, to tell them apart); components without them
    fall back to their default weights with a warning; float32 reads the default files."""
    from diffusers import UNet3DConditionModel

    tiny.save_pretrained(tmp_path / "ckpt")
    torch.manual_seed(7)
    fp16_unet = UNet3DConditionModel.from_config(tiny.denoiser.config).half()
    fp16_unet.save_pretrained(tmp_path / "ckpt" / "unet", variant="fp16")
    assert list((tmp_path / "ckpt" / "unet").glob("*.fp16.safetensors"))
    with pytest.warns(UserWarning, match="no 'fp16' variant"):
        half = build(GeneratorSpec(checkpoint=str(tmp_path / "ckpt"), tiny=True, dtype="float16"))
    for (name, a), b in zip(half.denoiser.state_dict().items(), fp16_unet.state_dict().values(), strict=True):
        assert a.dtype == torch.float16 and torch.equal(a, b), name
    full = build(GeneratorSpec(checkpoint=str(tmp_path / "ckpt"), tiny=True))
    for (name, a), b in zip(full.denoiser.state_dict().items(), tiny.denoiser.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert half.vae.dtype == torch.float16 and torch.equal(half.vae.decoder.conv_out.weight,
                                                          tiny.vae.decoder.conv_out.weight.half())
