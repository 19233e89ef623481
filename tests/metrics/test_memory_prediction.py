"""Predicted CUDA memory on fake tensors: hand computations on tiny networks, the allocator's arithmetic,
the attention backend, dtype and batch scaling, the training step, and parity with torch's MemTracker."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from cmdbench.interfaces import CostStage, GeneratorSpec, UnsupportedSettingError
from cmdbench.metrics.memory_prediction import (
    CudaAutocast,
    FusedAttention,
    LiveMemory,
    allocated_size,
    cublas_workspace_bytes,
    fake_parameters,
    predict_sampling_memory,
    predict_training_memory,
    sdpa_backend,
    segment_size,
)

MIB = 2**20
BLOCK = 512


def rounded(nbytes: int) -> int:
    """The allocator's block size, written out independently of the module: ceil to 512, at least 512."""
    return 0 if nbytes == 0 else max(BLOCK, -(-nbytes // BLOCK) * BLOCK)


class ChainGenerator:
    """A 'generator' whose only stage is a bias-free Linear chain (built on meta, like the real ones).

    dims: widths d0 -> d1 -> ... ; make_inputs(b): x of shape (b, d0) in the weights' dtype.
    """

    name = "chain"

    def __init__(self, dims: tuple[int, ...], *, passes: int = 1, refuse_frames: int | None = None) -> None:
        with torch.device("meta"):
            self.net = nn.Sequential(*[nn.Linear(a, b, bias=False) for a, b in zip(dims, dims[1:], strict=False)])
        self.dims = dims
        self.passes = passes
        self.refuse_frames = refuse_frames

    def cost_stages(self, *, num_frames: int, height: int, width: int, steps: int) -> list[CostStage]:
        if num_frames == self.refuse_frames:
            raise UnsupportedSettingError(f"chain: num_frames={num_frames} refused")
        p = next(self.net.parameters())
        return [CostStage("denoiser", self.net,
                          lambda b: {"input": torch.empty(b, self.dims[0], device=p.device, dtype=p.dtype)},
                          calls=steps, guidance_passes=self.passes)]


def chain_peak(dims: tuple[int, ...], batch: int, elem: int) -> tuple[int, int]:
    """(weights, stage peak) of inference through the chain, by hand.

    The caller holds the input a0 for the whole call; layer i allocates a_i while a_{i-1} is alive,
    then a_{i-1} (i >= 2) dies. Peak = weights + max(a0 + a1, a0 + a_{i-1} + a_i for i >= 2).
    """
    weights = sum(rounded(a * b * elem) for a, b in zip(dims, dims[1:], strict=False))
    acts = [rounded(batch * d * elem) for d in dims]
    live = [acts[0] + acts[1]] + [acts[0] + acts[i - 1] + acts[i] for i in range(2, len(acts))]
    return weights, weights + max(live)


# --- the allocator's arithmetic -------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "want"), [(0, 0), (1, 512), (512, 512), (513, 1024), (MIB, MIB), (MIB + 1, MIB + 512)])
def test_allocated_size_rounds_to_512_byte_blocks(n, want):
    assert allocated_size(n) == want


@pytest.mark.parametrize(("n", "want"), [
    (1, 2 * MIB), (MIB, 2 * MIB),  # small pool: 2 MiB segments
    (MIB + 1, 20 * MIB), (10 * MIB - 512, 20 * MIB),  # 1-10 MiB: 20 MiB segments
    (10 * MIB, 10 * MIB), (11 * MIB + 1, 12 * MIB),  # large: own segment rounded up to 2 MiB
])
def test_segment_size_follows_the_caching_allocator(n, want):
    assert segment_size(n) == want


def test_cublas_workspace_sizes_follow_pytorch_defaults():
    lt = MIB  # cuBLASLt: 1024 KiB
    assert cublas_workspace_bytes(8.0) == 4096 * 1024 * 2 + 16 * 1024 * 8 + lt  # A100: ":4096:2:16:8"
    assert cublas_workspace_bytes(9.0) == 32 * MIB + lt  # Hopper: 32 MiB


# --- the live-storage tracker ---------------------------------------------------------------------------


def test_tracker_counts_views_once_and_releases_dead_storages():
    live = LiveMemory("cuda")
    with FakeTensorMode(), live:
        a = torch.empty(1000, device="cuda")  # 4000 B -> 4096
        v = a.view(10, 100).t()  # views share the storage
        b = a * 2
        assert live.current == 2 * 4096
        del b
        assert live.current == 4096
        del a, v
        assert live.current == 0
    assert live.peak == 2 * 4096


def test_tracker_ignores_other_devices_and_optionally_scalars():
    live = LiveMemory("cuda", scalars=False)
    with FakeTensorMode(), live:
        _cpu = torch.empty(1000)
        _scalar = torch.zeros((), device="cuda")
        _kept = torch.empty(3, device="cuda")
        assert live.current == 512


def test_reserved_estimate_packs_small_blocks_into_2mib_segments():
    live = LiveMemory("cuda")
    with FakeTensorMode(), live:
        small = [torch.empty(100, device="cuda") for _ in range(5)]  # 5 x 512 B -> one 2 MiB segment
        big = torch.empty(11 * MIB // 4 + 1, device="cuda")  # 11 MiB + 4 B -> 12 MiB segment
        assert live.reserved() == 2 * MIB + 12 * MIB
        del small, big


def test_tracker_matches_torch_memtracker_on_a_fake_cuda_unet():
    """Parity with an independent tracker (torch.distributed._tools.mem_tracker) on a diffusers UNet."""
    from diffusers import UNet2DConditionModel
    from torch.distributed._tools.mem_tracker import MemTracker

    with torch.device("meta"):
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, attention_head_dim=8,
            cross_attention_dim=32, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), sample_size=16)
    live, mt = LiveMemory("cuda"), MemTracker()
    with FakeTensorMode(), mt, live:
        fake_parameters(unet, "cuda", torch.float16, requires_grad=True)  # MemTracker hooks need grads
        with torch.no_grad(), FusedAttention():
            x = torch.empty(2, 4, 32, 32, device="cuda", dtype=torch.float16)
            ctx = torch.empty(2, 7, 32, device="cuda", dtype=torch.float16)
            del unet(x, 10, ctx).sample
    theirs = mt.get_tracker_snapshot("peak")[torch.device("cuda", 0)]["Total"]
    assert live.peak == theirs
    assert live.peak > 2 * sum(p.numel() for p in unet.parameters())


# --- sampling prediction --------------------------------------------------------------------------------


DIMS = (129, 1000, 257, 3000, 65)  # sizes off the 512-byte grid, so rounding matters


def test_linear_chain_peak_equals_the_hand_computation():
    pred = predict_sampling_memory(ChainGenerator(DIMS), num_frames=1, height=1, width=1, batch_size=3,
                                   dtype="float32", compute_capability=8.0)
    weights, peak = chain_peak(DIMS, 3, 4)
    assert pred.weights == weights
    assert pred.stages[0].peak == peak
    assert pred.stages[0].inputs == rounded(3 * DIMS[0] * 4)
    assert pred.peak == peak + cublas_workspace_bytes(8.0)
    assert pred.stage_peak("denoiser") == pred.peak
    h100 = predict_sampling_memory(ChainGenerator(DIMS), num_frames=1, height=1, width=1, batch_size=3,
                                   dtype="float32", compute_capability=9.0)
    assert h100.peak - pred.peak == 32 * MIB - (4096 * 1024 * 2 + 16 * 1024 * 8)


def test_guidance_passes_are_batched_into_one_call():
    pred = predict_sampling_memory(ChainGenerator(DIMS, passes=2), num_frames=1, height=1, width=1,
                                   batch_size=3, dtype="float32")
    assert pred.stages[0].batch == 6
    assert pred.stages[0].peak == chain_peak(DIMS, 6, 4)[1]


ALIGNED = (256, 512, 1024, 256)  # every tensor a multiple of 1 KiB in fp32 at batch 1


def test_half_precision_halves_weights_and_activations():
    full = predict_sampling_memory(ChainGenerator(ALIGNED), num_frames=1, height=1, width=1, dtype="float32")
    half = predict_sampling_memory(ChainGenerator(ALIGNED), num_frames=1, height=1, width=1, dtype="float16")
    assert half.weights * 2 == full.weights
    assert half.stages[0].activations * 2 == full.stages[0].activations


def test_activations_scale_with_the_batch_and_weights_do_not():
    one = predict_sampling_memory(ChainGenerator(ALIGNED), num_frames=1, height=1, width=1, batch_size=1)
    four = predict_sampling_memory(ChainGenerator(ALIGNED), num_frames=1, height=1, width=1, batch_size=4)
    assert four.weights == one.weights
    assert four.stages[0].activations == 4 * one.stages[0].activations


class AttentionGenerator:
    """One SDPA call on q, k, v of shape (batch, H, S, D)."""

    name = "attention"

    def __init__(self, heads: int, seq: int, dim: int, mask: bool = False) -> None:
        with torch.device("meta"):
            self.net = _Attention()
        self.shape = (heads, seq, dim)
        self.mask = mask

    def cost_stages(self, *, num_frames: int, height: int, width: int, steps: int) -> list[CostStage]:
        p = next(self.net.parameters())

        def inputs(b: int) -> dict:
            qkv = {n: torch.empty(b, *self.shape, device=p.device, dtype=p.dtype) for n in ("q", "k", "v")}
            if self.mask:
                qkv["mask"] = torch.ones(b, 1, self.shape[1], self.shape[1], device=p.device, dtype=torch.bool)
            return qkv

        return [CostStage("attention", self.net, inputs, calls=steps)]


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.empty(1))

    def forward(self, q, k, v, mask=None):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def test_fused_attention_keeps_no_score_matrix_and_math_keeps_two():
    """Math SDPA materialises the (S x S) scores and their softmax in float32; the memory-efficient kernel
    keeps only its output (and two 512-byte RNG scalars); both keep one (S x D) tensor besides."""
    heads, seq, dim = 2, 256, 8
    preds = {b: predict_sampling_memory(AttentionGenerator(heads, seq, dim), num_frames=1, height=1, width=1,
                                        dtype="float32", sdpa=b) for b in ("math", "efficient")}
    score = heads * seq * seq * 4
    assert preds["math"].stages[0].attention == {"math": 1}
    assert preds["efficient"].stages[0].attention == {"efficient": 1}
    assert preds["math"].peak - preds["efficient"].peak == 2 * score - 2 * BLOCK


def test_auto_backend_is_flash_in_half_precision_and_never_the_math_path():
    big = AttentionGenerator(8, 4096, 64)
    auto = predict_sampling_memory(big, num_frames=1, height=1, width=1, dtype="float16")
    assert auto.stages[0].attention == {"flash": 1}
    scores = 8 * 4096 * 4096 * 2
    assert auto.stages[0].activations < scores / 8  # far below one score matrix


def test_sdpa_backend_choice():
    with FakeTensorMode():
        h = torch.empty(1, 2, 16, 64, device="cuda", dtype=torch.float16)
        f = torch.empty(1, 2, 16, 64, device="cuda")
        big = torch.empty(1, 2, 16, 512, device="cuda", dtype=torch.float16)
        three_d = torch.empty(2, 16, 64, device="cuda", dtype=torch.float16)
        mask = torch.ones(1, 1, 16, 16, device="cuda", dtype=torch.bool)
        assert sdpa_backend(h, h, h, None) == "flash"
        assert sdpa_backend(h, h, h, mask) == "efficient"
        assert sdpa_backend(f, f, f, None) == "efficient"
        assert sdpa_backend(big, big, big, None) == "efficient"  # head dim > 256
        assert sdpa_backend(three_d, three_d, three_d, None) == "math"
        with pytest.raises(ValueError, match="flash attention cannot run"):
            sdpa_backend(f, f, f, None, "flash")
        with pytest.raises(ValueError, match="allowed"):
            sdpa_backend(h, h, h, None, "xformers")


def test_masked_attention_runs_the_efficient_kernel_with_an_additive_bias():
    pred = predict_sampling_memory(AttentionGenerator(2, 64, 8, mask=True), num_frames=1, height=1, width=1,
                                   dtype="float16")
    assert pred.stages[0].attention == {"efficient": 1}


def test_per_stage_backend_and_bad_arguments():
    gen = AttentionGenerator(2, 64, 8)
    pred = predict_sampling_memory(gen, num_frames=1, height=1, width=1, dtype="float32",
                                   sdpa={"attention": "math"})
    assert pred.stages[0].attention == {"math": 1}
    with pytest.raises(ValueError, match="batch_size"):
        predict_sampling_memory(AttentionGenerator(2, 64, 8), num_frames=1, height=1, width=1, batch_size=0)
    with pytest.raises(ValueError, match="dtype"):
        predict_sampling_memory(AttentionGenerator(2, 64, 8), num_frames=1, height=1, width=1, dtype="int8")
    with pytest.raises(UnsupportedSettingError):
        predict_sampling_memory(ChainGenerator(DIMS, refuse_frames=8), num_frames=8, height=1, width=1)


def test_registered_tiny_generator_is_predicted_per_stage():
    from cmdbench.registry import GENERATORS, load_plugins

    load_plugins()
    gen = GENERATORS.get("tiny-unet3d")(GeneratorSpec(device="meta", tiny=True))
    d = gen.defaults
    pred = predict_sampling_memory(gen, num_frames=d.num_frames, height=d.height, width=d.width)
    names = [s.stage for s in pred.stages]
    assert "denoiser" in names
    params = sum(p.numel() for s in gen.cost_stages(num_frames=d.num_frames, height=d.height, width=d.width,
                                                    steps=1) for p in s.module.parameters())
    assert pred.weights >= 2 * params  # fp16 weights, each tensor rounded up
    assert pred.peak_excluding(names) == pred.weights + pred.workspace
    assert all(s.peak >= pred.weights for s in pred.stages)


# --- autocast and training ------------------------------------------------------------------------------


def test_cuda_autocast_policy_and_weight_cache():
    with FakeTensorMode():
        w = nn.Parameter(torch.empty(8, 8))
        x = torch.empty(4, 8)
        with CudaAutocast(torch.float16) as ac:
            y = F.linear(x, w)
            z = F.group_norm(y.view(4, 8, 1), 2)
            s = torch.softmax(y, -1)
            e = torch.relu(y)
            F.linear(x, w)
            assert len(ac._cache) == 1  # the weight's fp16 copy is made once
        assert (y.dtype, z.dtype, s.dtype, e.dtype) == (torch.float16, torch.float32, torch.float32, torch.float16)


def test_training_forward_peak_equals_the_hand_computation():
    """fp32, no autocast: forward keeps every activation for backward, plus the loss target."""
    dims = (256, 512, 1024, 256)
    batch = 2
    pred = predict_training_memory(ChainGenerator(dims), "denoiser", num_frames=1, height=1, width=1,
                                   batch_size=batch, precision="fp32")
    weights = sum(rounded(a * b * 4) for a, b in zip(dims, dims[1:], strict=False))
    acts = sum(rounded(batch * d * 4) for d in dims)
    target = rounded(batch * dims[-1] * 4)
    assert pred.weights == weights
    assert pred.gradients == weights
    assert pred.optimizer_states == 2 * weights  # Adam: exp_avg and exp_avg_sq
    assert pred.phase_peaks["forward"] == weights + 2 * weights + acts + target
    assert pred.peak >= weights + 2 * weights + weights  # weights, moments and gradients at once
    ema = predict_training_memory(ChainGenerator(dims), "denoiser", num_frames=1, height=1, width=1,
                                  batch_size=batch, precision="fp32", ema=True)
    assert ema.phase_peaks["forward"] - pred.phase_peaks["forward"] == weights


def test_mixed_precision_keeps_float32_weights_and_half_activations():
    dims = (256, 512, 1024, 256)
    amp = predict_training_memory(ChainGenerator(dims), "denoiser", num_frames=1, height=1, width=1,
                                  batch_size=2, precision="amp-fp16")
    pure = predict_training_memory(ChainGenerator(dims), "denoiser", num_frames=1, height=1, width=1,
                                   batch_size=2, precision="fp16")
    assert amp.weights == 2 * pure.weights
    assert amp.optimizer_states == 2 * amp.weights
    # autocast: fp16 copies of the weights are saved for backward beside the fp32 masters
    assert amp.phase_peaks["forward"] > 3 * amp.weights + pure.weights
    with pytest.raises(ValueError, match="precision"):
        predict_training_memory(ChainGenerator(dims), "denoiser", num_frames=1, height=1, width=1, precision="int8")
    with pytest.raises(ValueError, match="trains no stage"):
        predict_training_memory(ChainGenerator(dims), "motion", num_frames=1, height=1, width=1)


def test_rounding_formula_is_not_a_plain_byte_count():
    # a chain whose tensors are all below 512 bytes: the hand peak is all blocks, not bytes
    dims = (3, 5, 7)
    pred = predict_sampling_memory(ChainGenerator(dims), num_frames=1, height=1, width=1, dtype="float32")
    assert pred.stages[0].peak == 2 * BLOCK + 3 * BLOCK  # two weight blocks + three live activation blocks


def test_prediction_puts_the_meta_weights_back_so_one_build_serves_many_settings():
    gen = ChainGenerator(DIMS)
    before = [id(p) for p in gen.net.parameters()]
    first = predict_sampling_memory(gen, num_frames=1, height=1, width=1, batch_size=3, dtype="float32")
    assert [id(p) for p in gen.net.parameters()] == before
    assert all(p.device.type == "meta" for p in gen.net.parameters())
    again = predict_sampling_memory(gen, num_frames=1, height=1, width=1, batch_size=3, dtype="float32")
    assert again.stages == first.stages
    predict_training_memory(gen, "denoiser", num_frames=1, height=1, width=1, precision="fp32")
    assert [id(p) for p in gen.net.parameters()] == before
