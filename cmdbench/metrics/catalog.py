"""The registered metrics: name -> factory(**options) -> VideoMetric. Imported by ``registry.load_plugins``."""

from __future__ import annotations

from cmdbench.metrics.clipsim import CLIPSIM
from cmdbench.registry import METRICS

METRICS.register(
    "clipsim",
    CLIPSIM,
    description="CLIP ViT-B/32 frame-prompt cosine, mean over frames then videos (raw cosine, higher is better)",
)
