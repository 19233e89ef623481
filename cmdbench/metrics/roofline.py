"""Predicted GPU time of sampling: a per-op roofline over the same fake-tensor run as the memory prediction.

Model
    Every aten op a stage runs (on fake CUDA tensors, attention through the fused kernel a GPU would pick:
    :mod:`cmdbench.metrics.memory_prediction`) costs ``max(FLOPs / peak, bytes / bandwidth)`` on a named
    GPU; a stage's time per call is the sum over its ops, its time per video that x calls / batch size.
    FLOPs come from ``torch.utils.flop_counter``'s formulas (``flop_registry``: matmuls, convolutions,
    fused attention, forward and backward); ops without a formula (elementwise, norms, copies) count no
    FLOPs and are bound by memory traffic. Bytes moved = sizes of the op's tensor inputs + outputs; ops
    whose outputs only alias their inputs (views, reshapes) move nothing.
    Peaks: tensor-core fp16/bf16 for FLOP-counted ops in those dtypes; in float32, convolutions run on
    TF32 tensor cores and matmuls on the fp32 units (PyTorch's defaults: ``torch.backends.cudnn.allow_tf32
    = True``, ``torch.backends.cuda.matmul.allow_tf32 = False``; both are arguments here).

What a roofline leaves out (why it is a lower bound)
    Kernel launch latency and per-kernel fixed costs (~5-10 us each on an A100; networks with many small
    kernels, e.g. CMD's 64x128 content UNet and 512-token DiT, run far below both roofs), achieved versus
    peak throughput (large fp16 GEMMs/convolutions reach ~60-80% of the datasheet peak), cache reuse
    between ops, and the host side (Python, schedulers, text tokenisation). ``ops`` per stage is recorded so
    that launch overheads can be judged beside the prediction.

GPU specs are data (``gpu_specs.csv`` beside this file: datasheet peaks, dense, with their source URLs;
for Hopper the datasheets print the with-sparsity figure, halved here for dense).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

from cmdbench.interfaces import CostStage
from cmdbench.metrics.memory_prediction import MemoryPrediction, predict_sampling_memory

GPU_SPECS = Path(__file__).with_name("gpu_specs.csv")
GPU_COLUMNS = ("name", "compute_capability", "fp16_bf16_dense_tflops", "tf32_dense_tflops", "fp32_tflops",
               "memory_bandwidth_tbs", "memory_gb", "source")
DEFAULT_GPUS = ("A100-40GB", "H100-SXM", "H200")

# Compute classes of an op.
TENSOR_LOW = 0  # fp16/bf16 on tensor cores
TENSOR_TF32 = 1  # float32 on TF32 tensor cores
FP32 = 2  # float32 on the CUDA cores
MEMORY = 3  # no FLOP formula: bound by bytes only
_LOW = (torch.float16, torch.bfloat16)
_CONV_OPS = {"aten.convolution", "aten._convolution", "aten.cudnn_convolution", "aten.convolution_overrideable",
             "aten._slow_conv2d_forward", "aten.convolution_backward"}


# --- GPU specs -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GPUSpec:
    """Datasheet peaks of one GPU (dense, no sparsity). TFLOP/s = 1e12 FLOP/s; TB/s = 1e12 bytes/s."""

    name: str
    compute_capability: float
    fp16_bf16_dense_tflops: float
    tf32_dense_tflops: float
    fp32_tflops: float
    memory_bandwidth_tbs: float
    memory_gb: float
    source: str

    def peak_flops(self, kind: int) -> float:
        """FLOP/s of a compute class (``TENSOR_LOW``, ``TENSOR_TF32``, ``FP32``)."""
        tflops = {TENSOR_LOW: self.fp16_bf16_dense_tflops, TENSOR_TF32: self.tf32_dense_tflops,
                  FP32: self.fp32_tflops}[kind]
        return tflops * 1e12

    @property
    def bandwidth(self) -> float:
        """Bytes/s."""
        return self.memory_bandwidth_tbs * 1e12


def load_gpu_specs(path: str | Path = GPU_SPECS) -> dict[str, GPUSpec]:
    """GPU name -> :class:`GPUSpec` from a CSV with :data:`GPU_COLUMNS`; a bad file or value raises
    ``ValueError`` naming the file, row and column."""
    path = Path(path)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in GPU_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing columns {missing}; expected {list(GPU_COLUMNS)}")
        specs = {}
        for i, row in enumerate(reader, start=2):
            values: dict[str, Any] = {"name": row["name"].strip(), "source": row["source"].strip()}
            for col in GPU_COLUMNS[1:-1]:
                try:
                    values[col] = float(row[col])
                except (TypeError, ValueError):
                    raise ValueError(f"{path}: line {i} ({values['name']!r}) column {col}={row[col]!r} is not a "
                                     "number") from None
                if values[col] <= 0:
                    raise ValueError(f"{path}: line {i} ({values['name']!r}) column {col}={row[col]!r}; "
                                     "allowed: a positive number")
            if not values["source"].startswith("http"):
                raise ValueError(f"{path}: line {i} ({values['name']!r}) has no source URL")
            if values["name"] in specs:
                raise ValueError(f"{path}: line {i} repeats GPU {values['name']!r}")
            specs[values["name"]] = GPUSpec(**values)
    return specs


def get_gpu(name: str, path: str | Path = GPU_SPECS) -> GPUSpec:
    specs = load_gpu_specs(path)
    if name not in specs:
        raise ValueError(f"unknown GPU {name!r}; {path} lists {sorted(specs)}")
    return specs[name]


# --- Counting ops --------------------------------------------------------------------------------------------


def _tensors(tree: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _writes(func: Any) -> bool:
    return any(a.alias_info is not None and a.alias_info.is_write for a in func._schema.arguments)


def op_kind(name: str, flops: int, inputs: Sequence[torch.Tensor], *, tf32_conv: bool = True,
            tf32_matmul: bool = False) -> int:
    """Compute class of an op from its FLOPs, name and input dtypes."""
    if flops == 0:
        return MEMORY
    floating = [t.dtype for t in inputs if t.is_floating_point()]
    if any(d in _LOW for d in floating):
        return TENSOR_LOW
    tf32 = tf32_conv if name in _CONV_OPS else tf32_matmul
    return TENSOR_TF32 if tf32 else FP32


class OpCosts(TorchDispatchMode):
    """FLOPs (2 * MAC), bytes moved and compute class of every op run under it.

    ``flops``, ``nbytes``, ``kinds``: one entry per op that moves data; ``names``: aten op names.
    """

    def __init__(self, *, tf32_conv: bool = True, tf32_matmul: bool = False) -> None:
        super().__init__()
        self.tf32_conv = tf32_conv
        self.tf32_matmul = tf32_matmul
        self.names: list[str] = []
        self.flops: list[int] = []
        self.nbytes: list[int] = []
        self.kinds: list[int] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        outs = _tensors(out)
        if not outs:  # metadata queries (prim.device, sym sizes)
            return out
        ins = _tensors((args, kwargs))
        in_storages = {id(t.untyped_storage()) for t in ins}
        aliasing = all(id(t.untyped_storage()) in in_storages for t in outs)
        if func.is_view or (aliasing and not _writes(func)):
            return out
        formula = flop_registry.get(func.overloadpacket)
        flops = int(formula(*args, **kwargs, out_val=out)) if formula is not None else 0
        name = str(func.overloadpacket)
        self.names.append(name)
        self.flops.append(flops)
        self.nbytes.append(sum(_nbytes(t) for t in ins) + sum(_nbytes(t) for t in outs))
        self.kinds.append(op_kind(name, flops, ins, tf32_conv=self.tf32_conv, tf32_matmul=self.tf32_matmul))
        return out


def roofline_time(flops: np.ndarray, nbytes: np.ndarray, kinds: np.ndarray, gpu: GPUSpec) -> float:
    """Sum over ops of ``max(flops / peak(kind), bytes / bandwidth)``, in seconds."""
    peaks = np.array([gpu.peak_flops(TENSOR_LOW), gpu.peak_flops(TENSOR_TF32), gpu.peak_flops(FP32), np.inf])
    return float(np.maximum(flops / peaks[kinds], nbytes / gpu.bandwidth).sum())


@dataclass(frozen=True)
class StageOps:
    """The ops of one call of a stage at ``batch`` (= batch size x guidance passes), ``calls`` per video."""

    stage: str
    calls: int
    batch: int
    batch_size: int
    flops: np.ndarray = field(repr=False)
    nbytes: np.ndarray = field(repr=False)
    kinds: np.ndarray = field(repr=False)

    @property
    def ops(self) -> int:
        return len(self.flops)

    def time_per_call(self, gpu: GPUSpec) -> float:
        return roofline_time(self.flops, self.nbytes, self.kinds, gpu)

    def time_per_video(self, gpu: GPUSpec) -> float:
        return self.time_per_call(gpu) * self.calls / self.batch_size


@dataclass(frozen=True)
class TimePrediction:
    """Roofline time of one ``sample()`` setting, per stage; seconds per video."""

    generator: str
    num_frames: int
    height: int
    width: int
    steps: int
    batch_size: int
    dtype: str
    stages: tuple[StageOps, ...]

    def stage_time(self, gpu: GPUSpec, stage: str) -> float:
        return next(s.time_per_video(gpu) for s in self.stages if s.stage == stage)

    def time(self, gpu: GPUSpec, exclude: Sequence[str] = ()) -> float:
        return sum(s.time_per_video(gpu) for s in self.stages if s.stage not in exclude)


def predict_sampling_cost(
    generator: Any,
    *,
    num_frames: int,
    height: int,
    width: int,
    steps: int,
    batch_size: int = 1,
    dtype: str = "float16",
    sdpa: str = "auto",
    compute_capability: float = 8.0,
    tf32_conv: bool = True,
    tf32_matmul: bool = False,
    name: str | None = None,
) -> tuple[MemoryPrediction, TimePrediction]:
    """Memory and roofline time of ``generator.sample`` from one fake run (generator built on meta)."""
    counters: dict[str, tuple[CostStage, OpCosts]] = {}

    def observe(stage: CostStage) -> list[TorchDispatchMode]:
        counters[stage.name] = (stage, OpCosts(tf32_conv=tf32_conv, tf32_matmul=tf32_matmul))
        return [counters[stage.name][1]]

    memory = predict_sampling_memory(
        generator, num_frames=num_frames, height=height, width=width, steps=steps, batch_size=batch_size, dtype=dtype,
        sdpa=sdpa, compute_capability=compute_capability, name=name, observers=observe)
    stages = []
    for st_name, (st, c) in counters.items():
        stages.append(StageOps(stage=st_name, calls=st.calls, batch=batch_size * st.guidance_passes,
                               batch_size=batch_size, flops=np.asarray(c.flops, dtype=np.float64),
                               nbytes=np.asarray(c.nbytes, dtype=np.float64),
                               kinds=np.asarray(c.kinds, dtype=np.int64)))
    timing = TimePrediction(generator=memory.generator, num_frames=num_frames, height=height, width=width,
                            steps=steps, batch_size=batch_size, dtype=dtype, stages=tuple(stages))
    return memory, timing

