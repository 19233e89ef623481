"""Cost measurement: hand-computed MACs, SDPA counted apart, meta counting, the ModelScope check value,
latency bookkeeping, stage split, peak memory and OOM handling."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from cmdbench.config import TimingConfig
from cmdbench.interfaces import CostStage, SamplingDefaults, stage
from cmdbench.metrics.efficiency import (
    SDPA_KEY,
    PeakMemory,
    StageRecorder,
    count_flops,
    count_generator_cost,
    count_params,
    current_rss,
    latency,
    measure_sampling,
    sdpa_macs,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class TinyAttention(nn.Module):
    """Linear q/k/v/out projections around SDPA: (B, L, D) -> (B, L, D)."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # (B,H,L,d)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, H, L, d)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class ExplicitAttention(TinyAttention):
    """Same network with hand-written baddbmm/bmm attention (diffusers' classic AttnProcessor style)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = (t.reshape(b * self.heads, n, -1) for t in (q, k, v))  # (B*H, L, d)
        scores = torch.baddbmm(q.new_zeros(q.shape[0], n, n), q, k.transpose(1, 2), alpha=q.shape[-1] ** -0.5)
        y = torch.bmm(scores.softmax(-1), v)  # (B*H, L, d)
        return self.out(y.view(b, self.heads, n, -1).transpose(1, 2).reshape(b, n, d))


def test_linear_and_conv_match_hand_counts():
    lin = nn.Linear(64, 48)
    assert count_flops(lin, (torch.randn(5, 64),)).macs == 5 * 64 * 48
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1)
    fc = count_flops(conv, (torch.randn(2, 3, 10, 12),))
    assert fc.macs == 2 * 8 * 10 * 12 * 3 * 3 * 3
    assert fc.attention_macs == 0
    conv3 = nn.Conv3d(4, 6, kernel_size=(3, 1, 1), padding=(1, 0, 0))
    assert count_flops(conv3, (torch.randn(1, 4, 5, 6, 7),)).macs == 6 * 5 * 6 * 7 * 4 * 3


def test_sdpa_counted_apart_by_formula_on_meta():
    with torch.device("meta"):
        net = TinyAttention(dim=32, heads=4)
        x = torch.empty(2, 10, 32)
    fc = count_flops(net, (x,))
    projections = 2 * 10 * 32 * 96 + 2 * 10 * 32 * 32
    attention = 2 * 4 * 10 * 10 * (8 + 8)
    assert fc.attention_macs == attention
    assert fc.macs_excl_attention == projections
    assert fc.macs == projections + attention
    assert fc.sdpa_calls == 1 and SDPA_KEY in fc.flops_by_op


def test_sdpa_formula_equals_math_backend_count_on_real_tensors():
    q, k, v = torch.randn(2, 3, 7, 16), torch.randn(2, 3, 11, 16), torch.randn(2, 3, 11, 24)
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        F.scaled_dot_product_attention(q, k, v)
    assert counter.get_total_flops() == 2 * sdpa_macs(q.shape, k.shape, v.shape) == 2 * 2 * 3 * 7 * 11 * (16 + 24)
    fc = count_flops(nn.Identity(), (q,), forward=lambda m, x: F.scaled_dot_product_attention(x, k, v))
    assert fc.attention_macs == sdpa_macs(q.shape, k.shape, v.shape) and fc.macs_excl_attention == 0


def test_explicit_bmm_attention_is_booked_as_attention_and_equals_sdpa():
    torch.manual_seed(0)
    a, b = TinyAttention(), ExplicitAttention()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 10, 32)
    fa, fb = count_flops(a, (x,)), count_flops(b, (x,))
    assert fb.sdpa_calls == 0
    assert fb.attention_macs == fa.attention_macs
    assert fb.macs_excl_attention == fa.macs_excl_attention
    with sdpa_kernel(SDPBackend.MATH):
        torch.testing.assert_close(a(x), b(x), rtol=1e-5, atol=1e-5)  # same network, two spellings


def test_backward_counts_twice_the_forward_for_linear_and_attention():
    with torch.device("meta"):
        net = TinyAttention()
        x = torch.empty(2, 10, 32, requires_grad=True)
    fwd = count_flops(net, (x,))
    both = count_flops(net, (x,), backward=True)
    # forward + grad wrt input + grad wrt weight: 3x the matmul MACs (bias grads are not matmuls)
    assert both.macs_excl_attention == 3 * fwd.macs_excl_attention
    assert both.attention_macs == 3 * fwd.attention_macs


def test_meta_counting_allocates_no_real_memory():
    with PeakMemory("cpu") as mem:  # peak RSS of this interval (VmHWM reset), not of the whole process
        before = current_rss()
        mem.checkpoint()
        with torch.device("meta"):
            big = nn.Sequential(nn.Linear(16384, 16384), nn.Linear(16384, 16384))  # 2 GiB of fp32 weights
            x = torch.empty(4096, 16384)
        fc = count_flops(big, (x,))
        grown_mib = (mem.checkpoint() - before) / 2**20
    assert fc.macs == 2 * 4096 * 16384 * 16384
    assert count_params(big) == 2 * (16384 * 16384 + 16384)
    assert grown_mib < 200, f"meta counting grew the peak RSS by {grown_mib:.0f} MiB"


@pytest.mark.slow
def test_modelscope_unet3d_full_size_matches_the_cmd_convention():
    """baselines.md §4.3: 18.75 TMAC/forward excl. attention scores, 22.75 incl., 1411.2M parameters."""
    from diffusers import UNet3DConditionModel

    with torch.device("meta"):
        unet = UNet3DConditionModel()  # the published config equals the defaults
        inputs = dict(sample=torch.empty(1, 4, 16, 64, 128), timestep=torch.tensor([10]),
                      encoder_hidden_states=torch.empty(1, 77, 1024))
    fc = count_flops(unet, inputs)
    assert fc.macs_excl_attention / 1e12 == pytest.approx(18.75, rel=5e-3)
    assert fc.macs / 1e12 == pytest.approx(22.75, rel=5e-3)
    assert count_params(unet) / 1e6 == pytest.approx(1411.2, abs=0.1)
    assert fc.sdpa_calls > 0


class FakeGenerator:
    """A generator stand-in with two stages, a stage hook and cost_stages."""

    name = "fake"
    conditioning = "none"
    num_classes = None
    defaults = SamplingDefaults(num_frames=2, height=8, width=8, steps=3)

    def __init__(self) -> None:
        self.stage_hook = None
        self.denoiser = nn.Linear(8, 8)
        self.decoder = nn.Linear(8, 16)
        self.calls = 0

    def sample(self, *, num_frames, height, width, steps, generator, guidance_scale=None, **_):
        self.calls += 1
        b = len(generator)
        x = torch.randn(b, 8)
        with stage(self.stage_hook, "denoiser"):
            for _ in range(steps):
                x = self.denoiser(x)
        with stage(self.stage_hook, "vae_decoder"):
            x = self.decoder(x)
        return torch.zeros(b, num_frames, 3, height, width, dtype=torch.uint8)

    def cost_stages(self, *, num_frames, height, width, steps):
        return [
            CostStage("denoiser", self.denoiser, lambda b: {"input": torch.empty(b, 8)}, calls=steps,
                      guidance_passes=2),
            CostStage("vae_decoder", self.decoder, lambda b: {"input": torch.empty(b, 8)}, calls=1,
                      paper_convention=False),
        ]


def test_generator_cost_paper_and_true_columns():
    cost = count_generator_cost(FakeGenerator(), 2, 8, 8, steps=5, batch_size=4)
    den, dec = cost.stages
    assert den.macs_per_call == 64 and dec.macs_per_call == 128
    assert cost.paper_tmacs * 1e12 == pytest.approx(64 * 5)  # conditional pass, batch 1, no decoder
    assert cost.true_tflops * 1e12 == pytest.approx(2 * (64 * 5 * 2 + 128) * 4)
    assert cost.params == 8 * 8 + 8 + 8 * 16 + 16
    assert cost.paper_params == 8 * 8 + 8


def test_training_stages_prefer_the_generators_own_description():
    from cmdbench.metrics.efficiency import training_stages

    gen = FakeGenerator()
    stages, source = training_stages(gen, num_frames=2, height=8, width=8)
    assert [s.name for s in stages] == ["denoiser"] and source == "cost_stages (denoisers only)"
    assert stages[0].calls == 1  # one step: one forward

    class WithTraining(FakeGenerator):
        def training_cost_stages(self, *, num_frames, height, width):
            return [CostStage("decoder", self.decoder, lambda b: {"input": torch.empty(b, 8)}, calls=1)]

    stages, source = training_stages(WithTraining(), num_frames=2, height=8, width=8)
    assert [s.name for s in stages] == ["decoder"] and source == "training_cost_stages"


def test_latency_keeps_raw_values_and_honours_min_repeats():
    calls = []
    t = latency(lambda: calls.append(1), TimingConfig(warmup=2, min_repeats=5, max_repeats=50))
    assert len(t.raw) == 5 and len(calls) == 7 and t.warmup == 2 and t.method == "perf_counter"
    assert t.min <= t.median and t.iqr >= 0
    t = latency(lambda: calls.append(1), TimingConfig(warmup=0, min_repeats=1, min_seconds=0.02, max_repeats=10**6))
    assert sum(t.raw) >= 0.02 and len(t.raw) >= 1
    t = latency(lambda: None, TimingConfig(warmup=0, min_repeats=2, min_seconds=1e9, max_repeats=3))
    assert len(t.raw) == 3  # max_repeats caps the min_seconds rule


def test_cpu_peak_rss_sees_a_large_allocation():
    with PeakMemory("cpu") as mem:
        mem.checkpoint()
        base = mem.checkpoint()
        x = torch.ones(64 * 2**20 // 4)  # 64 MiB
        del x
        peak = mem.checkpoint()
    assert mem.label == "cpu_peak_rss"
    assert peak - base >= 60 * 2**20


def test_stage_recorder_nests_and_sums():
    rec = StageRecorder()
    rec("denoiser", "start")
    rec("content", "start")
    rec("content", "end")
    rec("content", "start")
    rec("content", "end")
    rec("denoiser", "end")
    assert set(rec.times) == {"denoiser", "content"}
    assert rec.times["denoiser"] >= rec.times["content"] >= 0
    with pytest.raises(RuntimeError, match="ended without starting"):
        rec("decoder", "end")


def test_measure_sampling_splits_stages_and_excludes_the_vae_decoder():
    gen = FakeGenerator()
    m = measure_sampling(gen, num_frames=2, height=8, width=8, steps=3, batch_size=2,
                         timing=TimingConfig(warmup=1, min_repeats=2))
    assert m.status == "ok" and gen.calls == 3 and len(m.time.raw) == 2
    assert set(m.stage_times) == {"denoiser", "vae_decoder"}
    assert m.time_excl == pytest.approx(m.time.median - m.stage_times["vae_decoder"])
    assert m.peak_memory > 0 and m.memory_label == "cpu_peak_rss"
    assert gen.stage_hook is None  # restored


def test_out_of_memory_is_recorded_not_raised():
    class Exhausted(FakeGenerator):
        def sample(self, **kw):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    m = measure_sampling(Exhausted(), num_frames=2, height=8, width=8, steps=1)
    assert m.status == "oom" and "out of memory" in m.error and m.time is None

    class Broken(FakeGenerator):
        def sample(self, **kw):
            raise ValueError("a real bug")

    with pytest.raises(ValueError, match="a real bug"):
        measure_sampling(Broken(), num_frames=2, height=8, width=8, steps=1)
