"""PVDM's DDIM sampler (``losses/ddpm.py::DDPM.ddim_sample``, sihyun-yu/PVDM @ 793172f, MIT): its timestep
grid, its noise schedule and its update, re-stated.

Why not ``diffusers.DDIMScheduler``: PVDM's grid is ``int(linspace(-1, T-1, S+1))`` (float32, truncated),
which diffusers' ``timestep_spacing="trailing"`` reproduces only when ``S`` divides ``T`` (at the
released model's 400 steps, 100 of the 400 timesteps differ by one), and ``DDIMScheduler.step`` always
steps to ``t - T // S`` rather than to the next grid point. The update below is PVDM's, line for line:

    x0 = clip((x_t - sqrt(1 - a_t) eps) / sqrt(a_t), -1, 1)                 (predict_start_from_noise)
    x_next = x0                                             if t_next < 0   (the last step returns x0)
    x_next = sqrt(a_n) x0 + sqrt(1 - a_n - s^2) eps + s z   otherwise,
    s = eta sqrt((1 - a_t / a_n) (1 - a_n) / (1 - a_t))

with ``a = alphas_cumprod`` and ``eps`` the network's output (not re-derived from the clipped x0).
"""

from __future__ import annotations

import torch

NUM_TRAIN_TIMESTEPS = 1000
LINEAR_START, LINEAR_END = 0.0015, 0.0195  # configs/latent-diffusion/base.yaml


def ddim_timesteps(steps: int, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> list[int]:
    """The ``steps`` timesteps PVDM visits, high to low, followed by the terminal ``-1``.

    ``torch.linspace(-1, T - 1, steps=S + 1).int()`` reversed, exactly as ``ddim_sample`` computes it
    (float32 ``linspace``, truncation toward zero). 100 steps: ``[999, 989, ..., 9, -1]``.
    """
    times = torch.linspace(-1, num_train_timesteps - 1, steps=steps + 1).int().tolist()
    return list(reversed(times))


def alphas_cumprod(num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """``(T,)`` float32 cumulative alphas of LDM's "linear" schedule, computed in float64 as PVDM does
    (``make_beta_schedule``: betas = ``linspace(sqrt(start), sqrt(end), T)^2``), stored in float32."""
    betas = torch.linspace(LINEAR_START**0.5, LINEAR_END**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


def ddim_step(x: torch.Tensor, eps: torch.Tensor, t: int, t_next: int, alphas: torch.Tensor, eta: float,
              noise: torch.Tensor | None) -> torch.Tensor:
    """One update from ``t`` to ``t_next`` (module docstring); ``x``, ``eps``, ``noise``: ``(B, C, L)`` float32.

    ``noise`` is needed when ``eta > 0`` and ``t_next >= 0``.
    """
    a = alphas[t]
    x0 = ((x - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1.0, 1.0)
    if t_next < 0:
        return x0
    a_next = alphas[t_next]
    sigma = eta * ((1 - a / a_next) * (1 - a_next) / (1 - a)).sqrt()
    out = x0 * a_next.sqrt() + (1 - a_next - sigma**2).sqrt() * eps
    if eta > 0:
        if noise is None:
            raise ValueError(f"ddim_step: eta={eta} > 0 needs noise for the step {t} -> {t_next}")
        out = out + sigma * noise
    return out
