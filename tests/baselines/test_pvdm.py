"""pvdm-ucf101: triplane autoencoder and plane UNet ports, unconditional sampling, checkpoints."""

from __future__ import annotations

import pytest
import torch

from baselines._common.loading import MissingWeightsError
from baselines.pvdm.autoencoder import TriplaneAutoencoder
from baselines.pvdm.generator import NAME, TINY_AE_CONFIG, TINY_UNET_CONFIG, build
from baselines.pvdm.plane_unet import PlaneUNet
from cmdbench.interfaces import ConditioningError, GeneratorSpec, UnsupportedSettingError
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


def test_unconditional_and_fixed_size(tiny, checks):
    with pytest.raises(ConditioningError):
        checks.sample_at_defaults(tiny, [0], prompts=["a"])
    with pytest.raises(UnsupportedSettingError, match="num_frames=8; allowed only 4"):
        checks.sample_at_defaults(tiny, [0], num_frames=8)
    with pytest.raises(UnsupportedSettingError, match="unconditional"):
        checks.sample_at_defaults(tiny, [0], guidance_scale=3.0)


def test_autoencoder_latent_layout_and_ranges():
    """Encode gives the flattened triplane ``(B, 4, g*g + 2*T*g)`` inside tanh's (-1, 1); decode gives a
    video of the input's shape in [-1, 1]; samples are encoded independently of their batch."""
    torch.manual_seed(0)
    ae = TriplaneAutoencoder(**TINY_AE_CONFIG).eval()
    video = torch.rand(2, 3, 4, 32, 32) * 2 - 1
    with torch.no_grad():
        z = ae.encode(video)
        out = ae.decode(z)
    g, t = 32 // 8, 4
    assert z.shape == (2, 4, g * g + 2 * t * g) and z.abs().max() < 1
    assert out.shape == video.shape and out.abs().max() <= 1
    with torch.no_grad():  # each sample is encoded independently
        torch.testing.assert_close(ae.encode(video[1:]), z[1:], rtol=1e-4, atol=1e-5)


def test_plane_unet_mixes_planes():
    """The joint 1D attention passes information between planes: perturbing only the xy plane
    changes the predicted noise on the yt and xt planes."""
    torch.manual_seed(0)
    unet = PlaneUNet(**TINY_UNET_CONFIG).eval()
    s, t = TINY_UNET_CONFIG["plane_size"], TINY_UNET_CONFIG["plane_frames"]
    x = torch.randn(1, 4, s * s + 2 * t * s)
    x2 = x.clone()
    x2[..., : s * s] += 1.0
    with torch.no_grad():
        y, y2 = unet(x, torch.tensor(10)), unet(x2, torch.tensor(10))
    assert y.shape == x.shape
    assert not torch.allclose(y[..., s * s :], y2[..., s * s :])


def test_full_size_on_meta(full_meta, checks):
    stages = {s.name: s for s in full_meta.cost_stages(num_frames=16, height=256, width=256, steps=100)}
    assert list(stages) == ["denoiser", "decoder"] and stages["denoiser"].guidance_passes == 1
    assert full_meta.unet(**stages["denoiser"].make_inputs(1)).shape == (1, 4, 2048)
    assert full_meta.autoencoder.decode(**stages["decoder"].make_inputs(1)).shape == (1, 3, 16, 256, 256)
    # sizes of the published configuration, as built here (the PVDM paper reports no parameter count)
    assert checks.millions(full_meta.unet) == pytest.approx(528.27, abs=0.01)
    assert checks.millions(full_meta.autoencoder) == pytest.approx(62.06, abs=0.01)


@pytest.mark.slow
def test_checkpoint_round_trip(tiny, tmp_path, checks):
    tiny.save_pretrained(tmp_path / "ckpt")
    loaded = build(GeneratorSpec(checkpoint=str(tmp_path / "ckpt"), tiny=True))
    assert torch.equal(checks.sample_at_defaults(tiny, [3]), checks.sample_at_defaults(loaded, [3]))


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(MissingWeightsError, match="not a directory"):
        build(GeneratorSpec(checkpoint=str(tmp_path / "nothing")))
    (tmp_path / "ckpt" / "unet").mkdir(parents=True)
    with pytest.raises(MissingWeightsError, match="autoencoder"):
        build(GeneratorSpec(checkpoint=str(tmp_path / "ckpt")))
    with pytest.raises(MissingWeightsError, match="do not exist"):
        build(GeneratorSpec(checkpoint=f"{tmp_path}/ae.pth::{tmp_path}/ddpm.pth"))


@pytest.mark.slow
def test_pvdm_state_dict_files_load(tiny, tmp_path, checks):
    """PVDM's own ``.pth`` state dicts (here of the miniature; ``model.`` prefix as a wrapper writes it)."""
    torch.save(tiny.autoencoder.state_dict(), tmp_path / "ae.pth")
    torch.save({"model": {f"diffusion_model.{k}": v for k, v in tiny.unet.state_dict().items()}},
               tmp_path / "ddpm.pth")
    loaded = build(GeneratorSpec(checkpoint=f"{tmp_path}/ae.pth::{tmp_path}/ddpm.pth", tiny=True))
    assert torch.equal(checks.sample_at_defaults(tiny, [3]), checks.sample_at_defaults(loaded, [3]))
