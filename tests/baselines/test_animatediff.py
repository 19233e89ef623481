"""animatediff-v152: tiny sampling, published size on meta, MACs, frame limit, sizes, the repository's
defaults, and every real-weight source: saved folder, SD 1.5 base + MotionAdapter (folder, default hub id)
and the original ``mm_sd_v15_v2.ckpt`` layout."""

from __future__ import annotations

import pytest
import torch

from baselines.animatediff.generator import NAME, build
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


def test_published_parameter_counts(full_meta, checks):
    # baselines.md §6.2 [V]: UNetMotionModel (SD 1.5 + v1-5-2 adapter) 1312.73M; CLIP-L 123.06M
    assert checks.millions(full_meta.denoiser) == pytest.approx(1312.73, abs=0.01)
    assert checks.millions(full_meta.text_encoder) == pytest.approx(123.06, abs=0.01)


@pytest.mark.slow
def test_meta_forward_shape_and_macs_at_512x1024x16(full_meta, checks):
    denoiser = {s.name: s for s in full_meta.cost_stages(num_frames=16, height=512, width=1024, steps=50)}[
        "denoiser"]
    inputs = denoiser.make_inputs(1)
    assert full_meta.denoiser(**inputs).sample.shape == (1, 4, 16, 64, 128)
    fc = count_flops(full_meta.denoiser, inputs)
    macs, scores = fc.macs_excl_attention, fc.attention_macs
    # baselines.md §4.3 [V]: 15.68 TMAC excluding scores, 4.00 TMAC of scores
    assert macs / 1e12 == pytest.approx(15.68, rel=0.01)
    assert scores / 1e12 == pytest.approx(4.00, rel=0.01)


def test_sizes_in_multiples_of_8_as_diffusers(tiny, full_meta, checks):
    """``AnimateDiffPipeline`` takes any multiple of 8: 24x40 samples, the full UNet takes a 9x13 latent."""
    assert checks.sample_at_defaults(tiny, [0], height=24, width=40).shape[-2:] == (24, 40)
    assert full_meta.denoiser(**full_meta.denoiser_inputs(1, 2, 9, 13)).sample.shape == (1, 4, 2, 9, 13)
    with pytest.raises(UnsupportedSettingError, match="width=36 is not a multiple of 8"):
        checks.sample_at_defaults(tiny, [0], width=36)


def test_frames_beyond_the_position_table_are_refused(tiny, checks):
    with pytest.raises(UnsupportedSettingError, match="1..32"):
        checks.sample_at_defaults(tiny, [0], num_frames=33)


@pytest.mark.slow
def test_checkpoint_round_trip(tiny, tmp_path, checks):
    tiny.save_pretrained(tmp_path / "ckpt")
    loaded = build(GeneratorSpec(checkpoint=str(tmp_path / "ckpt"), tiny=True))
    assert torch.equal(checks.sample_at_defaults(tiny, [3]), checks.sample_at_defaults(loaded, [3]))


def test_sd15_unet_plus_adapter_layout_loads(tmp_path, checks):
    """The published layout: an SD 1.5 ``unet/`` (UNet2DConditionModel) beside ``motion_adapter/``."""
    from diffusers import MotionAdapter, UNet2DConditionModel

    from baselines._common.text_video import init_kwargs
    from baselines.animatediff.generator import TINY_ADAPTER_CONFIG, TINY_UNET_CONFIG

    tiny = build(GeneratorSpec(tiny=True))
    tiny.save_pretrained(tmp_path / "ckpt")
    import shutil

    shutil.rmtree(tmp_path / "ckpt" / "unet")
    torch.manual_seed(1)
    UNet2DConditionModel(**init_kwargs(UNet2DConditionModel, TINY_UNET_CONFIG)).save_pretrained(tmp_path / "ckpt" / "unet")
    MotionAdapter(**TINY_ADAPTER_CONFIG).save_pretrained(tmp_path / "ckpt" / "motion_adapter")
    loaded = build(GeneratorSpec(checkpoint=str(tmp_path / "ckpt"), tiny=True))
    assert type(loaded.denoiser).__name__ == "UNetMotionModel"
    assert checks.sample_at_defaults(loaded, [0]).shape[1] == tiny.defaults.num_frames


def test_defaults_are_the_animatediff_repository_setting():
    """guoyww/AnimateDiff @ e92bd56: mm_sd_v15_v2.ckpt prompt configs sample 25 steps at guidance 7.5 (16x512x512),
    with inference-v2.yaml's linear betas 0.00085-0.012 and steps_offset 1."""
    from baselines.animatediff.generator import DEFAULTS, SCHEDULER_CONFIG

    assert (DEFAULTS.steps, DEFAULTS.guidance_scale, DEFAULTS.num_frames, DEFAULTS.height) == (25, 7.5, 16, 512)
    assert (SCHEDULER_CONFIG["beta_schedule"], SCHEDULER_CONFIG["steps_offset"]) == ("linear", 1)


# AnimateDiff's names for one motion module (animatediff/models/motion_module.py @ e92bd56:
# VanillaTemporalModule.temporal_transformer = TemporalTransformer3DModel(norm, proj_in, transformer_blocks,
# proj_out); TemporalTransformerBlock(attention_blocks[0..1] each after norms[0..1], ff after ff_norm)) ->
# diffusers MotionAdapter's names (AnimateDiffTransformer3D / BasicTransformerBlock).
ANIMATEDIFF_TO_DIFFUSERS = {
    "temporal_transformer.norm.": "norm.",
    "temporal_transformer.proj_in.": "proj_in.",
    "temporal_transformer.proj_out.": "proj_out.",
    "temporal_transformer.transformer_blocks.0.norms.0.": "transformer_blocks.0.norm1.",
    "temporal_transformer.transformer_blocks.0.attention_blocks.0.": "transformer_blocks.0.attn1.",
    "temporal_transformer.transformer_blocks.0.norms.1.": "transformer_blocks.0.norm2.",
    "temporal_transformer.transformer_blocks.0.attention_blocks.1.": "transformer_blocks.0.attn2.",
    "temporal_transformer.transformer_blocks.0.ff_norm.": "transformer_blocks.0.norm3.",
    "temporal_transformer.transformer_blocks.0.ff.": "transformer_blocks.0.ff.",
}


def animatediff_layout(adapter_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A MotionAdapter's weights under AnimateDiff's own key names, as ``mm_sd_v15_v2.ckpt`` stores them
    (each temporal attention carrying its sinusoidal ``pos_encoder.pe`` table)."""
    out = {}
    for key, value in adapter_state.items():
        module, _, rest = key.partition(".motion_modules.")
        index, _, rest = rest.partition(".")
        prefix = f"{module}.motion_modules.{index}."
        if rest == "transformer_blocks.0.pos_embed.pe":
            for i in (0, 1):
                out[f"{prefix}temporal_transformer.transformer_blocks.0.attention_blocks.{i}.pos_encoder.pe"] = value
            continue
        (original,) = [a for a, d in ANIMATEDIFF_TO_DIFFUSERS.items() if rest.startswith(d)]
        out[prefix + original + rest[len(ANIMATEDIFF_TO_DIFFUSERS[original]):]] = value
    return out


@pytest.fixture(scope="module")
def sd15_base(tmp_path_factory, checks):
    """A tiny SD 1.5 diffusers folder (unet/ = UNet2DConditionModel, vae/, text_encoder/, tokenizer/, and
    SD's PNDM scheduler/) and a tiny v1-5-2-shaped MotionAdapter, both random."""
    from diffusers import MotionAdapter, PNDMScheduler, UNet2DConditionModel

    from baselines._common.text_video import init_kwargs
    from baselines.animatediff.generator import TINY_ADAPTER_CONFIG, TINY_UNET_CONFIG

    root = tmp_path_factory.mktemp("animatediff")
    tiny = build(GeneratorSpec(tiny=True))
    tiny.vae.save_pretrained(root / "sd15" / "vae")
    tiny.text_encoder.save_pretrained(root / "sd15" / "text_encoder")
    checks.clip_tokenizer(root / "sd15" / "tokenizer", pad_token="<|endoftext|>")
    PNDMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).save_pretrained(
        root / "sd15" / "scheduler")
    torch.manual_seed(1)
    UNet2DConditionModel(**init_kwargs(UNet2DConditionModel, TINY_UNET_CONFIG)).save_pretrained(root / "sd15" / "unet")
    adapter = MotionAdapter(**TINY_ADAPTER_CONFIG)
    adapter.save_pretrained(root / "adapter")
    return root, adapter


def motion_weights_equal(gen, adapter) -> bool:
    unet = gen.denoiser.state_dict()
    return all(torch.equal(unet[k], v) for k, v in adapter.state_dict().items())


def test_sd15_base_with_a_separate_motion_adapter(sd15_base, checks):
    """``"<SD 1.5>::<MotionAdapter folder>"``: the adapter's weights land in the UNet, the base's PNDM
    scheduler is not used (AnimateDiff's own DDIM schedule is), the base's CLIPTokenizer is."""
    root, adapter = sd15_base
    gen = build(GeneratorSpec(checkpoint=f"{root / 'sd15'}::{root / 'adapter'}", tiny=True))
    assert type(gen.denoiser).__name__ == "UNetMotionModel" and motion_weights_equal(gen, adapter)
    assert gen.scheduler_config["beta_schedule"] == "linear" and gen.tokenizer is not None
    assert checks.sample_at_defaults(gen, [0]).shape[1] == gen.defaults.num_frames


def test_sd15_base_alone_takes_the_default_adapter(sd15_base, monkeypatch):
    """Without ``::``, the adapter is ``DEFAULT_ADAPTER`` (the v1-5-2 hub id; here pointed at a local copy)."""
    import baselines.animatediff.generator as module

    root, adapter = sd15_base
    assert module.DEFAULT_ADAPTER == "guoyww/animatediff-motion-adapter-v1-5-2"
    monkeypatch.setattr(module, "DEFAULT_ADAPTER", str(root / "adapter"))
    assert motion_weights_equal(build(GeneratorSpec(checkpoint=str(root / "sd15"), tiny=True)), adapter)


def test_original_motion_module_checkpoint_loads(sd15_base, tmp_path, checks):
    """``"<SD 1.5>::mm_sd_v15_v2.ckpt"`` in AnimateDiff's own key layout: converted, every weight in place,
    the same videos as the diffusers-layout adapter; a file of another layout is refused by name."""
    root, adapter = sd15_base
    original = animatediff_layout(adapter.state_dict())
    assert "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.1.to_q.weight" \
        in original and "mid_block.motion_modules.0.temporal_transformer.proj_out.bias" in original
    torch.save(original, tmp_path / "mm_sd_v15_v2.ckpt")
    gen = build(GeneratorSpec(checkpoint=f"{root / 'sd15'}::{tmp_path / 'mm_sd_v15_v2.ckpt'}", tiny=True))
    assert motion_weights_equal(gen, adapter)
    reference = build(GeneratorSpec(checkpoint=f"{root / 'sd15'}::{root / 'adapter'}", tiny=True))
    assert torch.equal(checks.sample_at_defaults(gen, [2]), checks.sample_at_defaults(reference, [2]))

    from baselines._common.loading import MissingWeightsError

    broken = {k.replace("norms.0", "norms.9"): v for k, v in original.items()}
    torch.save(broken, tmp_path / "broken.ckpt")
    with pytest.raises(MissingWeightsError, match="broken.ckpt is not an AnimateDiff"):
        build(GeneratorSpec(checkpoint=f"{root / 'sd15'}::{tmp_path / 'broken.ckpt'}", tiny=True))
