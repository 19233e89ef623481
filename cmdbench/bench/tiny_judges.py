"""Miniature judges for the CPU end-to-end runs (``--tiny``): never for reported numbers.

* :class:`TinyPoolExtractor`: a fixed, seeded feature map of ``dim`` numbers per clip (mean colour and
  mean absolute frame difference on a 2x2 grid, projected), so FVD needs only ``n > dim`` clips
  instead of more than 400. It follows the FVD extractor protocol (name, dim, min_frames, checksum,
  preprocessing, ``extract``) and is named ``tiny-pool-<dim>`` in every record.

The tiny CLIP of ``--tiny`` runs is the labelled CLIPSIM stand-in
(:func:`cmdbench.metrics.clipsim_standin.build_random_tiny_clip`).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn.functional as F

from cmdbench.config import EvalProtocol
from cmdbench.metrics.preprocess import Preprocessing, to_extractor_input
from cmdbench.video import validate_video


class TinyPoolExtractor:
    """uint8 ``(B, T, 3, H, W)`` -> float64 ``(B, dim)``: pooled colour + motion, fixed projection."""

    def __init__(self, dim: int = 4, *, size: int = 8, seed: int = 0) -> None:
        self.dim, self.min_frames = dim, 2
        self.preprocessing = Preprocessing(resize="whole", size=size, value_range=(-1.0, 1.0))
        self.name = f"tiny-pool-{dim}"
        rng = np.random.default_rng(seed)
        self.projection = rng.standard_normal((24, dim)) / np.sqrt(24)  # (24, dim) float64
        self.checksum = hashlib.sha256(self.projection.tobytes() + self.name.encode()).hexdigest()

    @torch.no_grad()
    def extract(self, videos: torch.Tensor) -> np.ndarray:
        validate_video(videos, min_frames=self.min_frames)
        x = to_extractor_input(videos, self.preprocessing)  # (B, 3, T, s, s) in [-1, 1]
        b, c, t = x.shape[:3]
        pooled = F.adaptive_avg_pool2d(x.reshape(b, c * t, *x.shape[-2:]), 2).reshape(b, c, t, 4)  # (B, 3, T, 4)
        colour = pooled.mean(dim=2).reshape(b, 12)  # (B, 12)
        motion = (pooled[:, :, 1:] - pooled[:, :, :-1]).abs().mean(dim=2).reshape(b, 12)  # (B, 12)
        feats = torch.cat([colour, motion], dim=1).double().numpy()  # (B, 24)
        return feats @ self.projection  # (B, dim)


def tiny_protocol(num_real: int, num_fake: int, num_frames: int, extractor: TinyPoolExtractor, *,
                  name: str = "tiny-pool", clip_seed: int = 0) -> EvalProtocol:
    """An :class:`EvalProtocol` for :class:`TinyPoolExtractor` with the given counts and frames."""
    p = extractor.preprocessing
    return EvalProtocol(name=name, extractor=extractor.name, num_real=num_real, num_fake=num_fake,
                        num_frames=num_frames, frame_stride=1, size=p.size, resize=p.resize,
                        value_range=p.value_range, ddof=1, sqrtm="svd", clip_seed=clip_seed,
                        resize_kernel=p.kernel, antialias=p.antialias, real_order="hashed")
