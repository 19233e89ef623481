"""The registered metrics: name -> factory(**options) -> VideoMetric. Imported by ``registry.load_plugins``."""

from __future__ import annotations

from functools import partial

from cmdbench.metrics.clipsim import CLIPSIM
from cmdbench.metrics.fvd import FVD, PRESETS, PROTOCOL_METRICS
from cmdbench.registry import METRICS

METRICS.register(
    "clipsim",
    CLIPSIM,
    description="CLIP ViT-B/32 frame-prompt cosine, mean over frames then videos (raw cosine, higher is better)",
)

# --- FVD ------------------------------------------------------------------------------------------------

def _fvd(metric: str | None = None, preset: str = "stylegan-v", **options):
    """FVD factory: ``protocol=`` picks the preset (default ``stylegan-v``); other options go to FVD."""
    return FVD(options.pop("protocol", preset), metric=metric, **options)


for _name, (_real, _fake, _frames, _stride) in PROTOCOL_METRICS.items():
    METRICS.register(
        _name,
        partial(_fvd, _name),
        description=f"FVD, {_real or 'all'} real / {_fake} fake clips of {_frames} frames at stride {_stride} "
        "(preset via protocol=, default stylegan-v; lower is better)",
    )
for _preset in PRESETS:
    METRICS.register(
        f"fvd-{_preset}",
        partial(_fvd, None, _preset),
        description=f"FVD under the {_preset!r} preset (2048/2048 clips, 16 frames; lower is better)",
    )
