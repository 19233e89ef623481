"""animatediff-v152: tiny sampling, published size on meta, MACs, frame limit, checkpoint round trip."""

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
