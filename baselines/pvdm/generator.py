"""pvdm-ucf101: PVDM (Yu et al., CVPR 2023, arXiv:2302.07685), unconditional UCF-101 16x256x256.

- autoencoder: :class:`baselines.pvdm.autoencoder.TriplaneAutoencoder` (``configs/autoencoder/base.yaml``:
  channels 384, TimeSformer depth 8, patch 8, ``embed_dim = 4``, tanh), latent ``(4, 2048)``;
- denoiser: :class:`baselines.pvdm.plane_unet.PlaneUNet` (``configs/latent-diffusion/base.yaml``: 256
  channels, mult [1, 2, 4, 4], 2 res-blocks, attention at [4, 2, 1], 8 heads, ``cond_model`` with zeros
  for a first clip);
- sampler: PVDM's own DDIM (:mod:`baselines.pvdm.sampler`, ``losses/ddpm.py::ddim_sample``): its
  timestep grid ``int(linspace(-1, 999, S+1))``, predicted ``x0`` clipped to [-1, 1], per-step noise
  drawn per sample, and ``x0`` returned after the last step (t = 9 at 100 steps, t = 1 at 400).
  Defaults: **400 steps, eta = 1**, the setting the released checkpoints are documented with (PVDM
  README, "Evaluation": "Diffusion Model (400/400-s, eta=1)"). At 1000 steps PVDM switches to its
  ancestral sampler (``p_sample_loop``), which is not ported: steps 1..999.

Real checkpoints: a directory with ``autoencoder/`` and ``unet/`` (diffusers layout, as
:meth:`PVDMUCF101.save_pretrained` writes), or PVDM's own files given as
``"<autoencoder .pth>::<diffusion .pth>"``: the first stage's ``model_last.pth`` (``ViTAutoencoder``
keys) and the diffusion model's ``model_*.pth`` / ``ema_model_*.pth`` (``DiffusionWrapper`` keys,
``diffusion_model.`` prefix), loaded strictly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from baselines._common.loading import MissingWeightsError, load_component, place, require_subfolders
from baselines._common.sampling import CheckedSampler
from baselines._common.text_video import seeded_init
from baselines.pvdm.autoencoder import TriplaneAutoencoder
from baselines.pvdm.plane_unet import PlaneUNet
from baselines.pvdm.sampler import NUM_TRAIN_TIMESTEPS, alphas_cumprod, ddim_step, ddim_timesteps
from cmdbench.interfaces import (
    CostStage,
    GeneratorSpec,
    SamplingDefaults,
    StageHook,
    UnsupportedSettingError,
    stage,
)
from cmdbench.registry import GENERATORS
from cmdbench.seeding import randn_per_sample
from cmdbench.video import float_to_uint8

NAME = "pvdm-ucf101"
WEIGHT_SEED = 0
ETA = 1.0

AE_CONFIG: dict[str, Any] = {"channels": 384, "resolution": 256, "frames": 16, "patch_size": 8, "depth": 8,
                             "heads": 8, "dim_head": 64, "embed_dim": 4}
UNET_CONFIG: dict[str, Any] = {"in_channels": 4, "out_channels": 4, "model_channels": 256,
                               "channel_mult": [1, 2, 4, 4], "num_res_blocks": 2,
                               "attention_resolutions": [4, 2, 1], "num_heads": 8, "plane_size": 32,
                               "plane_frames": 16, "cond_model": True}
TINY_AE_CONFIG: dict[str, Any] = {"channels": 32, "resolution": 32, "frames": 4, "patch_size": 8, "depth": 1,
                                  "heads": 2, "dim_head": 16, "embed_dim": 4, "summary_depth": 1,
                                  "summary_heads": 2, "summary_mlp_dim": 32}
TINY_UNET_CONFIG: dict[str, Any] = {**UNET_CONFIG, "model_channels": 16, "channel_mult": [1, 2],
                                    "num_res_blocks": 1, "attention_resolutions": [2], "num_heads": 2,
                                    "plane_size": 4, "plane_frames": 4, "norm_num_groups": 8}

# PVDM README, "Evaluation": the released UCF-101 / SkyTimelapse diffusion models, "400/400-s, eta=1".
DEFAULTS = SamplingDefaults(num_frames=16, height=256, width=256, steps=400, guidance_scale=None)
TINY_DEFAULTS = SamplingDefaults(num_frames=4, height=32, width=32, steps=2, guidance_scale=None)


class PVDMUCF101(CheckedSampler):
    """Unconditional triplane latent video diffusion (see module docstring)."""

    conditioning = "none"
    num_classes = None
    eval_prompts = None

    def __init__(self, *, autoencoder: TriplaneAutoencoder, unet: PlaneUNet, defaults: SamplingDefaults,
                 device: str = "cpu", dtype: torch.dtype = torch.float32, name: str = NAME) -> None:
        self.name = name
        self.autoencoder = autoencoder.eval()
        self.unet = unet.eval()
        self.defaults = defaults
        self.device = torch.device(device)
        self.dtype = dtype
        self.eta = ETA
        self.stage_hook: StageHook | None = None

    def check_settings(self, num_frames: int, height: int, width: int, steps: int, guidance: float | None) -> None:
        ae = self.autoencoder.config
        fixed = {"num_frames": (num_frames, ae.frames), "height": (height, ae.resolution),
                 "width": (width, ae.resolution)}
        for what, (value, allowed) in fixed.items():
            if value != allowed:
                raise UnsupportedSettingError(
                    f"{self.name}: {what}={value!r}; allowed only {allowed} (the autoencoder's learned "
                    f"position tables fix {ae.frames} frames of {ae.resolution}x{ae.resolution})"
                )
        last = NUM_TRAIN_TIMESTEPS - 1
        if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= last:
            raise UnsupportedSettingError(
                f"{self.name}: steps={steps!r}; allowed 1..{last} (PVDM's DDIM sampler; at "
                f"{NUM_TRAIN_TIMESTEPS} PVDM switches to its ancestral sampler, which is not ported)"
            )
        if guidance not in (None, 1.0):
            raise UnsupportedSettingError(
                f"{self.name} is unconditional: guidance_scale={guidance!r}; allowed None (no guidance)"
            )

    def generate(self, *, prompts: Sequence[str] | None, labels: Sequence[int] | None, num_frames: int,
                 height: int, width: int, steps: int, generator: Sequence[torch.Generator],
                 guidance_scale: float | None) -> torch.Tensor:
        """:meth:`CheckedSampler.sample` after its checks: uint8 ``(B, T, 3, H, W)`` on the CPU."""
        self.check_settings(num_frames, height, width, steps, guidance_scale)
        times = ddim_timesteps(steps)  # [t_1 > ... > t_S, -1]
        alphas = alphas_cumprod().to(self.device)
        shape = (self.autoencoder.config.embed_dim, self.autoencoder.latent_length)
        latents = randn_per_sample(generator, shape, device=self.device)  # (B, 4, 2048) float32
        with stage(self.stage_hook, "denoiser"):
            for t, t_next in zip(times[:-1], times[1:], strict=True):
                eps = self.unet(latents.to(self.dtype), torch.tensor(t, device=self.device)).float()  # (B, 4, 2048)
                noise = None
                if self.eta > 0 and t_next >= 0:  # per-step noise, drawn per sample
                    noise = randn_per_sample(generator, shape, device=self.device)
                latents = ddim_step(latents, eps, t, t_next, alphas, self.eta, noise)
        with stage(self.stage_hook, "decoder"):
            videos = torch.cat([self.autoencoder.decode(z[None].to(self.dtype)).float() for z in latents])
        return float_to_uint8(videos.transpose(1, 2).clamp(-1, 1).cpu(), value_range=(-1.0, 1.0))

    def cost_stages(self, *, num_frames: int, height: int, width: int, steps: int) -> list[CostStage]:
        """The plane UNet (``steps`` calls, no guidance) and the autoencoder's decoder (once)."""
        self.check_settings(num_frames, height, width, steps, None)
        p = next(self.unet.parameters())
        shape = (self.autoencoder.config.embed_dim, self.autoencoder.latent_length)

        def unet_inputs(batch: int) -> dict[str, Any]:
            return {"x": torch.zeros(batch, *shape, device=p.device, dtype=p.dtype),
                    "timesteps": torch.tensor(999, device=p.device)}

        def decoder_inputs(batch: int) -> dict[str, Any]:
            return {"latent": torch.zeros(batch, *shape, device=p.device, dtype=p.dtype)}

        return [
            CostStage("denoiser", self.unet, unet_inputs, calls=steps),
            CostStage("decoder", self.autoencoder, decoder_inputs, calls=1, paper_convention=False,
                      forward=lambda module, **kw: module.decode(**kw)),
        ]

    def save_pretrained(self, path: str | Path) -> Path:
        path = Path(path)
        self.autoencoder.save_pretrained(path / "autoencoder")
        self.unet.save_pretrained(path / "unet")
        return path


def pvdm_state_dict(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A state dict as PVDM's trainer saves it -> this port's keys (which are PVDM's own names).

    Unwraps ``{"state_dict": ...}`` / ``{"model": ...}`` and strips the ``diffusion_model.`` prefix of
    PVDM's ``DiffusionWrapper`` (or a ``model.`` prefix) when every key carries it.
    """
    state = state.get("state_dict", state.get("model", state))
    for prefix in ("diffusion_model.", "model."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _load_pth(path: Path, module: torch.nn.Module) -> torch.nn.Module:
    if not path.is_file():
        raise MissingWeightsError(f"{NAME}: weight file {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        module.load_state_dict(pvdm_state_dict(state), strict=True)
    except RuntimeError as err:
        raise RuntimeError(f"{NAME}: {path} does not match PVDM's {type(module).__name__} layout: {err}") from err
    return module


def build(spec: GeneratorSpec) -> PVDMUCF101:
    """Random weights (``checkpoint=None``; miniature when ``tiny``) or a real checkpoint."""
    dtype = spec.torch_dtype
    if spec.checkpoint is None:
        with seeded_init(spec.device, WEIGHT_SEED):
            ae = TriplaneAutoencoder(**(TINY_AE_CONFIG if spec.tiny else AE_CONFIG))
            unet = PlaneUNet(**(TINY_UNET_CONFIG if spec.tiny else UNET_CONFIG))
    elif "::" in spec.checkpoint:
        ae_path, unet_path = (Path(p).expanduser() for p in spec.checkpoint.split("::", 1))
        missing = [str(p) for p in (ae_path, unet_path) if not p.is_file()]
        if missing:  # before building the full-size networks
            raise MissingWeightsError(f"{NAME}: weight files {missing} do not exist ('<ae.pth>::<ddpm.pth>')")
        ae = _load_pth(ae_path, TriplaneAutoencoder(**(TINY_AE_CONFIG if spec.tiny else AE_CONFIG)))
        unet = _load_pth(unet_path, PlaneUNet(**(TINY_UNET_CONFIG if spec.tiny else UNET_CONFIG)))
    else:
        layout = "autoencoder/ and unet/ written by save_pretrained, or '<autoencoder.pth>::<diffusion.pth>'"
        if not Path(spec.checkpoint).expanduser().is_dir():
            raise MissingWeightsError(f"{NAME}: checkpoint {spec.checkpoint} is not a directory; expected {layout}")
        require_subfolders(NAME, spec.checkpoint, ["autoencoder", "unet"], layout)
        ae = load_component(NAME, TriplaneAutoencoder, spec.checkpoint, "autoencoder")
        unet = load_component(NAME, PlaneUNet, spec.checkpoint, "unet")
    ae, unet = place(ae, spec.device, dtype), place(unet, spec.device, dtype)
    return PVDMUCF101(autoencoder=ae, unet=unet, defaults=TINY_DEFAULTS if spec.tiny else DEFAULTS,
                      device=spec.device, dtype=dtype)


GENERATORS.register(
    NAME,
    build,
    description="PVDM unconditional UCF-101 16x256x256 (own port: triplane TimeSformer AE + plane UNet), "
    "DDIM eta 1",
)
