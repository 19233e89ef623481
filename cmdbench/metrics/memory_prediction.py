"""Predicted CUDA memory of sampling and of one training step, on fake tensors: no GPU, no weights.

How (``predict_sampling_memory``)
    Every network a generator describes in ``cost_stages`` (the description the FLOP counter uses) gets
    fake parameters: ``torch._subclasses.fake_tensor.FakeTensorMode`` tensors carry shape, dtype and a
    ``cuda`` device but no storage, so a full-size model at any setting, batch and dtype runs on a machine
    without a GPU. One call of each stage runs at ``batch_size x guidance_passes`` (the samplers batch the
    conditional and unconditional passes into one call) while :class:`LiveMemory`, a
    ``TorchDispatchMode``, follows every tensor storage from the op that creates it until Python drops its
    last reference: the moments at which the CUDA caching allocator's *allocated* counter moves, so its
    peak is what ``torch.cuda.max_memory_allocated`` reads. The peak of a stage is every network's weights
    (the samplers keep all of them on the GPU) + the stage's inputs + the largest live set during the call;
    the whole sampling peak is the largest stage peak, plus the cuBLAS workspaces (below).

Why an own tracker and not ``torch.distributed._tools.mem_tracker.MemTracker``
    MemTracker follows storages the same way (weak references on untyped storages), but (1) it applies
    the allocator's 512-byte rounding only to ``cuda`` storages, and the training-step prediction must run
    on the fake *CPU* device: backward on fake CUDA tensors needs an initialised CUDA context, which a
    machine without a GPU cannot create (pytorch/pytorch#92627: the autograd engine fails with
    "hasPrimaryContext expects a valid device index"); (2) it keeps no running segment count, which the
    reserved-memory estimate below needs. The test suite checks that both trackers agree on a fake-CUDA
    forward.

Attention follows the backend a GPU runs
    On fake CUDA tensors ``F.scaled_dot_product_attention`` dispatches to the *math* path (it asks the
    real device which kernels it has, and there is none), which materialises the (Lq x Lk) score and
    probability matrices in float32. A GPU with PyTorch's defaults runs a fused kernel that keeps no
    score matrix. :class:`FusedAttention` (a ``TorchFunctionMode``) therefore routes every SDPA call to the
    kernel PyTorch's selector would pick on an sm80+ GPU (``auto``): FlashAttention-2
    (``aten._scaled_dot_product_flash_attention``: fp16/bf16, 4-D, no mask, head dim <= 256), else the
    memory-efficient kernel (``aten._scaled_dot_product_efficient_attention``: also fp32 and additive
    masks), else the math path; ``flash`` / ``efficient`` / ``math`` force one. Hand-written attention
    (``bmm`` / ``einsum`` of scores, e.g. LVDM's temporal attention) materialises its scores on a GPU too
    and is counted as it runs.

Outside the model, and how it is accounted
    * Allocator rounding (``allocated_size``): every block is at least 512 bytes and a multiple of 512
      (c10 ``CUDACachingAllocator``: ``kMinBlockSize``); this is what ``max_memory_allocated`` counts.
    * Segments (``segment_size``, ``LiveMemory.peak_reserved``): blocks of <= 1 MiB are packed into 2 MiB
      segments, 1-10 MiB blocks into 20 MiB segments, larger ones get their own segment rounded up to
      2 MiB (``kSmallBuffer``, ``kLargeBuffer``, ``kMinLargeAlloc``, ``kRoundLarge``). The segment-rounded
      live bytes at their peak estimate ``max_memory_reserved`` with no fragmentation and no cached free
      blocks (a real run reserves at least this much, usually more).
    * cuBLAS workspaces (``cublas_workspace_bytes``): PyTorch allocates one cuBLAS workspace per handle and
      stream through the caching allocator on the first matmul and keeps it (``CublasHandlePool.cpp``:
      ``:4096:2:16:8`` = 8 MiB + 128 KiB below compute capability 9, 32 MiB on Hopper/Blackwell) plus a
      1 MiB cuBLASLt workspace: both are in ``max_memory_allocated`` and are added to the predicted peak.
    * cuDNN convolution workspaces are transient allocations whose size depends on the algorithm cuDNN
      picks on the real GPU; they are **not** predicted (they add to the peak only when the convolution at
      the peak moment asks for one).
    * The CUDA context (driver, kernels, cuBLAS/cuDNN handles: typically 0.3-0.6 GiB) is not allocated
      through the caching allocator: ``max_memory_allocated`` never shows it, and neither does this
      prediction; ``nvidia-smi`` does.
    * Between network calls the samplers hold latents, guidance outputs and scheduler temporaries of
      latent size (a few MiB at 512x1024x16); apart from what is a stage's input they are not modelled.

Training step (``predict_training_memory``)
    Forward, an MSE loss against a target of the output's shape, backward and one optimiser step (Adam,
    ``foreach`` as on CUDA) with the Adam moments allocated beforehand, as in every step after the first. The step runs on the fake CPU device (see above; shapes, dtypes and lifetimes do not
    depend on the device type), attention still through :class:`FusedAttention`, sizes still rounded as
    the CUDA allocator rounds them. Mixed precision (``amp-fp16`` / ``amp-bf16``: float32 weights, gradients
    and Adam states) follows CUDA autocast's op lists through :class:`CudaAutocast`, because torch's own
    ``torch.autocast("cuda")`` disables itself without a GPU and CPU autocast has different lists
    (e.g. it keeps group and layer norms in low precision; CUDA runs them in float32).

Units: bytes everywhere here; reports convert to GiB (2**30 bytes).
"""

from __future__ import annotations

import gc
import math
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from cmdbench.interfaces import CostStage
from cmdbench.metrics.efficiency import _first_tensor, training_stages

GIB = 2**30
MIB = 2**20
# Storages held only by reference cycles die at a collection; the young generations hold everything a
# network call creates, and a full collection of the process (torch, diffusers, transformers) costs ~0.4 s.
GC_GENERATION = 1

# --- The CUDA caching allocator's arithmetic (c10/cuda/CUDACachingAllocator.cpp) -------------------------

MIN_BLOCK = 512  # kMinBlockSize: every allocation is rounded up to a multiple of 512 bytes
SMALL_SIZE = 1 * MIB  # kSmallSize: largest "small" allocation
SMALL_BUFFER = 2 * MIB  # kSmallBuffer: small allocations are packed into 2 MiB segments
MIN_LARGE_ALLOC = 10 * MIB  # kMinLargeAlloc: 1-10 MiB allocations share 20 MiB segments
LARGE_BUFFER = 20 * MIB  # kLargeBuffer
ROUND_LARGE = 2 * MIB  # kRoundLarge: larger allocations get a segment rounded up to 2 MiB


def allocated_size(nbytes: int) -> int:
    """Bytes the allocator books for a request of ``nbytes`` (0 stays 0; else a multiple of 512, >= 512)."""
    if nbytes <= 0:
        return 0
    return MIN_BLOCK * math.ceil(nbytes / MIN_BLOCK)


def segment_size(nbytes: int) -> int:
    """Size of the segment (``cudaMalloc``) the allocator would create for a request of ``nbytes`` alone."""
    size = allocated_size(nbytes)
    if size == 0:
        return 0
    if size <= SMALL_SIZE:
        return SMALL_BUFFER
    if size < MIN_LARGE_ALLOC:
        return LARGE_BUFFER
    return ROUND_LARGE * math.ceil(size / ROUND_LARGE)


def cublas_workspace_bytes(compute_capability: float) -> int:
    """cuBLAS + cuBLASLt workspace PyTorch allocates through the caching allocator (defaults, no env vars).

    ``CublasHandlePool.cpp``: cuBLAS ``4096 * 1024 * 2 + 16 * 1024 * 8`` bytes below compute capability 9
    (``:4096:2:16:8``), ``4096 * 8 * 1024`` (32 MiB) for capability 9-12; cuBLASLt 1024 KiB.
    """
    cublas = 4096 * 8 * 1024 if 9 <= int(compute_capability) <= 12 else 4096 * 1024 * 2 + 16 * 1024 * 8
    return allocated_size(cublas) + allocated_size(1024 * 1024)


# --- Following live storages ------------------------------------------------------------------------------


class LiveMemory(TorchDispatchMode):
    """Allocator bytes of the live tensor storages on ``device`` (``cuda`` or ``cpu``), and their peak.

    Every op's tensor outputs are registered once per storage (views and in-place results share it);
    a weak reference's callback books the release when the storage dies. ``peak`` is the largest
    ``current`` seen after an op; :meth:`reset_peak` starts a new interval. ``scalars=False`` leaves
    0-dim tensors out (host-side scalars such as optimiser step counters on the fake CPU device). ``peak_reserved`` is the same
    over segment-rounded sizes (see :func:`segment_size`; small and 1-10 MiB blocks packed together).
    """

    def __init__(self, device: str = "cuda", *, scalars: bool = True) -> None:
        super().__init__()
        self.device_type = torch.device(device).type
        self.scalars = scalars
        self.current = 0
        self.peak = 0
        self.peak_reserved = 0
        self._live: dict[int, tuple[weakref.ref, int]] = {}
        self._small = 0  # allocated bytes of blocks <= 1 MiB
        self._mid = 0  # allocated bytes of blocks of 1-10 MiB
        self._large = 0  # segment bytes of blocks >= 10 MiB

    # -- bookkeeping ---------------------------------------------------------------------------------------
    def _book(self, size: int, sign: int) -> None:
        self.current += sign * size
        if size <= SMALL_SIZE:
            self._small += sign * size
        elif size < MIN_LARGE_ALLOC:
            self._mid += sign * size
        else:
            self._large += sign * segment_size(size)

    def _release(self, key: int, _ref: weakref.ref) -> None:
        entry = self._live.pop(key, None)
        if entry is not None:
            self._book(entry[1], -1)

    def reserved(self) -> int:
        """Segment-rounded bytes of the live set (no fragmentation, no cached free blocks)."""
        small = SMALL_BUFFER * math.ceil(self._small / SMALL_BUFFER) if self._small > 0 else 0
        mid = LARGE_BUFFER * math.ceil(self._mid / LARGE_BUFFER) if self._mid > 0 else 0
        return small + mid + self._large

    def track(self, t: torch.Tensor) -> None:
        """Register ``t``'s storage (no-op when it is already live or on another device)."""
        if t.device.type != self.device_type or (not self.scalars and t.dim() == 0):
            return
        st = t.untyped_storage()
        key = id(st)
        size = allocated_size(st.nbytes())
        entry = self._live.get(key)
        if entry is not None:
            if entry[1] != size:  # resized in place (resize_ / out= ops)
                self._book(entry[1], -1)
                self._book(size, +1)
                self._live[key] = (entry[0], size)
            return
        self._live[key] = (weakref.ref(st, lambda ref, k=key: self._release(k, ref)), size)
        self._book(size, +1)

    def update_peak(self) -> None:
        self.peak = max(self.peak, self.current)
        self.peak_reserved = max(self.peak_reserved, self.reserved())

    def reset_peak(self) -> None:
        """Start a new peak interval at the current live set."""
        self.peak = self.current
        self.peak_reserved = self.reserved()

    def __torch_dispatch__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.track(t)
        self.update_peak()
        return out


# --- Attention as a GPU runs it -----------------------------------------------------------------------------

SDPA_BACKENDS = ("auto", "flash", "efficient", "math")
_SDPA_C = getattr(torch._C._nn, "scaled_dot_product_attention", None)
_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _sdpa_call(args: Sequence[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    call = {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None, "enable_gqa": False}
    call.update(zip(_SDPA_ARGS[: len(args)], args, strict=True))
    call.update(kwargs)
    return call


def sdpa_backend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None,
                 requested: str = "auto") -> str:
    """The kernel an sm80+ GPU runs for these inputs: "flash", "efficient" or "math".

    PyTorch's order of preference (``sdp_utils.cpp``) reduced to the checks that matter here: flash needs
    4-D fp16/bf16 inputs of one dtype, no mask, equal head dims <= 256 and equal head counts; the
    memory-efficient kernel also takes float32 and an additive mask, with head dims a multiple of 8
    (fp16/bf16) or 4 (fp32). A forced ``requested`` backend that cannot run raises ``ValueError``.
    """
    if requested not in SDPA_BACKENDS:
        raise ValueError(f"sdpa backend {requested!r} is not allowed; use one of {SDPA_BACKENDS}")
    if requested == "math":
        return "math"
    same = q.dim() == 4 and k.dim() == 4 and v.dim() == 4 and q.dtype == k.dtype == v.dtype
    heads = same and q.shape[1] == k.shape[1] == v.shape[1]
    flash_ok = (heads and q.dtype in _LOW_PRECISION and attn_mask is None
                and q.shape[-1] == k.shape[-1] == v.shape[-1] and q.shape[-1] <= 256)
    align = 8 if q.dtype in _LOW_PRECISION else 4
    eff_ok = (heads and q.dtype in (*_LOW_PRECISION, torch.float32)
              and q.shape[-1] % align == 0 and v.shape[-1] % align == 0)
    if requested == "flash" and not flash_ok:
        raise ValueError(f"flash attention cannot run q{tuple(q.shape)} {q.dtype} with mask={attn_mask is not None}; "
                         "it needs 4-D fp16/bf16 inputs, no mask, equal head dims <= 256")
    if requested == "efficient" and not eff_ok:
        raise ValueError(f"memory-efficient attention cannot run q{tuple(q.shape)} {q.dtype}; it needs 4-D "
                         f"inputs with head dims a multiple of {align}")
    if requested in ("flash", "efficient"):
        return requested
    return "flash" if flash_ok else "efficient" if eff_ok else "math"


def _additive_bias(mask: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """A boolean or float mask as the memory-efficient kernel takes it: additive, in q's dtype, last dim
    padded to a multiple of 16 and expanded (a view) to (B, H, Lq, Lk) (PyTorch's ``preprocess_mask``)."""
    if mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, float("-inf"))
    elif mask.dtype != q.dtype:
        mask = mask.to(q.dtype)
    lk = k.shape[-2]
    if lk % 16:
        mask = F.pad(mask, (0, 16 - lk % 16))[..., :lk]
    return mask.expand(q.shape[0], q.shape[1], q.shape[2], lk)


class FusedAttention(TorchFunctionMode):
    """Run ``F.scaled_dot_product_attention`` with the kernel a GPU would pick (see :func:`sdpa_backend`).

    ``calls`` counts the calls per backend used.
    """

    def __init__(self, backend: str = "auto") -> None:
        super().__init__()
        if backend not in SDPA_BACKENDS:
            raise ValueError(f"sdpa backend {backend!r} is not allowed; use one of {SDPA_BACKENDS}")
        self.backend = backend
        self.calls: dict[str, int] = {}

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention and func is not _SDPA_C:
            return func(*args, **kwargs)
        c = _sdpa_call(args, kwargs)
        q, k, v, mask = c["query"], c["key"], c["value"], c["attn_mask"]
        chosen = sdpa_backend(q, k, v, mask, self.backend)
        self.calls[chosen] = self.calls.get(chosen, 0) + 1
        if chosen == "flash":
            return torch.ops.aten._scaled_dot_product_flash_attention(
                q, k, v, c["dropout_p"], c["is_causal"], False, scale=c["scale"])[0]
        if chosen == "efficient":
            bias = None if mask is None else _additive_bias(mask, q, k)
            lse = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
            return torch.ops.aten._scaled_dot_product_efficient_attention(
                q, k, v, bias, lse, c["dropout_p"], c["is_causal"], scale=c["scale"])[0]
        return func(*args, **kwargs)


# --- CUDA autocast, emulated (training on the fake CPU device) -------------------------------------------

# CUDA autocast op lists (torch.amp docs, "CUDA Ops that can autocast to float16 / to float32"), as the
# Python-level functions the networks here call.
_TO_LOW = {
    F.linear, F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d,
    F.prelu, F.bilinear, torch.matmul, torch.mm, torch.bmm, torch.baddbmm, torch.addmm, torch.addbmm,
    torch.mv, torch.addmv, torch.addr, torch.einsum, torch.Tensor.matmul, torch.Tensor.__matmul__,
    torch.Tensor.__rmatmul__, torch.Tensor.mm, torch.Tensor.bmm, torch.Tensor.baddbmm, torch.Tensor.addmm,
    F.scaled_dot_product_attention,
}
_TO_FP32 = {
    F.layer_norm, F.group_norm, F.softmax, F.log_softmax, F.softmin, F.softplus, F.mse_loss, F.l1_loss,
    F.smooth_l1_loss, F.cross_entropy, F.nll_loss, F.kl_div, F.binary_cross_entropy_with_logits,
    F.cosine_similarity, F.normalize, torch.softmax, torch.log_softmax, torch.Tensor.softmax,
    torch.Tensor.log_softmax, torch.exp, torch.log, torch.pow, torch.Tensor.pow, torch.Tensor.__pow__,
    torch.rsqrt, torch.reciprocal, torch.sum, torch.Tensor.sum, torch.prod, torch.cumsum, torch.norm,
    torch.Tensor.norm, torch.cdist,
}
if _SDPA_C is not None:
    _TO_LOW.add(_SDPA_C)


class CudaAutocast(TorchFunctionMode):
    """``torch.autocast("cuda", dtype)`` semantics on tensors of any device (the op lists above).

    Floating arguments of a low-precision op are cast to ``dtype``, of a float32 op to float32; casts of
    leaf tensors that require grad (the float32 weights) are cached for the whole region, as autocast
    caches them. Runs above autograd like autocast, so the casts and what backward saves are the same.
    """

    def __init__(self, dtype: torch.dtype = torch.float16) -> None:
        super().__init__()
        self.dtype = dtype
        self._cache: dict[int, torch.Tensor] = {}

    def _cast(self, x: Any, dtype: torch.dtype) -> Any:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dtype == dtype:
            return x
        if x.is_leaf and x.requires_grad:
            key = id(x)
            if key not in self._cache:
                self._cache[key] = x.to(dtype)
            return self._cache[key]
        return x.to(dtype)

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        target = self.dtype if func in _TO_LOW else torch.float32 if func in _TO_FP32 else None
        if target is not None:
            args = tuple(self._cast(a, target) for a in args)
            kwargs = {k: self._cast(v, target) for k, v in kwargs.items()}
            if func in _TO_FP32 and "dtype" in kwargs and kwargs["dtype"] is not None:
                kwargs["dtype"] = torch.float32
        return func(*args, **kwargs)

    def __exit__(self, *exc: Any) -> None:
        self._cache.clear()
        super().__exit__(*exc)


# --- Fake networks ---------------------------------------------------------------------------------------


def fake_parameters(module: torch.nn.Module, device: str, dtype: torch.dtype | None = None,
                    *, requires_grad: bool = False) -> Callable[[], None]:
    """Replace ``module``'s parameters and buffers in place by uninitialised tensors on ``device``; returns
    a function that puts the original tensors back.

    Call inside a ``FakeTensorMode`` (then nothing is allocated). Floating tensors take ``dtype`` when given
    (what ``module.to(dtype)`` does); shared tensors stay shared. Works from meta-device modules.
    """
    memo: dict[int, torch.Tensor] = {}
    saved: list[tuple[dict, str, torch.Tensor]] = []

    def remake(t: torch.Tensor, param: bool) -> torch.Tensor:
        if id(t) not in memo:
            dt = dtype if dtype is not None and t.is_floating_point() else t.dtype
            new = torch.empty(t.shape, dtype=dt, device=device)
            memo[id(t)] = torch.nn.Parameter(new, requires_grad=requires_grad and new.is_floating_point()) \
                if param else new
        return memo[id(t)]

    for m in module.modules():
        for table, param in ((m._parameters, True), (m._buffers, False)):
            for name, t in list(table.items()):
                if t is not None:
                    saved.append((table, name, t))
                    table[name] = remake(t, param)

    def restore() -> None:
        for table, name, t in saved:
            table[name] = t

    return restore


def _unique_modules(stages: Sequence[CostStage]) -> list[torch.nn.Module]:
    seen: dict[int, torch.nn.Module] = {}
    for st in stages:
        seen.setdefault(id(st.module), st.module)
    return list(seen.values())


def _call(stage: CostStage, inputs: dict[str, Any]) -> Any:
    forward = stage.forward or (lambda m, **kw: m(**kw))
    return forward(stage.module, **inputs)


# --- Sampling --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageMemory:
    """Predicted memory of one sampling stage (bytes, allocator-rounded).

    peak: absolute peak while the stage runs (all weights + inputs + the call's live tensors).
    activations: ``peak - weights``; inputs: the call's inputs; batch: the call's batch
    (``batch_size x guidance_passes``); attention: SDPA calls per backend.
    """

    stage: str
    batch: int
    peak: int
    activations: int
    inputs: int
    peak_reserved: int
    attention: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class MemoryPrediction:
    """Predicted CUDA memory of one ``sample()`` call of ``batch_size`` videos.

    weights: all networks' parameters and buffers; workspace: cuBLAS + cuBLASLt workspaces (added to every
    peak); peak: the whole call (``max_memory_allocated``); ``peak_excluding(stages)`` leaves stages out.
    """

    generator: str
    num_frames: int
    height: int
    width: int
    batch_size: int
    dtype: str
    autocast: str | None
    sdpa: str
    compute_capability: float
    weights: int
    workspace: int
    stages: tuple[StageMemory, ...]

    def stage_peak(self, stage: str) -> int:
        """Absolute peak while ``stage`` runs, workspace included."""
        return next(s.peak for s in self.stages if s.stage == stage) + self.workspace

    @property
    def peak(self) -> int:
        return max(s.peak for s in self.stages) + self.workspace

    def peak_excluding(self, excluded: Sequence[str]) -> int:
        kept = [s.peak for s in self.stages if s.stage not in excluded]
        return (max(kept) if kept else self.weights) + self.workspace

    @property
    def peak_reserved(self) -> int:
        """Segment-rounded estimate of ``max_memory_reserved`` (lower estimate: no fragmentation)."""
        return max(s.peak_reserved for s in self.stages) + segment_size(self.workspace)

    def as_rows(self) -> list[dict[str, Any]]:
        """One dict per stage in GiB, for printing."""
        return [{"stage": s.stage, "batch": s.batch, "peak_GiB": (s.peak + self.workspace) / GIB,
                 "activations_GiB": s.activations / GIB, "inputs_MiB": s.inputs / MIB,
                 "attention": dict(s.attention)} for s in self.stages]


DispatchObserver = Callable[[CostStage], TorchDispatchMode]


@contextmanager
def fake_generator_stages(generator: Any, *, num_frames: int, height: int, width: int, steps: int = 1,
                          dtype: torch.dtype = torch.float16, device: str = "cuda",
                          tracker: LiveMemory | None = None) -> Iterator[list[CostStage]]:
    """``generator.cost_stages(...)`` with every network's weights faked on ``device`` in ``dtype``.

    Yields inside the ``FakeTensorMode`` (and ``tracker``, which then sees the weights allocated); the
    networks get their own (meta) tensors back on exit, so one meta build serves many settings.
    ``UnsupportedSettingError`` from the generator propagates.
    """
    if not hasattr(generator, "cost_stages"):
        raise TypeError(f"generator {getattr(generator, 'name', generator)!r} has no cost_stages(); "
                        "it cannot be predicted")
    setting = dict(num_frames=num_frames, height=height, width=width, steps=steps)
    modules = _unique_modules(generator.cost_stages(**setting))
    with ExitStack() as stack:
        stack.enter_context(FakeTensorMode(allow_non_fake_inputs=False))
        if tracker is not None:
            stack.enter_context(tracker)
        for m in modules:
            stack.callback(fake_parameters(m, device, dtype))
        # The stages' input closures read the device/dtype of the (now fake) weights: describe them again.
        yield generator.cost_stages(**setting)


def trace_stage(stage: CostStage, batch: int, tracker: LiveMemory, *, sdpa: str = "auto",
                autocast: torch.dtype | None = None, observers: Sequence[TorchDispatchMode] = ()) -> StageMemory:
    """Run one call of ``stage`` at ``batch`` under ``tracker`` (inside a fake mode); its memory.

    ``autocast``: run the call under :class:`CudaAutocast` with this dtype (float32 weights, mixed precision).
    """
    gc.collect(GC_GENERATION)
    base = tracker.current
    tracker.reset_peak()
    attention = FusedAttention(sdpa)
    with ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        stack.enter_context(attention)
        if autocast is not None:
            stack.enter_context(CudaAutocast(autocast))
        inputs = stage.make_inputs(batch)
        in_bytes = tracker.current - base
        for obs in observers:  # they see the call only, not the making of its inputs
            stack.enter_context(obs)
        out = _call(stage, inputs)
        del out, inputs
    gc.collect(GC_GENERATION)
    return StageMemory(stage=stage.name, batch=batch, peak=tracker.peak, activations=tracker.peak - base,
                       inputs=in_bytes, peak_reserved=tracker.peak_reserved, attention=dict(attention.calls))


def predict_sampling_memory(
    generator: Any,
    *,
    num_frames: int,
    height: int,
    width: int,
    steps: int = 1,
    batch_size: int = 1,
    dtype: str = "float16",
    autocast: str | None = None,
    sdpa: str | Mapping[str, str] = "auto",
    compute_capability: float = 8.0,
    name: str | None = None,
    observers: Callable[[CostStage], Sequence[TorchDispatchMode]] | None = None,
) -> MemoryPrediction:
    """Predicted CUDA memory of ``generator.sample`` for ``batch_size`` videos at a setting, per stage.

    ``generator``: built on the meta device (its networks get fake weights in ``dtype`` for the run and
    their own tensors back after it).
    ``autocast``: ``None`` (pure ``dtype`` inference, as the samplers here run) or a low-precision dtype name
    for mixed precision (``dtype="float32"`` weights under CUDA autocast). ``sdpa``: an attention backend
    for every stage, or a mapping stage name -> backend (missing stages: ``auto``).
    ``steps`` only sets the stages' call counts (memory does not depend on it).
    ``compute_capability`` picks the cuBLAS workspace size (8.0: A100; 9.0: H100/H200).
    ``observers(stage)`` may return more dispatch modes to run over each stage's call (e.g. a roofline
    counter), so one fake run serves both.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; allowed: a positive integer")
    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype) or not torch_dtype.is_floating_point:
        raise ValueError(f"dtype={dtype!r}; allowed float16, bfloat16 or float32")
    amp = None
    if autocast is not None:
        amp = getattr(torch, autocast, None)
        if amp not in _LOW_PRECISION:
            raise ValueError(f"autocast={autocast!r}; allowed None, 'float16' or 'bfloat16'")
    tracker = LiveMemory("cuda")
    out = []
    with fake_generator_stages(generator, num_frames=num_frames, height=height, width=width, steps=steps,
                               dtype=torch_dtype, tracker=tracker) as stages:
        weights = tracker.current
        for st in stages:
            obs = observers(st) if observers is not None else ()
            backend = sdpa if isinstance(sdpa, str) else sdpa.get(st.name, "auto")
            out.append(trace_stage(st, batch_size * st.guidance_passes, tracker, sdpa=backend,
                                   autocast=amp, observers=obs))
    return MemoryPrediction(
        generator=name or getattr(generator, "name", type(generator).__name__), num_frames=num_frames,
        height=height, width=width, batch_size=batch_size, dtype=dtype, autocast=autocast,
        sdpa=sdpa if isinstance(sdpa, str) else ",".join(f"{k}={v}" for k, v in sorted(sdpa.items())),
        compute_capability=compute_capability, weights=weights,
        workspace=cublas_workspace_bytes(compute_capability), stages=tuple(out),
    )


# --- Training step ----------------------------------------------------------------------------------------

PRECISIONS = ("amp-fp16", "amp-bf16", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class TrainingMemory:
    """Predicted CUDA memory of one steady-state training step of one network (bytes).

    weights, gradients, optimizer_states: sizes of the parameters, their gradients and the Adam moments;
    peak: the largest live set over forward, backward and ``optimizer.step()`` of a steady-state step
    (moments already allocated; EMA copy when asked);
    peak_phase: where that peak fell ("forward", "backward" or "optimizer"); phase_peaks: each phase's peak.
    """

    stage: str
    batch_size: int
    precision: str
    weights: int
    gradients: int
    optimizer_states: int
    peak: int
    peak_phase: str
    workspace: int
    ema: bool = False
    phase_peaks: dict[str, int] = field(default_factory=dict)

    @property
    def total_peak(self) -> int:
        return self.peak + self.workspace


def predict_training_memory(
    generator: Any,
    stage: str,
    *,
    num_frames: int,
    height: int,
    width: int,
    batch_size: int = 1,
    precision: str = "amp-fp16",
    sdpa: str = "auto",
    compute_capability: float = 8.0,
    ema: bool = False,
    lr: float = 1e-4,
) -> TrainingMemory:
    """Predicted peak CUDA memory of training the network of ``stage`` (every parameter trained, Adam).

    ``generator`` is built on the meta device; its training description comes from
    :func:`cmdbench.metrics.efficiency.training_stages` (``training_cost_stages`` or the denoisers) and
    the trained network's weights are faked for the run (and put back after it). ``precision``: ``amp-fp16`` / ``amp-bf16`` (float32
    weights, CUDA autocast), or ``fp32`` / ``bf16`` / ``fp16`` (weights, gradients and states in that dtype).
    ``ema``: keep a float32 exponential-moving-average copy of the weights on the GPU (diffusers'
    ``EMAModel`` after ``.to(device)``, as ``cmdbench.cmd.training`` does). Frozen networks a training loop
    keeps resident (text encoder, VAE, CMD's autoencoder while its diffusion stages train) are not included.
    Runs on the fake CPU device (see the module docstring).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}; allowed one of {PRECISIONS}")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; allowed: a positive integer")
    setting = dict(num_frames=num_frames, height=height, width=width)
    described, _ = training_stages(generator, **setting)
    names = [s.name for s in described]
    if stage not in names:
        raise ValueError(f"{getattr(generator, 'name', generator)!r} trains no stage {stage!r}; it trains {names}")
    amp = precision.startswith("amp-")
    low = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision.split("-")[-1], torch.float32)
    weight_dtype = torch.float32 if amp else low
    tracker = LiveMemory("cpu", scalars=False)  # Adam's step counters live on the host on a real GPU
    phase_peaks: dict[str, int] = {}
    with FakeTensorMode(allow_non_fake_inputs=False), tracker:
        module = next(s.module for s in described if s.name == stage)
        restore = fake_parameters(module, "cpu", weight_dtype, requires_grad=True)
        try:
            st = next(s for s in training_stages(generator, **setting)[0] if s.name == stage)
            params = [p for p in module.parameters() if p.requires_grad]
            weights = tracker.current
            shadow = [torch.empty(p.shape, dtype=torch.float32, device=p.device) for p in params] if ema else []
            opt = torch.optim.Adam(params, lr=lr, foreach=True)
            for p in params:  # steady state: the moments exist before the step, as after the first one
                opt.state[p] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
            states = tracker.current - weights - sum(allocated_size(t.numel() * 4) for t in shadow)
            gc.collect(GC_GENERATION)
            tracker.reset_peak()
            with ExitStack() as stack:
                stack.enter_context(FusedAttention(sdpa))
                if amp:
                    stack.enter_context(CudaAutocast(low))
                out = _first_tensor(_call(st, st.make_inputs(batch_size)))
                target = torch.empty(out.shape, dtype=torch.float32, device=out.device)
                loss = F.mse_loss(out.float(), target)
            del out, target
            phase_peaks["forward"] = tracker.peak
            tracker.reset_peak()
            loss.backward()
            del loss
            gc.collect(GC_GENERATION)
            phase_peaks["backward"] = tracker.peak
            grads = sum(allocated_size(p.grad.numel() * p.grad.element_size()) for p in params if p.grad is not None)
            tracker.reset_peak()
            opt.step()
            if ema:  # diffusers EMAModel.step: shadow <- shadow - (1 - decay) * (shadow - param)
                torch._foreach_lerp_(shadow, [p.detach() for p in params], 1e-3)
            phase_peaks["optimizer"] = tracker.peak
            opt.zero_grad(set_to_none=True)
        finally:
            restore()
    phase = max(phase_peaks, key=lambda k: phase_peaks[k])
    return TrainingMemory(stage=stage, batch_size=batch_size, precision=precision, weights=weights,
                          gradients=grads, optimizer_states=states, peak=phase_peaks[phase], peak_phase=phase,
                          workspace=cublas_workspace_bytes(compute_capability), ema=ema,
                          phase_peaks=dict(phase_peaks))
