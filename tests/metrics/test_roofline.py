"""Roofline time: per-op FLOPs/bytes on fake tensors, the GPU spec table, and per-stage sums."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from cmdbench.interfaces import CostStage
from cmdbench.metrics.roofline import (
    FP32,
    GPU_COLUMNS,
    GPU_SPECS,
    MEMORY,
    TENSOR_LOW,
    TENSOR_TF32,
    OpCosts,
    get_gpu,
    load_gpu_specs,
    predict_sampling_cost,
    roofline_time,
)


def run_ops(fn, *shapes, dtype=torch.float16, **kw) -> OpCosts:
    with FakeTensorMode():
        xs = [torch.empty(s, device="cuda", dtype=dtype) for s in shapes]
        with OpCosts(**kw) as c:
            fn(*xs)
    return c


def test_single_matmul_time_is_the_roofline_of_the_spec_table():
    m, k, n = 4096, 8192, 2048
    c = run_ops(torch.mm, (m, k), (k, n))
    assert c.names == ["aten.mm"]
    assert c.flops == [2 * m * k * n]
    assert c.nbytes == [2 * (m * k + k * n + m * n)]
    assert c.kinds == [TENSOR_LOW]
    for name, gpu in load_gpu_specs().items():
        want = max(2 * m * k * n / (gpu.fp16_bf16_dense_tflops * 1e12),
                   2 * (m * k + k * n + m * n) / (gpu.memory_bandwidth_tbs * 1e12))
        got = roofline_time(*(torch.tensor(v).numpy() for v in (c.flops, c.nbytes, c.kinds)), gpu)
        assert got == pytest.approx(want, rel=1e-12), name


def test_a_skinny_matmul_is_bandwidth_bound():
    m, k, n = 1, 8192, 8192  # a matrix-vector product: 2 FLOPs per 2 bytes of weight
    c = run_ops(torch.mm, (m, k), (k, n))
    a100 = get_gpu("A100-40GB")
    got = roofline_time(*(torch.tensor(v).numpy() for v in (c.flops, c.nbytes, c.kinds)), a100)
    assert got == pytest.approx(2 * (m * k + k * n + m * n) / 1.555e12, rel=1e-12)


def test_float32_matmuls_use_fp32_units_and_convolutions_tf32_by_default():
    mm = run_ops(torch.mm, (64, 64), (64, 64), dtype=torch.float32)
    conv = run_ops(lambda x, w: F.conv2d(x, w), (1, 8, 16, 16), (8, 8, 3, 3), dtype=torch.float32)
    assert mm.kinds == [FP32]
    assert conv.kinds == [TENSOR_TF32]
    strict = run_ops(lambda x, w: F.conv2d(x, w), (1, 8, 16, 16), (8, 8, 3, 3), dtype=torch.float32,
                     tf32_conv=False)
    assert strict.kinds == [FP32]


def test_views_move_nothing_and_elementwise_ops_move_their_tensors():
    c = run_ops(lambda x: x.view(8, 128).t().unsqueeze(0).expand(2, 128, 8)[0].add(1.0), (1024,))
    # view / t / unsqueeze / expand / select: no op recorded; add: read + write 1024 halves
    assert c.names == ["aten.add"]
    assert c.nbytes == [2 * 1024 * 2]
    assert c.kinds == [MEMORY]
    copy = run_ops(lambda x: x.view(32, 32).t().contiguous(), (1024,))
    assert copy.names == ["aten.clone"] and copy.nbytes == [2 * 1024 * 2]


def test_inplace_ops_count_read_and_write():
    c = run_ops(lambda x, y: x.add_(y), (256,), (256,))
    assert c.names == ["aten.add_"]
    assert c.nbytes == [3 * 256 * 2]


def test_fused_attention_flops_come_from_torch_formula():
    from cmdbench.metrics.memory_prediction import FusedAttention

    b, h, s, d = 1, 8, 1024, 64
    with FakeTensorMode():
        q = torch.empty(b, h, s, d, device="cuda", dtype=torch.float16)
        with FusedAttention(), OpCosts() as c:
            F.scaled_dot_product_attention(q, q, q)
    assert c.names == ["aten._scaled_dot_product_flash_attention"]
    assert c.flops == [4 * b * h * s * s * d]  # QK^T and AV, 2 FLOPs per MAC


# --- the spec table -------------------------------------------------------------------------------------


def test_spec_table_holds_datasheet_dense_numbers_with_sources():
    specs = load_gpu_specs()
    assert set(specs) >= {"A100-40GB", "H100-SXM", "H200"}
    a100 = specs["A100-40GB"]
    assert (a100.fp16_bf16_dense_tflops, a100.tf32_dense_tflops, a100.fp32_tflops) == (312, 156, 19.5)
    assert a100.memory_bandwidth_tbs == 1.555 and a100.compute_capability == 8.0
    for name in ("H100-SXM", "H200"):  # datasheet prints 1,979 TFLOPS fp16 *with sparsity*
        assert specs[name].fp16_bf16_dense_tflops == 1979 / 2
        assert specs[name].compute_capability == 9.0
    assert specs["H200"].memory_bandwidth_tbs == 4.8 and specs["H100-SXM"].memory_bandwidth_tbs == 3.35
    assert all(s.source.startswith("https://") for s in specs.values())


def write_specs(tmp_path, rows):
    path = tmp_path / "gpus.csv"
    path.write_text(",".join(GPU_COLUMNS) + "\n" + "\n".join(rows) + "\n")
    return path


def test_bad_spec_files_name_file_line_and_column(tmp_path):
    ok = "X,8.0,100,50,10,1.0,40,https://example.com/x"
    with pytest.raises(ValueError, match=r"line 2 \('Y'\) column fp32_tflops='fast'"):
        load_gpu_specs(write_specs(tmp_path, ["Y,8.0,100,50,fast,1.0,40,https://e.com"]))
    with pytest.raises(ValueError, match="positive"):
        load_gpu_specs(write_specs(tmp_path, ["Y,8.0,100,50,0,1.0,40,https://e.com"]))
    with pytest.raises(ValueError, match="repeats GPU 'X'"):
        load_gpu_specs(write_specs(tmp_path, [ok, ok]))
    with pytest.raises(ValueError, match="no source URL"):
        load_gpu_specs(write_specs(tmp_path, ["Y,8.0,100,50,10,1.0,40,datasheet"]))
    bad = tmp_path / "cols.csv"
    bad.write_text("name,fp16\nX,1\n")
    with pytest.raises(ValueError, match="missing columns"):
        load_gpu_specs(bad)
    with pytest.raises(ValueError, match="unknown GPU 'V100'"):
        get_gpu("V100", GPU_SPECS)


# --- per-stage sums -------------------------------------------------------------------------------------


class MatmulGenerator:
    """Stage 'denoiser': x (b, k) @ W (k, n), ``steps`` calls, 2 guidance passes; stage 'decoder': once."""

    name = "matmul"

    def __init__(self, k: int = 1024, n: int = 4096) -> None:
        with torch.device("meta"):
            self.den = nn.Linear(k, n, bias=False)
            self.dec = nn.Linear(n, k, bias=False)
        self.k, self.n = k, n

    def cost_stages(self, *, num_frames, height, width, steps):
        p = next(self.den.parameters())
        return [
            CostStage("denoiser", self.den, lambda b: {"input": torch.empty(b * 64, self.k, device=p.device,
                                                                             dtype=p.dtype)},
                      calls=steps, guidance_passes=2),
            CostStage("decoder", self.dec, lambda b: {"input": torch.empty(b * 64, self.n, device=p.device,
                                                                            dtype=p.dtype)},
                      calls=1, paper_convention=False),
        ]


def test_stage_time_is_per_call_times_calls_per_video():
    a100 = get_gpu("A100-40GB")
    k, n = 1024, 4096
    _, t = predict_sampling_cost(MatmulGenerator(k, n), num_frames=1, height=1, width=1, steps=10, batch_size=3)
    den = next(s for s in t.stages if s.stage == "denoiser")
    assert den.batch == 6 and den.calls == 10 and den.ops == 1
    rows = 6 * 64
    per_call = max(2 * rows * k * n / 312e12, 2 * (rows * k + k * n + rows * n) / 1.555e12)
    assert t.stage_time(a100, "denoiser") == pytest.approx(per_call * 10 / 3, rel=1e-12)
    rows = 3 * 64
    dec = max(2 * rows * k * n / 312e12, 2 * (rows * k + k * n + rows * n) / 1.555e12) / 3
    assert t.time(a100) == pytest.approx(per_call * 10 / 3 + dec, rel=1e-12)
    assert t.time(a100, exclude=("decoder",)) == pytest.approx(per_call * 10 / 3, rel=1e-12)
    _, t20 = predict_sampling_cost(MatmulGenerator(k, n), num_frames=1, height=1, width=1, steps=20,
                                   batch_size=3)
    assert t20.stage_time(a100, "denoiser") == pytest.approx(2 * t.stage_time(a100, "denoiser"), rel=1e-12)
    assert t20.stage_time(get_gpu("H200"), "denoiser") < t20.stage_time(a100, "denoiser")
