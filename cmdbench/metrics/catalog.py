"""The registered metrics: name -> factory(**options) -> VideoMetric. Imported by ``registry.load_plugins``."""

from __future__ import annotations

import inspect
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

# Options an FVD factory accepts: FVD's keyword arguments (``protocol`` picks the preset) and ``ref_stats``,
# the ``cmdbench evaluate --ref-stats`` spelling of ``reference`` (an ``.npz`` from ``cmdbench ref-stats``).
FVD_OPTIONS = tuple(sorted({*inspect.signature(FVD).parameters, "ref_stats"} - {"metric"}))


def _fvd(metric: str | None = None, preset: str = "stylegan-v", **options):
    """FVD factory: ``protocol=`` picks the preset (default ``stylegan-v``); other options go to FVD."""
    unknown = sorted(set(options) - set(FVD_OPTIONS))
    if unknown:
        raise ValueError(f"unknown FVD option(s) {unknown}; allowed {list(FVD_OPTIONS)}")
    if "ref_stats" in options:
        if "reference" in options:
            raise ValueError("FVD options ref_stats and reference name the same thing; give one")
        options["reference"] = options.pop("ref_stats")
    return FVD(options.pop("protocol", preset), metric=metric, **options)


def _fvd_factory(metric: str | None, preset: str = "stylegan-v") -> partial:
    factory = partial(_fvd, metric, preset)
    factory.options = FVD_OPTIONS  # what the bench runner checks --metric-option keys against
    return factory


for _name, (_real, _fake, _frames, _stride) in PROTOCOL_METRICS.items():
    METRICS.register(
        _name,
        _fvd_factory(_name),
        description=f"FVD, {_real or 'all'} real / {_fake} fake clips of {_frames} frames at stride {_stride} "
        "(preset via protocol=, default stylegan-v; lower is better)",
    )
for _preset in PRESETS:
    METRICS.register(
        f"fvd-{_preset}",
        _fvd_factory(None, _preset),
        description=f"FVD under the {_preset!r} preset (2048/2048 clips, 16 frames; lower is better)",
    )
