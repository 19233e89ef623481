"""pvdm-ucf101: triplane autoencoder and plane UNet ports, PVDM's own key names and DDIM sampler, checkpoints.

PVDM's layout (``data/pvdm_state_dict_layout.json``) and its sampler equations are taken from the
published code (sihyun-yu/PVDM @ 793172f: ``models/autoencoder``, ``models/ddpm/unet.py``,
``losses/ddpm.py::ddim_sample``), independently of this port.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler
from torch import nn

from baselines._common.loading import MissingWeightsError
from baselines.pvdm.autoencoder import TriplaneAutoencoder
from baselines.pvdm.generator import (
    AE_CONFIG,
    DEFAULTS,
    ETA,
    NAME,
    PVDMUCF101,
    TINY_AE_CONFIG,
    TINY_UNET_CONFIG,
    UNET_CONFIG,
    build,
    pvdm_state_dict,
)
from baselines.pvdm.plane_unet import PlaneUNet
from cmdbench.interfaces import ConditioningError, GeneratorSpec, UnsupportedSettingError
from cmdbench.registry import GENERATORS
from cmdbench.seeding import make_generators, randn_per_sample

LAYOUT = json.loads((Path(__file__).parent / "data" / "pvdm_state_dict_layout.json").read_text())


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


@pytest.mark.parametrize(("part", "cls", "config"), [("autoencoder", TriplaneAutoencoder, AE_CONFIG),
                                                      ("diffusion", PlaneUNet, UNET_CONFIG)])
def test_state_dict_with_pvdm_key_names_loads_strictly(part, cls, config):
    """Every key and shape of PVDM's ``ViTAutoencoder`` / ``DiffusionWrapper(UNetModel)`` state dict (the
    files its trainer saves) loads strictly, e.g. the axis summaries' ``...quant_attn.layers.*.1.fn.net.0/3``."""
    with torch.device("meta"):
        module = cls(**config)
        state = {k: torch.empty(shape) for k, shape in LAYOUT[part].items()}
    module.load_state_dict(pvdm_state_dict(state), strict=True, assign=True)  # raises on any name or shape


class RecordingUNet(nn.Module):
    """A stand-in denoiser: records each timestep and returns ``eps = 0.7 x + 0.1`` (a fixed function)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        self.seen.append(int(timesteps))
        return 0.7 * x + 0.1


def pvdm_grid(steps: int) -> list[int]:
    """``ddim_sample``: ``times = reversed(torch.linspace(-1, T - 1, steps=S + 1).int())`` (T = 1000)."""
    return list(reversed(torch.linspace(-1, 999, steps=steps + 1).int().tolist()))


def sample_latents(tiny, unet, steps, seeds, monkeypatch):
    """Run the generator with ``unet`` swapped in; return the final latents handed to the decoder."""
    gen = PVDMUCF101(autoencoder=tiny.autoencoder, unet=unet, defaults=tiny.defaults)
    decoded = []
    monkeypatch.setattr(gen.autoencoder, "decode", lambda z: decoded.append(z.clone()) or torch.zeros(
        1, 3, gen.defaults.num_frames, gen.defaults.height, gen.defaults.width))
    d = gen.defaults
    gen.sample(num_frames=d.num_frames, height=d.height, width=d.width, steps=steps,
               generator=make_generators(seeds))
    return torch.cat(decoded)  # (B, 4, L)


@pytest.mark.parametrize("steps", [100, 400])
def test_timesteps_are_pvdm_ddim_grid(tiny, steps, monkeypatch):
    unet = RecordingUNet()
    sample_latents(tiny, unet, steps, [0], monkeypatch)
    grid = pvdm_grid(steps)
    assert unet.seen == grid[:-1] and grid[-1] == -1
    if steps == 100:
        assert unet.seen == list(range(999, 8, -10))  # the last network call is at t = 9
    else:  # diffusers' "trailing" spacing is not PVDM's grid at 400 steps
        trailing = DDIMScheduler(timestep_spacing="trailing")
        trailing.set_timesteps(steps)
        assert sum(a != b for a, b in zip(unet.seen, trailing.timesteps.tolist(), strict=True)) == 100
        assert unet.seen[:4] == [999, 996, 994, 991] and unet.seen[-1] == 1


def test_sampler_is_pvdm_ddim_sample_and_returns_x0(tiny, monkeypatch):
    """The whole loop against PVDM's equations in float64 (same stand-in network, same noise draws):
    eta = 1 noise on every step but the last, x0 clipped to [-1, 1], and x0 returned after t = 9."""
    steps, seeds = 100, [3, 4]
    got = sample_latents(tiny, RecordingUNet(), steps, seeds, monkeypatch)

    betas = torch.linspace(0.0015**0.5, 0.0195**0.5, 1000, dtype=torch.float64) ** 2  # make_beta_schedule
    alphas = torch.cumprod(1 - betas, 0).float().double()  # registered as float32 buffers
    gens = make_generators(seeds)
    shape = (TINY_AE_CONFIG["embed_dim"], tiny.autoencoder.latent_length)
    img = randn_per_sample(gens, shape).double()
    times = pvdm_grid(steps)
    for time, time_next in zip(times[:-1], times[1:], strict=True):
        pred_noise = 0.7 * img + 0.1
        x_start = ((img - (1 - alphas[time]).sqrt() * pred_noise) / alphas[time].sqrt()).clamp(-1, 1)
        if time_next < 0:
            img = x_start
            continue
        alpha, alpha_next = alphas[time], alphas[time_next]
        sigma = ETA * ((1 - alpha / alpha_next) * (1 - alpha_next) / (1 - alpha)).sqrt()
        c = (1 - alpha_next - sigma**2).sqrt()
        noise = randn_per_sample(gens, shape).double()
        img = x_start * alpha_next.sqrt() + c * pred_noise + sigma * noise
    torch.testing.assert_close(got.double(), img, rtol=1e-5, atol=1e-5)
    assert got.abs().max() <= 1.0  # a clipped x0, not a step to t = 0


def test_defaults_are_the_released_setting():
    """PVDM README, "Evaluation": the released models are sampled "400/400-s, eta=1"."""
    assert DEFAULTS.steps == 400 and ETA == 1.0
    with pytest.raises(UnsupportedSettingError, match="steps=1000; allowed 1..999"):
        build(GeneratorSpec(tiny=True)).check_settings(4, 32, 32, 1000, None)
