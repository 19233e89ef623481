"""Cost of a generator: FLOPs/MACs on the meta device, parameters, latency, peak memory, per stage.

Counting (``count_flops``)
    ``torch.utils.flop_counter.FlopCounterMode`` over one forward (optionally + backward) of a module,
    normally on the **meta device** (any size, no memory). FlopCounterMode reports FLOPs = 2 * MAC.
    Attention-score products (Q K^T and A V) are counted apart:

    * every ``F.scaled_dot_product_attention`` call is intercepted by a ``TorchFunctionMode`` and
      replaced by a shape-correct stand-in; its cost is added by formula,
      ``Lq * Lk * (d_qk + d_v)`` MACs per (batch, head) (FlopCounterMode would count 0 on real CPU
      tensors and the math decomposition on meta);
    * explicit attention (``torch.bmm`` / ``torch.baddbmm`` / ``einsum`` in hand-written processors)
      lands in FlopCounterMode as ``aten.bmm`` / ``aten.baddbmm`` and is booked as attention too: in
      these networks every batched activation-by-activation product is an attention product (linear
      layers fold to ``addmm`` / ``mm``, convolutions to ``convolution``).

The paper's convention (CMD App. D: fvcore, fp16, xformers; ``reference/baselines.md`` §4.1)
    "TFLOPs" in CMD = what fvcore's ``FlopCountAnalysis`` reports (one multiply-accumulate counted as
    one "flop") for **one conditional denoiser pass per step**, batch 1, SD decoder and text encoder
    excluded. This is the one rule for what counts (``FlopCount.paper_macs``):

    * every matrix product FlopCounterMode counts (linear, convolution, and explicit attention
      written as ``matmul`` / ``bmm`` / ``einsum``: fvcore traces and counts those);
    * fused attention kernels are **not** counted: fvcore cannot see inside xformers, which CMD ran,
      and ``F.scaled_dot_product_attention`` stands for such kernels here (its formula MACs are
      reported apart, in ``attention_macs``);
    * fvcore's per-element estimates for ops that are not products (``FVCORE_ESTIMATES``, the values
      of fvcore/nn/flop_count.py ``_DEFAULT_SUPPORTED_OPS``): group/layer norm 5 per input element
      with an affine, 4 without; nearest upsampling 1 and bilinear 4 per output element; adaptive
      average pooling 1 per input element. Every other op (activations, softmax, additions) counts 0,
      as in fvcore.

    Counted so, ModelScope is 938.97 and LVDM 625.61 TMAC over 50 steps at 512x1024x16, against the
    paper's 939.0 and 625.6. ``paper_tmacs`` is that number; ``true_tflops`` is the real work of
    sampling (2 * MAC of every product incl. all attention, without the per-element estimates, with
    classifier-free guidance passes, text encoder and decoders, at the requested batch size).

Timing and memory
    ``latency`` warms up, then repeats to a minimum count and duration, timing with CUDA events on
    GPU or ``perf_counter`` on CPU; raw values are kept. ``PeakMemory`` reads the CUDA allocator's
    peak (``max_memory_allocated`` after ``reset_peak_memory_stats``) or, on the CPU, the process's
    peak resident set size (``VmHWM`` from ``/proc/self/status``, reset through ``/proc/self/clear_refs``;
    a 2 ms sampling thread where that is not available), labelled ``cpu_peak_rss``. ``StageRecorder``
    is a generator ``stage_hook`` that splits time and peak memory per sampling stage.
"""

from __future__ import annotations

import gc
import math
import re
import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from cmdbench.config import TimingConfig
from cmdbench.interfaces import CostStage, StageEvent, SupportsCost

# FlopCounterMode op names whose FLOPs are attention-score products (explicit attention processors).
ATTENTION_OPS = ("aten.bmm", "aten.baddbmm")
SDPA_KEY = "sdpa (formula)"
_aten = torch.ops.aten


def _per_input_element(scale_affine: int, scale_plain: int, affine_arg: int) -> Callable[..., int]:
    """fvcore's norm estimate: ``numel(input) * (scale_affine if the affine weight is given else scale_plain)``."""

    def formula(*args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        weight = args[affine_arg] if len(args) > affine_arg else None
        return math.prod(args[0]) * (scale_affine if weight is not None else scale_plain)

    return formula


def _per_element(scale: int, *, of_output: bool) -> Callable[..., int]:
    def formula(*args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return scale * math.prod(out_shape if of_output else args[0])

    return formula


# fvcore's estimates for non-product ops, in its MAC unit (fvcore/nn/flop_count.py _DEFAULT_SUPPORTED_OPS,
# jit_handles.norm_flop_counter / elementwise_flop_counter); see the module docstring.
FVCORE_ESTIMATES: dict[Any, Callable[..., int]] = {
    _aten.native_group_norm: _per_input_element(5, 4, affine_arg=1),  # (input, weight, bias, N, C, HxW, ...)
    _aten.native_layer_norm: _per_input_element(5, 4, affine_arg=2),  # (input, normalized_shape, weight, ...)
    _aten.upsample_nearest2d: _per_element(1, of_output=True),
    _aten.upsample_bilinear2d: _per_element(4, of_output=True),
    _aten._adaptive_avg_pool2d: _per_element(1, of_output=False),
}
# FlopCounterMode decomposes an op whose overload it has no formula for (upsampling would become index
# ops), so each estimate is registered for the packet and its overloads.
_ESTIMATE_MAPPING = {
    op: f for packet, f in FVCORE_ESTIMATES.items()
    for op in (packet, *(getattr(packet, name) for name in packet.overloads()))
}
_SDPA_C = getattr(torch._C._nn, "scaled_dot_product_attention", None)
DECODER_STAGES = ("decoder", "vae_decoder")


# --- Counting -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one counted call.

    flops_by_op: FlopCounterMode FLOPs (2 * MAC) per aten op, plus ``SDPA_KEY`` for the intercepted
        ``scaled_dot_product_attention`` calls (their formula, forward and, when counted, backward).
    sdpa_calls: number of intercepted SDPA calls (forward).
    estimates_by_op: fvcore's per-element estimates (``FVCORE_ESTIMATES``, forward) per aten op, in its
        MAC unit; part of ``paper_macs`` only.
    """

    flops_by_op: Mapping[str, int]
    sdpa_calls: int = 0
    estimates_by_op: Mapping[str, int] = field(default_factory=dict)

    @property
    def flops(self) -> int:
        """All FLOPs (2 * MAC), attention included."""
        return int(sum(self.flops_by_op.values()))

    @property
    def macs(self) -> int:
        return self.flops // 2

    @property
    def attention_macs(self) -> int:
        """MACs of attention-score products (Q K^T and A V): SDPA by formula + explicit bmm/baddbmm."""
        keys = (SDPA_KEY, *ATTENTION_OPS)
        return int(sum(v for k, v in self.flops_by_op.items() if k in keys or "scaled_dot_product" in k)) // 2

    @property
    def macs_excl_attention(self) -> int:
        """MACs with every attention-score product excluded (fused and explicit)."""
        return self.macs - self.attention_macs

    @property
    def sdpa_macs(self) -> int:
        """MACs of the fused attention (``F.scaled_dot_product_attention``, by formula)."""
        return int(sum(v for k, v in self.flops_by_op.items() if k == SDPA_KEY or "scaled_dot_product" in k)) // 2

    @property
    def paper_macs(self) -> int:
        """fvcore's count, CMD's convention (module docstring): every product but fused attention, plus
        fvcore's per-element estimates for normalisation and resampling."""
        return self.macs - self.sdpa_macs + int(sum(self.estimates_by_op.values()))


class _SDPAStandIn(torch.autograd.Function):
    """Shape-correct output of attention without computing it; gradients likewise (counting only)."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        ctx.shapes = (q, k, v)
        return q.new_zeros((*q.shape[:-1], v.shape[-1]))  # (..., Lq, d_v)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = ctx.shapes
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)


def sdpa_macs(q_shape: Sequence[int], k_shape: Sequence[int], v_shape: Sequence[int]) -> int:
    """Forward MACs of Q K^T and A V for q (..., Hq, Lq, d_qk), k (..., Hk, Lk, d_qk), v (..., Hk, Lk, d_v).

    Grouped-query attention broadcasts K/V heads over query heads, so the count follows the query's
    batch and head dimensions: ``prod(q.shape[:-2]) * Lq * Lk * (d_qk + d_v)``.
    """
    *lead, lq, dqk = q_shape
    lk, dv = k_shape[-2], v_shape[-1]
    return math.prod(lead) * lq * lk * (dqk + dv)


class CountSDPA(TorchFunctionMode):
    """Intercept ``F.scaled_dot_product_attention``: add its MACs by formula, return a stand-in output.

    backward: also book the backward attention products (dQ, dK, dV need 4 products of the same size,
    i.e. 2x the forward MACs; the recomputation of the scores some kernels do is not counted).
    """

    def __init__(self, *, backward: bool = False) -> None:
        super().__init__()
        self.backward = backward
        self.macs = 0
        self.calls = 0

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention or func is _SDPA_C:
            q, k, v = (args[i] if len(args) > i else kwargs[n] for i, n in enumerate(("query", "key", "value")))
            macs = sdpa_macs(q.shape, k.shape, v.shape)
            self.macs += macs * (3 if self.backward else 1)
            self.calls += 1
            if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
                return _SDPAStandIn.apply(q, k, v)
            return q.new_zeros((*q.shape[:-1], v.shape[-1]))  # (..., Lq, d_v)
        return func(*args, **kwargs)


def _first_tensor(out: Any) -> torch.Tensor:
    """The main output tensor of a module call (tensor, tuple/list, dict or diffusers BaseOutput)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        for item in out:
            try:
                return _first_tensor(item)
            except TypeError:
                continue
    if hasattr(out, "to_tuple"):
        return _first_tensor(out.to_tuple())
    raise TypeError(f"module output of type {type(out).__name__} holds no tensor to differentiate")


def count_flops(
    module: torch.nn.Module,
    inputs: Mapping[str, Any] | Sequence[Any],
    *,
    forward: Callable[..., Any] | None = None,
    backward: bool = False,
) -> FlopCount:
    """Count the FLOPs of ``module(**inputs)`` (mapping) or ``module(*inputs)`` (sequence).

    Runs wherever ``module`` and ``inputs`` live; use the meta device for full-size networks
    (``with torch.device("meta"): net = Net(...)``). ``forward(module, **inputs)`` replaces the call
    when given (e.g. ``lambda m, **kw: m.decode(**kw)``). ``backward=True`` also counts the backward
    pass of ``output.sum()`` (parameter and input gradients; a training step without the optimiser).
    """
    call = forward or (lambda m, *a, **kw: m(*a, **kw))
    args, kwargs = ((), dict(inputs)) if isinstance(inputs, Mapping) else (tuple(inputs), {})
    sdpa = CountSDPA(backward=backward)
    grad = torch.enable_grad() if backward else torch.no_grad()
    frozen = [p for p in module.parameters() if not p.requires_grad] if backward else []
    for p in frozen:  # a training step updates every parameter of the counted network
        p.requires_grad_(True)
    try:
        with FlopCounterMode(display=False, custom_mapping=_ESTIMATE_MAPPING) as counter, grad, sdpa:
            out = call(module, *args, **kwargs)
            if backward:
                _first_tensor(out).float().sum().backward()
    finally:
        for p in frozen:
            p.requires_grad_(False)
    counted = counter.get_flop_counts().get("Global", {})
    by_op = {str(op): int(n) for op, n in counted.items() if op not in FVCORE_ESTIMATES}
    estimates = {str(op): int(n) for op, n in counted.items() if op in FVCORE_ESTIMATES}
    if sdpa.macs:
        by_op[SDPA_KEY] = 2 * sdpa.macs
    if backward:
        module.zero_grad(set_to_none=True)
    return FlopCount(flops_by_op=by_op, sdpa_calls=sdpa.calls, estimates_by_op=estimates)


def count_params(*modules: torch.nn.Module) -> int:
    """Parameters of the given modules, each shared parameter counted once."""
    seen: dict[int, int] = {}
    for m in modules:
        for p in m.parameters():
            seen[id(p)] = p.numel()
    return int(sum(seen.values()))


# --- Per-stage cost of a generator ----------------------------------------------------------------------


@dataclass(frozen=True)
class StageCost:
    """Cost of one sampling stage of one video (MACs per call are at batch 1).

    paper_tmacs: the stage's part of CMD's "TFLOPs" (``FlopCount.paper_macs`` x calls, batch 1,
        conditional pass only; 0 for stages the convention excludes).
    true_tflops: 2 * MAC incl. attention x calls x guidance passes x batch size, in 1e12.
    """

    stage: str
    params: int
    macs_per_call: int
    attention_macs_per_call: int
    paper_macs_per_call: int
    calls: int
    guidance_passes: int
    paper_convention: bool
    batch_size: int
    flops_by_op: Mapping[str, int] = field(default_factory=dict)

    @property
    def paper_tmacs(self) -> float:
        if not self.paper_convention:
            return 0.0
        return self.paper_macs_per_call * self.calls / 1e12

    @property
    def true_tflops(self) -> float:
        return 2 * self.macs_per_call * self.calls * self.guidance_passes * self.batch_size / 1e12


@dataclass(frozen=True)
class GeneratorCost:
    """Per-stage cost of sampling one batch at a setting, and its sums."""

    generator: str
    num_frames: int
    height: int
    width: int
    steps: int
    batch_size: int
    stages: tuple[StageCost, ...]
    params: int  # all stage networks, shared parameters once

    @property
    def paper_tmacs(self) -> float:
        return sum(s.paper_tmacs for s in self.stages)

    @property
    def true_tflops(self) -> float:
        return sum(s.true_tflops for s in self.stages)

    @property
    def true_tflops_excl_decoder(self) -> float:
        return sum(s.true_tflops for s in self.stages if s.stage not in DECODER_STAGES)

    @property
    def paper_params(self) -> int:
        """Parameters of the stages in the paper's convention (the denoisers)."""
        return sum(s.params for s in self.stages if s.paper_convention)

    def as_rows(self) -> list[dict[str, Any]]:
        """One dict per stage, for printing (TMAC = 1e12 MAC)."""
        return [
            {
                "stage": s.stage, "params_M": s.params / 1e6, "tmacs_per_call": s.macs_per_call / 1e12,
                "attention_tmacs_per_call": s.attention_macs_per_call / 1e12, "calls": s.calls,
                "guidance_passes": s.guidance_passes, "paper_convention": s.paper_convention,
                "paper_tmacs": s.paper_tmacs, "true_tflops": s.true_tflops,
            }
            for s in self.stages
        ]


def _stage_key(stage: CostStage, num_frames: int, height: int, width: int) -> tuple:
    return (id(stage.module), stage.name, num_frames, height, width)


def count_stage(stage: CostStage, *, batch_size: int = 1, backward: bool = False) -> FlopCount:
    """Count one call of a :class:`CostStage` at ``batch_size``."""
    inputs = stage.make_inputs(batch_size)
    return count_flops(stage.module, inputs, forward=stage.forward, backward=backward)


def count_generator_cost(
    generator: SupportsCost,
    num_frames: int,
    height: int,
    width: int,
    steps: int,
    batch_size: int = 1,
    *,
    name: str | None = None,
    cache: dict | None = None,
) -> GeneratorCost:
    """Count every stage of ``generator`` at a setting (modules normally on the meta device).

    FLOPs are counted at batch 1 and scaled by ``batch_size`` for ``true_tflops`` (every op in these
    networks is linear in the batch). ``cache`` (a dict) reuses per-call counts across step counts.
    """
    if not hasattr(generator, "cost_stages"):
        gname = name or getattr(generator, "name", type(generator).__name__)
        raise TypeError(f"generator {gname!r} has no cost_stages(); it cannot be counted")
    stages = generator.cost_stages(num_frames=num_frames, height=height, width=width, steps=steps)
    cache = {} if cache is None else cache
    out = []
    for st in stages:
        key = _stage_key(st, num_frames, height, width)
        if key not in cache:
            cache[key] = count_stage(st, batch_size=1)
        fc: FlopCount = cache[key]
        out.append(StageCost(
            stage=st.name, params=count_params(st.module), macs_per_call=fc.macs,
            attention_macs_per_call=fc.attention_macs, paper_macs_per_call=fc.paper_macs, calls=st.calls,
            guidance_passes=st.guidance_passes,
            paper_convention=st.paper_convention, batch_size=batch_size, flops_by_op=dict(fc.flops_by_op),
        ))
    return GeneratorCost(
        generator=name or getattr(generator, "name", type(generator).__name__), num_frames=num_frames,
        height=height, width=width, steps=steps, batch_size=batch_size, stages=tuple(out),
        params=count_params(*(st.module for st in stages)),
    )


# --- Latency --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """Raw wall-clock seconds of ``len(raw)`` timed calls after ``warmup`` untimed ones."""

    raw: tuple[float, ...]
    warmup: int
    method: str  # "cuda_events" | "perf_counter"

    @property
    def median(self) -> float:
        return statistics.median(self.raw)

    @property
    def min(self) -> float:
        return min(self.raw)

    @property
    def iqr(self) -> float:
        """Interquartile range (0 for fewer than 2 values)."""
        if len(self.raw) < 2:
            return 0.0
        q = statistics.quantiles(self.raw, n=4, method="inclusive")
        return q[2] - q[0]


def _is_cuda(device: str | torch.device) -> bool:
    return torch.device(device).type == "cuda"


def latency(fn: Callable[[], Any], timing: TimingConfig = TimingConfig(), *, device: str = "cpu") -> Timing:
    """Time ``fn()``: ``timing.warmup`` untimed calls, then repeat until at least ``min_repeats`` calls
    and ``min_seconds`` of timed work (never beyond ``max_repeats``).

    CUDA: events recorded around each call on the current stream, synchronised after it. CPU:
    ``time.perf_counter``.
    """
    cuda = _is_cuda(device)
    for _ in range(timing.warmup):
        fn()
    if cuda:
        torch.cuda.synchronize(device)
    raw: list[float] = []
    while len(raw) < timing.max_repeats and (len(raw) < timing.min_repeats or sum(raw) < timing.min_seconds):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            raw.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            raw.append(time.perf_counter() - t0)
    return Timing(raw=tuple(raw), warmup=timing.warmup, method="cuda_events" if cuda else "perf_counter")


# --- Peak memory ----------------------------------------------------------------------------------------

_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


def _read_status_kb(field_name: str) -> int | None:
    try:
        with open(_STATUS) as f:
            m = re.search(rf"^{field_name}:\s+(\d+) kB", f.read(), re.MULTILINE)
    except OSError:
        return None
    return int(m.group(1)) * 1024 if m else None


def current_rss() -> int:
    """Resident set size of this process in bytes (psutil fallback off Linux)."""
    rss = _read_status_kb("VmRSS")
    if rss is None:
        import psutil

        rss = psutil.Process().memory_info().rss
    return rss


def _can_reset_hwm() -> bool:
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
    except OSError:
        return False
    return _read_status_kb("VmHWM") is not None


class PeakMemory:
    """Peak memory since the last :meth:`checkpoint` (or creation), in bytes.

    CUDA: ``torch.cuda.max_memory_allocated`` (tensors only; ``label = "cuda_max_memory_allocated"``).
    CPU: the process's peak resident set size (``label = "cpu_peak_rss"``, weights and runtime
    included), from ``VmHWM`` reset via ``clear_refs`` or, where that is refused, a sampling thread.
    """

    def __init__(self, device: str | torch.device = "cpu", *, sample_interval_s: float = 0.002) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.label = "cuda_max_memory_allocated" if self.cuda else "cpu_peak_rss"
        self._use_hwm = not self.cuda and _can_reset_hwm()
        self._interval = sample_interval_s
        self._sampled = 0
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None
        self._reset()

    def _reset(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self._use_hwm:
            with open(_CLEAR_REFS, "w") as f:
                f.write("5")
        else:
            self._sampled = current_rss()

    def _read(self) -> int:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device))
        if self._use_hwm:
            return int(_read_status_kb("VmHWM") or 0)
        return max(self._sampled, current_rss())

    def checkpoint(self) -> int:
        """Peak since the previous checkpoint; then start a new interval."""
        peak = self._read()
        self._reset()
        return peak

    def __enter__(self) -> PeakMemory:
        if not self.cuda and not self._use_hwm:
            self._stop = threading.Event()

            def sample() -> None:
                assert self._stop is not None
                while not self._stop.wait(self._interval):
                    self._sampled = max(self._sampled, current_rss())

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        self._reset()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._stop is not None and self._thread is not None:
            self._stop.set()
            self._thread.join()


# --- Per-stage split of a sampling call -----------------------------------------------------------------


class StageRecorder:
    """A generator ``stage_hook``: wall time and peak memory per stage, nested stages allowed.

    Times are summed over repeated entries of the same stage within one call; peaks are maxima.
    ``peak_overall`` is the peak over the whole recorded interval (stages and the gaps between them).
    """

    def __init__(self, memory: PeakMemory | None = None) -> None:
        self.memory = memory
        self.cuda = memory.cuda if memory is not None else False
        self.times: dict[str, float] = {}
        self.peaks: dict[str, int] = {}
        self.peak_overall = 0
        self._open: list[tuple[str, float]] = []

    def _fold(self) -> None:
        if self.memory is None:
            return
        peak = self.memory.checkpoint()
        self.peak_overall = max(self.peak_overall, peak)
        for name, _ in self._open:
            self.peaks[name] = max(self.peaks.get(name, 0), peak)

    def __call__(self, name: str, event: StageEvent) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.memory.device)
        now = time.perf_counter()
        self._fold()
        if event == "start":
            self._open.append((name, now))
            return
        for i in range(len(self._open) - 1, -1, -1):
            if self._open[i][0] == name:
                _, t0 = self._open.pop(i)
                self.times[name] = self.times.get(name, 0.0) + (now - t0)
                return
        raise RuntimeError(f"stage {name!r} ended without starting; open stages: {[n for n, _ in self._open]}")

    def finish(self) -> None:
        """Fold the last interval into ``peak_overall``."""
        self._fold()


# --- Measuring one sampling setting ---------------------------------------------------------------------


def is_out_of_memory(err: BaseException) -> bool:
    """CUDA OOM, a host ``MemoryError`` or an allocator failure message."""
    if isinstance(err, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    return isinstance(err, RuntimeError) and (
        "out of memory" in str(err).lower() or "can't allocate memory" in str(err).lower()
    )


@dataclass(frozen=True)
class SamplingMeasurement:
    """Time and memory of ``generator.sample`` at one setting; ``status`` is "ok" or "oom".

    time: timing of whole ``sample()`` calls; stage_times: per stage, median over timed calls;
    excluded_stages: stages subtracted in ``time_excl`` (the paper excludes the SD decoder).
    """

    status: str
    time: Timing | None = None
    stage_times: Mapping[str, float] = field(default_factory=dict)
    stage_peaks: Mapping[str, int] = field(default_factory=dict)
    peak_memory: int | None = None
    memory_label: str = ""
    baseline_memory: int | None = None
    excluded_stages: tuple[str, ...] = ()
    error: str = ""

    @property
    def time_excl(self) -> float | None:
        """Median sampling time minus the median time of ``excluded_stages``."""
        if self.time is None:
            return None
        return self.time.median - sum(self.stage_times.get(s, 0.0) for s in self.excluded_stages)


def _conditions(generator: Any, batch_size: int) -> dict[str, Any]:
    cond = getattr(generator, "conditioning", "none")
    if cond == "text":
        return {"prompts": ["a panda playing a guitar in a garden"] * batch_size}
    if cond == "class":
        return {"labels": [0] * batch_size}
    return {}


def measure_sampling(
    generator: Any,
    *,
    num_frames: int,
    height: int,
    width: int,
    steps: int,
    batch_size: int = 1,
    guidance_scale: float | None = None,
    timing: TimingConfig = TimingConfig(),
    device: str = "cpu",
    excluded_stages: Sequence[str] = ("vae_decoder",),
) -> SamplingMeasurement:
    """Time ``generator.sample`` and record its peak memory, stage by stage.

    Out-of-memory (CUDA or host) is caught and returned as ``status="oom"``; other errors propagate.
    """
    from cmdbench.seeding import make_generators

    memory = PeakMemory(device)
    runs: list[StageRecorder] = []
    kwargs = dict(num_frames=num_frames, height=height, width=width, steps=steps,
                  guidance_scale=guidance_scale, **_conditions(generator, batch_size))
    previous_hook = getattr(generator, "stage_hook", None)

    def one_call() -> None:
        rec = StageRecorder(memory)
        generator.stage_hook = rec
        rec._fold()
        generator.sample(generator=make_generators(range(batch_size)), **kwargs)
        rec.finish()
        runs.append(rec)

    gc.collect()
    if _is_cuda(device):
        torch.cuda.empty_cache()
    baseline = current_rss() if not memory.cuda else int(torch.cuda.memory_allocated(memory.device))
    try:
        with memory, torch.inference_mode():
            t = latency(one_call, timing, device=device)
    except Exception as err:  # noqa: BLE001 - only OOM is swallowed, see below
        if not is_out_of_memory(err):
            raise
        gc.collect()
        if _is_cuda(device):
            torch.cuda.empty_cache()
        return SamplingMeasurement(status="oom", memory_label=memory.label, error=str(err).splitlines()[0])
    finally:
        generator.stage_hook = previous_hook
    timed = runs[timing.warmup:]
    names = sorted({n for r in timed for n in r.times})
    stage_times = {n: statistics.median(r.times.get(n, 0.0) for r in timed) for n in names}
    stage_peaks = {n: max(r.peaks.get(n, 0) for r in runs) for n in names}
    return SamplingMeasurement(
        status="ok", time=t, stage_times=stage_times, stage_peaks=stage_peaks,
        peak_memory=max(r.peak_overall for r in runs), memory_label=memory.label, baseline_memory=baseline,
        excluded_stages=tuple(excluded_stages),
    )


# --- Training-step description ---------------------------------------------------------------------------


def training_stages(generator: Any, *, num_frames: int, height: int, width: int) -> tuple[list[CostStage], str]:
    """The networks one training step runs, one forward each, and where the description came from.

    ``generator.training_cost_stages`` when the generator has one, else the paper-convention (denoiser)
    stages of ``cost_stages`` at one step. ``UnsupportedSettingError`` from the generator propagates.
    """
    hook = getattr(generator, "training_cost_stages", None)
    if hook is not None:
        return list(hook(num_frames=num_frames, height=height, width=width)), "training_cost_stages"
    stages = generator.cost_stages(num_frames=num_frames, height=height, width=width, steps=1)
    return [s for s in stages if s.paper_convention], "cost_stages (denoisers only)"
