"""The offline CLIPSIM stand-in: a random tiny CLIP built locally, for trying the pipeline without weights.

``CLIPSIM(weights="clip-random-tiny")`` (``cmdbench evaluate --clip-weights clip-random-tiny``) scores with
clip-anytorch's own ``clip.model.CLIP`` at tiny widths (``reference/dependencies.md`` §5: widths 64,
2 layers, 1 head, vocabulary 49408, context 77, 224 px input, patch 32; ~3.6M parameters), seeded, saved as a
state dict and loaded back through ``clip.load`` like real weights, so the preprocessing, tokenizer and
forward are exactly those of the real metric. Its values are meaningless; every row and printed line says
so (``random_weights`` in ``MetricValue.extra``, ``clip-random-tiny`` in the protocol).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

STANDIN_NAME = "clip-random-tiny"
# clip.model.CLIP(embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size, context_length,
#                 vocab_size, transformer_width, transformer_heads, transformer_layers)
TINY_CLIP_ARGS = (64, 224, 2, 64, 32, 77, 49408, 64, 1, 2)


def build_random_tiny_clip(*, seed: int = 0, device: str | torch.device = "cpu"):
    """The seeded random tiny CLIP as a :class:`~cmdbench.metrics.clipsim.LoadedCLIP` (``random_weights=True``;
    ``weights_sha256`` is the sha256 of its state dict). The caller's RNG state is left untouched."""
    from cmdbench.metrics.clipsim import LoadedCLIP, _import_clip, load_clip
    from cmdbench.metrics.i3d import state_dict_sha256

    clip = _import_clip()
    with torch.random.fork_rng(devices=[]), tempfile.TemporaryDirectory(prefix="cmdbench-clip-") as tmp:
        torch.manual_seed(seed)
        model = clip.model.CLIP(*TINY_CLIP_ARGS)
        digest = state_dict_sha256(model)
        path = Path(tmp) / f"{STANDIN_NAME}.pt"
        torch.save(model.state_dict(), path)
        loaded = load_clip(path, device=device)  # clip.load (it builds a CLIP too: inside the forked RNG)
    return LoadedCLIP(loaded.model, loaded.preprocess, STANDIN_NAME, f"(built locally: {STANDIN_NAME}, seed {seed})",
                      digest, random_weights=True)
