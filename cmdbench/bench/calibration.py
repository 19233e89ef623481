"""A fixed CPU calibration workload: the yardstick that CPU timings of one run are divided by.

A CPU that is uniformly slower today (another tenant, a lower clock, a different VM placement) makes
every timing of a run slower by about the same factor. Timing a fixed workload in the same run, with the
same timer, threads and interleaving as the measured figures, and comparing ``figure / calibration`` instead
of raw seconds cancels that common factor (the regression gate does so, :mod:`cmdbench.bench.regression`).

The workload is a miniature of what the measured generators do per denoising step, so it shifts with
the same things they do (BLAS speed, per-op dispatch overhead, memory bandwidth): a 3x3 convolution,
group normalisation and SiLU on a (1, 32, 32, 32) feature map, a linear layer and scaled-dot-product
attention over 256 tokens of width 64, and 50 small elementwise ops. Inputs and weights are fixed
(seed 0, float32); one call (16 repetitions) takes about 15 ms of CPU on one core of a current server.

Rows: one ``calibration_time`` row (wall clock, ``s/call``) and one ``calibration_cpu_time`` row (the
process's CPU time, ``CPU s/call``) per run (``values`` = the raw repeats, ``value`` their median), written
beside the figures they normalise; the gate looks them up by ``run_id`` and divides wall-clock figures by
the first, CPU-time figures by the second.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

METRIC = "calibration_time"
CPU_METRIC = "calibration_cpu_time"
UNIT = "s/call"
CPU_UNIT = "CPU s/call"
PROTOCOL = "calibration-v1: conv3x3+groupnorm+silu (1,32,32,32), linear+sdpa (1,256,64), 50 elementwise; fp32"


def workload(steps: int = 16) -> Callable[[], torch.Tensor]:
    """The fixed workload as a callable (built once: tensors allocated, weights drawn from seed 0)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 32, 32, 32, generator=gen)                    # (B, C, H, W)
    conv_w = torch.randn(32, 32, 3, 3, generator=gen) / 17.0          # (C_out, C_in, 3, 3)
    tokens = torch.randn(1, 256, 64, generator=gen)                   # (B, L, D)
    lin_w = torch.randn(3 * 64, 64, generator=gen) / 8.0              # (3D, D)
    small = torch.randn(64, 64, generator=gen)

    @torch.inference_mode()
    def run() -> torch.Tensor:
        h, t, s = x, tokens, small
        for _ in range(steps):
            h = F.silu(F.group_norm(F.conv2d(h, conv_w, padding=1), 8))       # (1, 32, 32, 32)
            q, k, v = F.linear(t, lin_w).chunk(3, dim=-1)                      # 3 x (1, 256, 64)
            t = t + F.scaled_dot_product_attention(q, k, v)                    # (1, 256, 64)
            for _ in range(12):
                s = torch.tanh(s * 0.5 + 0.1)                                  # (64, 64)
        return h.sum() + t.sum() + s.sum()

    return run


def time_call(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one call, with the timers the sampling figures use:
    ``time.perf_counter`` and ``time.process_time`` (this process's CPU time, all threads)."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def measure(repeats: int = 5, *, warmup: int = 1) -> list[tuple[float, float]]:
    """``repeats`` timed calls of :func:`workload` after ``warmup`` untimed ones: (wall, CPU) seconds each."""
    fn = workload()
    for _ in range(warmup):
        fn()
    return [time_call(fn) for _ in range(repeats)]
