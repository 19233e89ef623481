"""How much a video moves: mean optical-flow magnitude, in pixels per frame at a fixed analysis resolution.

    motion(video) = mean over frame pairs (t, t+1) and pixels of ‖flow_t(x)‖₂

Every video is first resized so its **shorter side is** :data:`ANALYSIS_SIZE` **= 256 pixels** (aspect kept;
OpenCV ``INTER_AREA`` when shrinking, ``INTER_LINEAR`` when enlarging), so the unit is "pixels per frame
at a 256-pixel short side" whatever the stored size: a 128x128 clip translating 1 px/frame scores 2.

Two flow estimators:

* ``farneback`` (default, no weights): OpenCV's dense polynomial-expansion flow (Farnebäck, SCIA 2003),
  ``cv2.calcOpticalFlowFarneback`` on the grey frames with the parameters of OpenCV's own dense-flow
  example (:class:`FarnebackParams`: pyramid scale 0.5, 3 levels, 15 px window, 3 iterations, 7-point
  polynomial (``poly_n`` 5) with sigma 1.2, no flags). A textured translation of k px/frame reads k
  to within 1% (``tests/metrics/test_motion.py``).
* ``raft_small`` / ``raft_large``: RAFT (Teed & Deng, ECCV 2020) from ``torchvision.models.optical_flow``
  with the weight files known to ``cmdbench weights`` (``raft_small``: ``C_T_V2``; ``raft_large``:
  ``C_T_SKHT_V2``, torchvision's default), 12 refinement updates, frames in [-1, 1] (torchvision's
  ``OpticalFlow`` preset), sides cut down to multiples of 8 after the analysis resize. Used only when its
  weights are present: :func:`available_flows` lists what can run and why the others cannot.

:class:`MotionMagnitude` is the streaming judge (``motion-farneback``, ``motion-raft-small``,
``motion-raft-large`` in ``cmdbench list``): mean and standard deviation over videos, per-video values kept
(``values``) for the motion-stratified evaluation (:mod:`cmdbench.bench.motion_strata`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmdbench.interfaces import MetricValue
from cmdbench.video import validate_video

ANALYSIS_SIZE = 256
UNIT = "px/frame"
RAFT_VARIANTS = ("raft_small", "raft_large")
FLOW_NAMES = ("farneback", *RAFT_VARIANTS)


@dataclass(frozen=True)
class FarnebackParams:
    """``cv2.calcOpticalFlowFarneback`` arguments (OpenCV's dense optical-flow tutorial values)."""

    pyr_scale: float = 0.5
    levels: int = 3
    winsize: int = 15
    iterations: int = 3
    poly_n: int = 5
    poly_sigma: float = 1.2
    flags: int = 0


def analysis_shape(height: int, width: int, size: int = ANALYSIS_SIZE, multiple: int = 1) -> tuple[int, int]:
    """``(h, w)`` with the shorter side ``size`` (aspect kept, rounded), each cut down to a ``multiple``."""
    scale = size / min(height, width)
    h, w = round(height * scale), round(width * scale)
    return max(multiple, h // multiple * multiple), max(multiple, w // multiple * multiple)


def resize_frames(video: torch.Tensor, size: int = ANALYSIS_SIZE, multiple: int = 1) -> np.ndarray:
    """uint8 ``(T, 3, H, W)`` -> uint8 ``(T, h, w, 3)`` at the analysis resolution (OpenCV)."""
    import cv2

    frames = video.permute(0, 2, 3, 1).contiguous().numpy()
    h, w = analysis_shape(*frames.shape[1:3], size, multiple)
    if (h, w) == frames.shape[1:3]:
        return frames
    shrink = h * w < frames.shape[1] * frames.shape[2]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return np.stack([cv2.resize(f, (w, h), interpolation=interp) for f in frames])


class FarnebackFlow:
    """Dense Farnebäck flow between consecutive frames (OpenCV), magnitudes in px/frame at ``size``."""

    name = "farneback"
    random_weights = False

    def __init__(self, params: FarnebackParams = FarnebackParams(), size: int = ANALYSIS_SIZE) -> None:
        self.params, self.size = params, size

    def describe(self) -> dict[str, Any]:
        return {"flow": self.name, "analysis_short_side": self.size, **asdict(self.params)}

    def pair_magnitudes(self, video: torch.Tensor) -> np.ndarray:
        """uint8 ``(T, 3, H, W)`` -> float64 ``(T-1,)``: mean flow magnitude of each consecutive pair."""
        import cv2

        grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in resize_frames(video, self.size)]
        p = self.params
        out = np.empty(len(grey) - 1)
        for t in range(len(grey) - 1):
            flow = cv2.calcOpticalFlowFarneback(grey[t], grey[t + 1], None, p.pyr_scale, p.levels, p.winsize,
                                                p.iterations, p.poly_n, p.poly_sigma, p.flags)  # (h, w, 2) float32
            out[t] = float(np.hypot(flow[..., 0], flow[..., 1], dtype=np.float64).mean())
        return out


class RaftFlow:
    """RAFT (torchvision) between consecutive frames, magnitudes in px/frame at ``size`` (sides x8)."""

    random_weights = False

    def __init__(self, model: torch.nn.Module, *, name: str, weights_sha256: str | None = None,
                 size: int = ANALYSIS_SIZE, num_flow_updates: int = 12, device: str = "cpu",
                 batch_size: int = 8) -> None:
        if size < 128:  # RAFT's 4-level correlation pyramid at 1/8 resolution needs 16 cells on a side
            raise ValueError(f"RAFT analysis size {size}: RAFT needs frames of at least 128 pixels on a side")
        self.model = model.to(device).eval()
        self.name, self.weights_sha256, self.size = name, weights_sha256, size
        self.num_flow_updates, self.device, self.batch_size = num_flow_updates, torch.device(device), batch_size

    def describe(self) -> dict[str, Any]:
        return {"flow": self.name, "analysis_short_side": self.size, "multiple_of": 8,
                "num_flow_updates": self.num_flow_updates, "weights_sha256": self.weights_sha256,
                "random_weights": self.random_weights}

    @torch.no_grad()
    def pair_magnitudes(self, video: torch.Tensor) -> np.ndarray:
        frames = torch.from_numpy(resize_frames(video, self.size, multiple=8)).permute(0, 3, 1, 2)  # (T, 3, h, w)
        x = frames.to(self.device).float() / 255.0 * 2 - 1  # torchvision's OpticalFlow preset: [-1, 1]
        out = []
        for i in range(0, len(x) - 1, self.batch_size):
            j = min(i + self.batch_size, len(x) - 1)
            flow = self.model(x[i:j], x[i + 1 : j + 1], num_flow_updates=self.num_flow_updates)[-1]  # (P, 2, h, w)
            out.append(torch.linalg.vector_norm(flow.double(), dim=1).mean(dim=(1, 2)).cpu())
        return torch.cat(out).numpy()


def load_raft(variant: str = "raft_small", path: str | Path | None = None, *, device: str = "cpu",
              size: int = ANALYSIS_SIZE) -> RaftFlow:
    """torchvision's RAFT with the ``cmdbench weights`` file of ``variant`` (or ``path``), loaded strictly.
    A missing file raises :class:`cmdbench.weights.MissingWeightsError` saying how to get it."""
    from cmdbench import weights

    if variant not in RAFT_VARIANTS:
        raise ValueError(f"RAFT variant {variant!r}; allowed {RAFT_VARIANTS}")
    p = Path(path) if path is not None else weights.require(variant)
    if not p.is_file():
        raise FileNotFoundError(f"RAFT weight file {p} does not exist")
    from torchvision.models import optical_flow

    state = torch.load(p, map_location="cpu", weights_only=True)
    model = getattr(optical_flow, variant)(weights=None)
    model.load_state_dict(state, strict=True)
    return RaftFlow(model, name=variant, weights_sha256=weights.sha256_file(p), size=size, device=device)


def make_flow(name: str = "farneback", *, path: str | Path | None = None, device: str = "cpu",
              size: int = ANALYSIS_SIZE) -> FarnebackFlow | RaftFlow:
    """A flow estimator by name (:data:`FLOW_NAMES`)."""
    if name == "farneback":
        return FarnebackFlow(size=size)
    if name in RAFT_VARIANTS:
        return load_raft(name, path, device=device, size=size)
    raise ValueError(f"unknown flow estimator {name!r}; allowed {FLOW_NAMES}")


def available_flows(names: Sequence[str] = FLOW_NAMES) -> tuple[list[str], dict[str, str]]:
    """``(runnable names, {name: why not})``: Farnebäck always; RAFT when its weight file is on disk."""
    from cmdbench import weights

    ok, skipped = [], {}
    for name in names:
        if name == "farneback":
            ok.append(name)
        elif name in RAFT_VARIANTS:
            where = weights.path(name)
            if where.is_file():
                ok.append(name)
            else:
                skipped[name] = f"weights not found at {where} (`cmdbench weights fetch {name}`)"
        else:
            skipped[name] = f"unknown flow estimator; allowed {FLOW_NAMES}"
    return ok, skipped


def video_motion(videos: torch.Tensor, flow: FarnebackFlow | RaftFlow) -> np.ndarray:
    """Motion magnitude of each video: uint8 ``(B, T, 3, H, W)`` (T >= 2) -> float64 ``(B,)`` px/frame."""
    validate_video(videos, min_frames=2)
    return np.array([flow.pair_magnitudes(v).mean() for v in videos])


class MotionMagnitude:
    """Streaming mean motion magnitude of generated videos (``reset / update / compute``), px/frame.

    value: mean over videos; std: their sample standard deviation; ``values``: every video's magnitude.
    Not a distance: neither direction is better (``higher_is_better=None``).
    """

    unit = UNIT
    higher_is_better = None

    def __init__(self, flow: str | FarnebackFlow | RaftFlow = "farneback", *, flow_path: str | Path | None = None,
                 device: str = "cpu", size: int = ANALYSIS_SIZE) -> None:
        self.flow = make_flow(flow, path=flow_path, device=device, size=size) if isinstance(flow, str) else flow
        self.name = f"motion-{self.flow.name.replace('_', '-')}"
        self.protocol = f"{self.flow.name}@{self.flow.size}"
        self.reset()

    def reset(self) -> None:
        self.values: list[float] = []

    def update(self, videos: torch.Tensor, prompts: Sequence[str] | None = None) -> None:
        self.values.extend(video_motion(videos, self.flow).tolist())

    def compute(self) -> MetricValue:
        if not self.values:
            raise ValueError(f"{self.name}: no videos were given (update() was never called)")
        arr = np.asarray(self.values)
        std = float(arr.std(ddof=1)) if len(arr) > 1 else None
        extra = {**self.flow.describe(), "unit": UNIT, "values": [round(v, 6) for v in self.values],
                 "random_weights": self.flow.random_weights}
        return MetricValue(name=self.name, value=float(arr.mean()), unit=UNIT, higher_is_better=None, std=std,
                           n=len(arr), protocol=self.protocol, extra=extra)


def motion_metric(flow: str = "farneback", **options: Any) -> MotionMagnitude:
    """Registry factory (``motion-farneback``, ``motion-raft-small``, ``motion-raft-large``)."""
    unknown = sorted(set(options) - {"flow_path", "device", "size"})
    if unknown:
        raise ValueError(f"unknown motion option(s) {unknown}; allowed ['device', 'flow_path', 'size']")
    return MotionMagnitude(flow, **options)
