"""CLIPSIM: CLIP image-text cosine similarity of every generated frame with its prompt.

Definition (CMD §8.3, following Make-A-Video / VideoLDM; ``evaluation-protocols.md`` §2.3)::

    CLIPSIM = mean over videos v of [ mean over frames t of cos(E_img(frame_{v,t}), E_txt(prompt_v)) ]

- CLIP **ViT-B/32** (clip-anytorch, OpenAI weights ``ViT-B-32.pt``) loaded from a local file:
  :func:`cmdbench.weights.require` (``clip_vit_b32``: cmdbench cache, then ``~/.cache/clip``) or an
  explicit path;
- every frame goes through CLIP's own ``preprocess`` on a PIL image (shorter side to 224 bicubic,
  centre crop 224, CLIP mean/std), exactly as ``clip.load`` returns it;
- prompts are tokenised by ``clip.tokenize`` (77 tokens); over-long prompts are an error unless
  ``truncate=True``, and truncations are counted;
- the **raw cosine** is stored (MSR-VTT values are around 0.3); x100 happens only for display
  (:func:`format_x100`); no clamping;
- per-video scores are kept, so the bootstrap spread over videos costs no extra network pass.

Offline tries: ``weights="clip-random-tiny"`` scores with a random tiny CLIP built locally
(:mod:`cmdbench.metrics.clipsim_standin`); its values mean nothing and are labelled random everywhere.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cmdbench import weights
from cmdbench.interfaces import MetricValue
from cmdbench.video import IN_MEMORY, validate_video

CLIP_WEIGHTS_NAME = "clip_vit_b32"
PROTOCOL = "clip-vit-b32/every-frame/clip-preprocess"
# clip.model.CLIP hyper-parameters of the published ViT-B/32, as ``describe_clip`` reads them back.
_VIT_B32 = {"embed_dim": 512, "resolution": 224, "vision_layers": 12, "vision_width": 768, "patch": 32,
            "text_layers": 12, "text_width": 512}


def _import_clip():
    """clip-anytorch, without its pkg_resources deprecation warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import clip
    return clip


@dataclass(frozen=True)
class LoadedCLIP:
    """A CLIP model with its preprocessing and provenance.

    preprocess: PIL image -> float tensor (3, R, R), CLIP-normalised (clip's own transform).
    model_name: ``"ViT-B/32"`` when the architecture is the published one, else a description.
    weights_path / weights_sha256: the file the model came from (``None`` for an in-memory model).
    """

    model: torch.nn.Module
    preprocess: Callable[[Any], torch.Tensor]
    model_name: str
    weights_path: str | None
    weights_sha256: str | None
    random_weights: bool = False  # the offline stand-in (values mean nothing)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def describe_clip(model: torch.nn.Module) -> str:
    """``"ViT-B/32"`` for the published architecture, else ``"CLIP ViT (width .., layers .., ...)"``."""
    visual = model.visual
    if not hasattr(visual, "conv1"):
        return f"CLIP {type(visual).__name__}"
    arch = {
        "embed_dim": model.text_projection.shape[1],
        "resolution": visual.input_resolution,
        "vision_layers": visual.transformer.layers,
        "vision_width": visual.conv1.out_channels,
        "patch": visual.conv1.kernel_size[0],
        "text_layers": model.transformer.layers,
        "text_width": model.transformer.width,
    }
    if arch == _VIT_B32:
        return "ViT-B/32"
    return "CLIP ViT (" + ", ".join(f"{k} {v}" for k, v in arch.items()) + ")"


def load_clip(file: str | Path | None = None, *, device: str | torch.device = "cpu") -> LoadedCLIP:
    """Load CLIP from ``file`` (default: the verified ``clip_vit_b32`` weight file) with ``clip.load``.

    ``file`` may be clip's TorchScript archive or a ``torch.save``d state dict (``clip.load`` takes
    both), or ``"clip-random-tiny"``: the offline stand-in, built locally with random weights. Raises
    :class:`cmdbench.weights.WeightsError` (saying how to get the file) when it is missing.
    """
    from cmdbench.metrics.clipsim_standin import STANDIN_NAME, build_random_tiny_clip

    if file is not None and str(file) == STANDIN_NAME:
        return build_random_tiny_clip(device=device)
    clip = _import_clip()
    if file is None:
        path = weights.require(CLIP_WEIGHTS_NAME)
    else:
        path = Path(file).expanduser()
        if not path.is_file():
            raise weights.MissingWeightsError(
                f"CLIP weight file {path} does not exist; pass an existing file, leave it out to use "
                f"the cached ViT-B/32 (`cmdbench weights fetch {CLIP_WEIGHTS_NAME}`), or name the offline "
                f"stand-in {STANDIN_NAME!r} (random weights, values meaningless)"
            )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load FutureWarning; "not a JIT archive" notes
        model, preprocess = clip.load(str(path), device=device, jit=False)
    model.eval().requires_grad_(False)
    return LoadedCLIP(model, preprocess, describe_clip(model), str(path), weights.sha256_file(path))


# --- Functional core ----------------------------------------------------------------------------------


def check_prompts(prompts: Sequence[str] | None, batch: int) -> list[str]:
    """One non-empty string per video, or a :class:`ValueError` saying what is wrong."""
    if prompts is None:
        raise ValueError(f"CLIPSIM compares frames with text: pass prompts= (one string per video, {batch} here)")
    if isinstance(prompts, str):
        raise ValueError("CLIPSIM prompts must be a sequence of strings, one per video, not a single string")
    prompts = list(prompts)
    if len(prompts) != batch:
        raise ValueError(f"CLIPSIM got {len(prompts)} prompts for {batch} videos; pass one prompt per video")
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
    if bad:
        raise ValueError(f"CLIPSIM prompts must be strings; entries {bad} are not")
    empty = [i for i, p in enumerate(prompts) if not p.strip()]
    if empty:
        raise ValueError(f"CLIPSIM prompts {empty} are empty; every video needs its caption")
    return prompts


def tokenize(prompts: Sequence[str], *, truncate: bool) -> tuple[torch.Tensor, list[int]]:
    """``clip.tokenize`` -> (N, 77) int64 and the indices of prompts that were cut to 77 tokens."""
    clip = _import_clip()
    too_long = []
    for i, p in enumerate(prompts):
        try:
            clip.tokenize(p)
        except RuntimeError:
            too_long.append(i)
    if too_long and not truncate:
        raise ValueError(
            f"CLIPSIM prompts {too_long} exceed CLIP's 77-token context (e.g. {prompts[too_long[0]][:80]!r}...); "
            "shorten them or pass truncate=True (truncations are counted in the result)"
        )
    return clip.tokenize(list(prompts), truncate=truncate), too_long


def preprocess_frames(preprocess: Callable[[Any], torch.Tensor], frames: np.ndarray) -> torch.Tensor:
    """CLIP's ``preprocess`` applied to every frame: uint8 (n, H, W, 3) -> float32 (n, 3, R, R).

    When ``preprocess`` is a torchvision ``Compose`` ending in ``ToTensor, Normalize`` (clip's
    ``_transform`` is), the PIL steps (resize, crop, RGB) run per frame and ``ToTensor`` + ``Normalize``
    run once on the stacked batch: the same float32 operations on the same values, so the result is
    bit-identical to ``torch.stack([preprocess(img) for img in frames])`` (tested) while avoiding
    two small tensor ops per frame. Any other callable is applied frame by frame.
    """
    from PIL import Image
    from torchvision.transforms import Compose, Normalize, ToTensor

    steps = list(preprocess.transforms) if isinstance(preprocess, Compose) else []
    if len(steps) < 2 or not isinstance(steps[-2], ToTensor) or not isinstance(steps[-1], Normalize):
        return torch.stack([preprocess(Image.fromarray(f)) for f in frames])
    pil_steps, normalize = steps[:-2], steps[-1]
    images = []
    for f in frames:
        image = Image.fromarray(f)
        for step in pil_steps:
            image = step(image)
        images.append(np.asarray(image))
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # (n, 3, R, R) uint8
    return normalize(batch.to(torch.get_default_dtype()).div(255))  # ToTensor's scaling, then CLIP mean/std


@torch.inference_mode()
def frame_text_cosines(
    clip_model: LoadedCLIP, videos: torch.Tensor, prompts: Sequence[str], *, batch_size: int = 64,
    truncate: bool = False,
) -> tuple[torch.Tensor, list[int]]:
    """Cosine of every frame with its video's prompt.

    videos: uint8 (B, T, 3, H, W); prompts: B strings.
    Returns float64 (B, T) raw cosines in [-1, 1] and the indices of truncated prompts.
    """
    validate_video(videos)
    prompts = check_prompts(prompts, videos.shape[0])
    b, t = videos.shape[:2]
    model, device = clip_model.model, clip_model.device

    unique = sorted(set(prompts))  # each distinct prompt is encoded once
    row = {p: i for i, p in enumerate(unique)}
    tokens, cut = tokenize(unique, truncate=truncate)
    text = F.normalize(model.encode_text(tokens.to(device)).double(), dim=-1)  # (P, D)
    text_per_video = text[torch.tensor([row[p] for p in prompts], device=device)]  # (B, D)
    truncated = [i for i, p in enumerate(prompts) if row[p] in cut]

    frames = videos.reshape(b * t, *videos.shape[2:]).permute(0, 2, 3, 1).contiguous().cpu().numpy()  # (B·T, H, W, 3)
    cos = torch.empty(b * t, dtype=torch.float64)
    for start in range(0, b * t, batch_size):
        chunk = frames[start : start + batch_size]
        pixels = preprocess_frames(clip_model.preprocess, chunk)  # (n, 3, R, R)
        image = F.normalize(model.encode_image(pixels.to(device)).double(), dim=-1)  # (n, D)
        owner = torch.arange(start, start + len(chunk), device=device) // t
        cos[start : start + len(chunk)] = (image * text_per_video[owner]).sum(-1).cpu()
    cos = cos.reshape(b, t)
    bad = sorted({int(i) for i in torch.nonzero(~torch.isfinite(cos))[:, 0]})
    if bad:
        raise ValueError(
            f"CLIPSIM produced NaN/inf cosines for videos {bad} of this batch (zero or non-finite CLIP "
            f"embeddings): check the weight file {clip_model.weights_path} and the dtype"
        )
    return cos, truncated


def bootstrap_std(per_video: np.ndarray, *, resamples: int = 1000, seed: int = 0) -> float | None:
    """Standard deviation of the mean over ``resamples`` bootstrap resamples of the videos (``None`` if n < 2)."""
    n = len(per_video)
    if n < 2 or resamples < 2:
        return None
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    step = max(1, 2_000_000 // n)  # bound the index matrix to ~16 MB
    for s in range(0, resamples, step):
        k = min(step, resamples - s)
        means[s : s + k] = per_video[rng.integers(0, n, size=(k, n))].mean(axis=1)
    return float(means.std(ddof=1))


def format_x100(value: float) -> str:
    """The display convention of many papers: ``0.2930 -> "29.30"`` (never stored this way)."""
    return f"{100.0 * value:.2f}"


# --- Streaming metric ---------------------------------------------------------------------------------


class CLIPSIM:
    """Streaming CLIPSIM over uint8 ``(B, T, 3, H, W)`` videos and their prompts.

    weights: CLIP weight file (default: the verified ViT-B/32 from :mod:`cmdbench.weights`);
    clip_model: an already loaded :class:`LoadedCLIP` (then ``weights`` and ``device`` are unused);
    batch_size: frames per ``encode_image`` call; truncate: cut over-long prompts (counted) instead of
    raising; bootstrap / seed: resamples and seed of the bootstrap spread over videos.
    storage: how the videos reached :meth:`update` (:data:`cmdbench.video.IN_MEMORY` or a codec label),
    recorded in ``extra["storage"]``.
    """

    name = "clipsim"
    protocol = PROTOCOL
    unit = "cosine"
    higher_is_better = True

    def __init__(
        self,
        weights: str | Path | None = None,
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
        truncate: bool = False,
        bootstrap: int = 1000,
        seed: int = 0,
        clip_model: LoadedCLIP | None = None,
        storage: str = IN_MEMORY,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"CLIPSIM batch_size must be >= 1, got {batch_size}")
        self.clip = clip_model if clip_model is not None else load_clip(weights, device=device)
        # The protocol names the model that ran: "clip-vit-b32/..." for ViT-B/32, the architecture otherwise.
        model = re.sub(r"[^a-z0-9]+", "-", self.clip.model_name.lower().replace("/", "")).strip("-")
        self.protocol = f"clip-{model.removeprefix('clip-')}/every-frame/clip-preprocess"
        self.batch_size = batch_size
        self.truncate = truncate
        self.bootstrap = bootstrap
        self.seed = seed
        self.storage = storage
        self.reset()

    def reset(self) -> None:
        self._scores: list[np.ndarray] = []  # per-video means, one array per update
        self._frames = 0
        self._frame_counts: set[int] = set()
        self._truncated = 0

    def update(self, videos: torch.Tensor, prompts: Sequence[str] | None = None) -> None:
        """Score a batch: videos uint8 (B, T, 3, H, W), prompts B strings."""
        cos, truncated = frame_text_cosines(
            self.clip, videos, prompts, batch_size=self.batch_size, truncate=self.truncate
        )
        self._scores.append(cos.mean(dim=1).numpy())
        self._frames += cos.numel()
        self._frame_counts.add(cos.shape[1])
        self._truncated += len(truncated)

    @property
    def per_video_scores(self) -> np.ndarray:
        """float64 (N,) mean frame-prompt cosine of every video seen since :meth:`reset`, in order."""
        return np.concatenate(self._scores) if self._scores else np.empty(0)

    def compute(self) -> MetricValue:
        scores = self.per_video_scores
        if scores.size == 0:
            raise ValueError("CLIPSIM.compute() before any update(): no videos were scored")
        return MetricValue(
            name=self.name,
            value=float(scores.mean()),
            unit=self.unit,
            higher_is_better=self.higher_is_better,
            std=bootstrap_std(scores, resamples=self.bootstrap, seed=self.seed),
            n=int(scores.size),
            protocol=self.protocol,
            extra={
                "model": self.clip.model_name,
                "random_weights": self.clip.random_weights,
                "weights_path": self.clip.weights_path,
                "weights_sha256": self.clip.weights_sha256,
                "weights_verified": self.clip.weights_sha256 in weights.accepted_hashes(CLIP_WEIGHTS_NAME),
                "device": str(self.clip.device),
                "dtype": str(self.clip.model.dtype).removeprefix("torch."),
                "frames": self._frames,
                "frames_per_video": sorted(self._frame_counts),
                "prompts_truncated": self._truncated,
                "storage": self.storage,
                "std_kind": f"bootstrap over videos ({self.bootstrap} resamples, seed {self.seed})",
                "scale": "raw cosine (x100 only for display)",
                **({"stand_in": "random tiny CLIP built locally: the value means nothing"}
                   if self.clip.random_weights else {}),
            },
        )
