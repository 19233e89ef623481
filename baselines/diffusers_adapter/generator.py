"""``diffusers:<path-or-id>``: any diffusers text-to-video pipeline behind cmdbench's generator interface.

``cmdbench bench --generator diffusers:/models/my-t2v`` (or a hub id, e.g. ``diffusers:ali-vilab/text-to-
video-ms-1.7b``) loads the pipeline with ``DiffusionPipeline.from_pretrained`` and samples through the
pipeline's own ``__call__``: its scheduler, guidance and decoding stay exactly the author's. Anything that
takes ``prompt``, ``height``, ``width``, ``num_inference_steps``, ``guidance_scale``, ``generator`` and a
frame count (``num_frames`` or ``video_length``) and returns ``.frames`` works: ``TextToVideoSDPipeline``,
``AnimateDiffPipeline``, ``LattePipeline``, ``CogVideoXPipeline``, ...

What the adapter adds (cmdbench's contract):

- **Seeding**: the pipeline gets the list of per-sample CPU ``torch.Generator`` s; diffusers' ``randn_tensor``
  then draws sample ``i``'s initial noise (and a stochastic scheduler's step noise) from ``generator[i]``
  alone, on the CPU, so a sample never depends on its batch (:mod:`cmdbench.seeding`'s rule). The noise is
  drawn in the pipeline's dtype, as diffusers does.
- **Stages** for timing (:func:`cmdbench.interfaces.stage` events through ``stage_hook``): each text-encoder
  call is ``text_encoder``; ``denoiser`` runs from the first denoiser (``unet`` / ``transformer``) call to the
  first decode, so it holds the scheduler steps too; each ``vae.decode`` call is ``vae_decoder``.
- **Cost stages** for FLOP counting: the text encoder, the denoiser and the VAE decoder rebuilt from their
  configs on the meta device (no memory, any size). The denoiser's and text encoder's inputs are captured
  by tracing the pipeline itself on those meta copies up to the first denoiser call at the requested
  setting (batch 1, conditional pass), so they are exactly what the pipeline feeds its networks. The
  decoder is counted for per-frame image VAEs (``AutoencoderKL``): ``T`` latent frames per video; other
  (3-D video) VAEs are not counted and :meth:`cost_stages` warns.
- **Checks**: prompts (text-conditional only), positive integer settings, sizes that are multiples of the
  VAE factor x the denoiser's patch size, ``steps <= num_train_timesteps``, ``guidance_scale >= 1`` (diffusers'
  scale s: ``eps_u + s (eps_c - eps_u)``; 1 disables guidance, ``None`` takes the pipeline's default).
- **Output**: the pipeline's frames (``output_type="pt"``, [0, 1]) rounded to uint8 ``(B, T, 3, H, W)`` on
  the CPU, checked against the requested shape.

Defaults (:class:`SamplingDefaults`) come from the pipeline's ``__call__`` signature (frames, steps,
guidance) and, where it leaves the size open, ``denoiser.config.sample_size x vae_scale_factor``.
``GeneratorSpec.device="meta"`` builds every network from its config on the meta device without reading
weights (for ``cmdbench efficiency --count-only``); sampling then refuses. ``tiny`` does not apply: the
adapter loads what you name (save a small random pipeline to a folder to test with one).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch

from baselines._common.sampling import CheckedSampler, check_latent_setting
from cmdbench.interfaces import (
    CostStage,
    GeneratorSpec,
    SamplingDefaults,
    StageHook,
    UnsupportedSettingError,
)
from cmdbench.registry import GENERATORS
from cmdbench.video import float_to_uint8

SCHEME = "diffusers"
FRAME_ARGUMENTS = ("num_frames", "video_length")  # how pipelines name the frame count
REQUIRED_ARGUMENTS = ("prompt", "height", "width", "num_inference_steps", "guidance_scale", "generator")
DENOISER_NAMES = ("unet", "transformer")
TEXT_ENCODER_NAMES = ("text_encoder", "text_encoder_2")
FALLBACK_FRAMES = 16
EVAL_PROMPTS = (
    "a person riding a bicycle along a river",
    "waves crashing on a rocky beach at sunset",
    "a dog running through a field of flowers",
    "fireworks exploding over a city skyline at night",
)


class NotAVideoPipelineError(ValueError):
    """The named pipeline cannot be driven as a text-to-video generator."""


class _Traced(Exception):
    """Raised by a forward pre-hook to stop a traced pipeline call at its first denoiser call."""


# --- The generator ----------------------------------------------------------------------------------------


class DiffusersVideoGenerator(CheckedSampler):
    """A diffusers text-to-video pipeline as a cmdbench generator (see the module docstring).

    Args:
        pipe: a loaded ``DiffusionPipeline`` (on its device, in its dtype).
        name: registry-style name, e.g. ``"diffusers:/models/t2v"``.
        reference: the folder or hub id it came from (recorded).
        defaults: override the defaults read from the pipeline.
        eval_prompts: prompts cycled by the harness when none are given.
        call_kwargs: further fixed keyword arguments for every ``pipe(...)`` call (e.g. ``decode_chunk_size``).
    """

    conditioning = "text"
    num_classes = None

    def __init__(self, pipe: Any, *, name: str, reference: str = "", defaults: SamplingDefaults | None = None,
                 eval_prompts: Sequence[str] = EVAL_PROMPTS, call_kwargs: dict[str, Any] | None = None) -> None:
        self.pipe = pipe
        self.name = name
        self.reference = reference
        self.stage_hook: StageHook | None = None
        self.eval_prompts = tuple(eval_prompts)
        self.call_kwargs = dict(call_kwargs or {})
        self.pipeline_class = type(pipe).__name__
        params = inspect.signature(type(pipe).__call__).parameters
        missing = [a for a in REQUIRED_ARGUMENTS if a not in params]
        frames = [a for a in FRAME_ARGUMENTS if a in params]
        self.denoiser_name = next((n for n in DENOISER_NAMES if getattr(pipe, n, None) is not None), None)
        if missing or not frames or self.denoiser_name is None or getattr(pipe, "vae", None) is None:
            lacks = missing + ([] if frames else ["num_frames/video_length"])
            lacks += [] if self.denoiser_name else ["a unet or transformer"]
            lacks += [] if getattr(pipe, "vae", None) is not None else ["a vae"]
            raise NotAVideoPipelineError(
                f"{name}: {self.pipeline_class} is not a text-to-video pipeline the adapter can drive; it lacks "
                f"{', '.join(lacks)} (supported: pipelines called with prompt, height, width, num_inference_steps, "
                "guidance_scale, generator and num_frames/video_length, returning .frames, e.g. "
                "TextToVideoSDPipeline, AnimateDiffPipeline, LattePipeline)"
            )
        self.frames_argument = frames[0]
        self.defaults = defaults or self._read_defaults(params)
        self._meta_pipe: Any = None

    # --- parts -------------------------------------------------------------------------------------------

    @property
    def denoiser(self) -> torch.nn.Module:
        return getattr(self.pipe, self.denoiser_name)

    @property
    def vae(self) -> torch.nn.Module:
        return self.pipe.vae

    @property
    def text_encoders(self) -> list[torch.nn.Module]:
        return [m for n in TEXT_ENCODER_NAMES if isinstance(m := getattr(self.pipe, n, None), torch.nn.Module)]

    @property
    def vae_scale_factor(self) -> int:
        factor = getattr(self.pipe, "vae_scale_factor", None) or getattr(self.pipe, "vae_scale_factor_spatial", None)
        if factor is None:
            factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return int(factor)

    @property
    def spatial_multiple(self) -> int:
        patch = getattr(self.denoiser.config, "patch_size", None) or 1
        return self.vae_scale_factor * int(patch if isinstance(patch, int) else patch[-1])

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    def _read_defaults(self, params: dict[str, inspect.Parameter]) -> SamplingDefaults:
        def default(arg: str) -> Any:
            value = params[arg].default
            return None if value is inspect.Parameter.empty else value

        size = getattr(self.denoiser.config, "sample_size", None)
        if isinstance(size, (list, tuple)):
            size_hw = (int(size[0]), int(size[-1]))
        else:
            size_hw = (int(size or 64), int(size or 64))
        height = default("height") or size_hw[0] * self.vae_scale_factor
        width = default("width") or size_hw[1] * self.vae_scale_factor
        frames = default(self.frames_argument) or getattr(self.denoiser.config, "sample_frames", None) or FALLBACK_FRAMES
        return SamplingDefaults(num_frames=int(frames), height=int(height), width=int(width),
                                steps=int(default("num_inference_steps") or 50),
                                guidance_scale=default("guidance_scale"))

    # --- sampling ----------------------------------------------------------------------------------------

    def check_settings(self, num_frames: int, height: int, width: int, steps: int, guidance: float | None) -> None:
        check_latent_setting(
            self.name, num_frames=num_frames, height=height, width=width, steps=steps, guidance=guidance,
            multiple=self.spatial_multiple,
            multiple_reason=f"VAE factor {self.vae_scale_factor} x the {self.denoiser_name}'s patch size",
            train_steps=self.pipe.scheduler.config.get("num_train_timesteps", 1000),
            guidance_note=f" (the pipeline's default {self.defaults.guidance_scale})")

    def generate(self, *, prompts: Sequence[str] | None, labels: Sequence[int] | None, num_frames: int,
                 height: int, width: int, steps: int, generator: Sequence[torch.Generator],
                 guidance_scale: float | None) -> torch.Tensor:
        """Sample ``len(generator)`` videos through the pipeline (after :class:`CheckedSampler`'s checks);
        returns uint8 ``(B, T, 3, H, W)`` on the CPU."""
        batch = len(generator)
        if guidance_scale is None:
            guidance_scale = self.defaults.guidance_scale
        self.check_settings(num_frames, height, width, steps, guidance_scale)
        if self.device.type == "meta":
            raise UnsupportedSettingError(f"{self.name} was built on the meta device (for cost counting only); "
                                          "build it with device cpu or cuda to sample")
        kwargs = {"prompt": list(prompts or []), "height": height, "width": width, "num_inference_steps": steps,
                  "generator": list(generator), "output_type": "pt", self.frames_argument: num_frames,
                  **self.call_kwargs}
        if guidance_scale is not None:
            kwargs["guidance_scale"] = guidance_scale
        with self._stage_events():
            frames = self.pipe(**kwargs).frames
        return self._to_uint8(frames, (batch, num_frames, 3, height, width))

    def _to_uint8(self, frames: Any, expected: tuple[int, ...]) -> torch.Tensor:
        """The pipeline's frames (tensor (B, T, 3, H, W) in [0, 1], or numpy (B, T, H, W, 3)) -> uint8."""
        if not isinstance(frames, torch.Tensor):
            import numpy as np

            array = np.asarray(frames)
            if array.ndim != 5:
                raise RuntimeError(f"{self.name}: {self.pipeline_class} returned frames of shape {array.shape}; "
                                   "expected (B, T, H, W, 3) or (B, T, 3, H, W)")
            frames = torch.from_numpy(array)
            if frames.shape[-1] == 3 and frames.shape[2] != 3:
                frames = frames.permute(0, 1, 4, 2, 3)
        video = float_to_uint8(frames.float().cpu(), value_range=(0.0, 1.0))
        if tuple(video.shape) != expected:
            raise RuntimeError(f"{self.name}: {self.pipeline_class} returned videos of shape {tuple(video.shape)} for "
                               f"the requested {expected} (B, T, 3, H, W); the pipeline changed the setting")
        return video

    @contextmanager
    def _stage_events(self) -> Iterator[None]:
        """Turn the pipeline's network calls into stage events (module docstring) while it samples."""
        hook = self.stage_hook
        if hook is None:
            yield
            return
        state = {"open": None}

        def enter(name: str) -> None:
            if state["open"] != name:
                close()
                hook(name, "start")
                state["open"] = name

        def close(*_: Any) -> None:
            if state["open"] is not None:
                hook(state["open"], "end")
                state["open"] = None

        vae = self.vae
        original_decode = vae.decode

        def decode(*args: Any, **kwargs: Any) -> Any:
            enter("vae_decoder")
            try:
                return original_decode(*args, **kwargs)
            finally:
                close()

        with ExitStack() as stack:
            for encoder in self.text_encoders:
                stack.callback(encoder.register_forward_pre_hook(lambda *_: enter("text_encoder")).remove)
                stack.callback(encoder.register_forward_hook(close).remove)
            stack.callback(self.denoiser.register_forward_pre_hook(lambda *_: enter("denoiser")).remove)
            vae.decode = decode  # instance attribute shadows the method for this call only
            stack.callback(vars(vae).pop, "decode", None)
            stack.callback(close)
            yield

    # --- cost description --------------------------------------------------------------------------------

    def cost_stages(self, *, num_frames: int, height: int, width: int, steps: int) -> list[CostStage]:
        """Text encoder(s), denoiser and (image-VAE) decoder on the meta device with traced inputs."""
        self.check_settings(num_frames, height, width, steps, None)
        meta = self._meta_pipeline()
        modules = {"denoiser": getattr(meta, self.denoiser_name),
                   **{n: getattr(meta, n) for n in TEXT_ENCODER_NAMES
                      if isinstance(getattr(meta, n, None), torch.nn.Module)}}
        # Traced at batch 1 and 2: arguments whose rows double scale with the batch (some pipelines repeat
        # the text states per frame, so rows = batch x frames), the others are fixed.
        one, two = (trace_inputs(meta, self.frames_argument, num_frames, height, width,
                                 [self.eval_prompts[0]] * b, modules) for b in (1, 2))
        guided = self.defaults.guidance_scale is not None and self.defaults.guidance_scale > 1.0
        passes = 2 if guided else 1
        stages = [CostStage("text_encoder", getattr(meta, n), _batched(one[n], two[n]), calls=1,
                            guidance_passes=passes, paper_convention=False)
                  for n in TEXT_ENCODER_NAMES if n in one]
        stages.append(CostStage("denoiser", modules["denoiser"], _batched(one["denoiser"], two["denoiser"]),
                                calls=steps, guidance_passes=passes))
        decoder = self._decoder_stage(meta.vae, num_frames, height, width)
        if decoder is not None:
            stages.append(decoder)
        return stages

    def _decoder_stage(self, vae: torch.nn.Module, num_frames: int, height: int, width: int) -> CostStage | None:
        from diffusers import AutoencoderKL

        if not isinstance(vae, AutoencoderKL):
            warnings.warn(f"{self.name}: the {type(vae).__name__} decoder is not counted (only per-frame image VAEs "
                          "such as AutoencoderKL are)", stacklevel=3)
            return None
        f, p = self.vae_scale_factor, next(vae.parameters())
        channels = vae.config.latent_channels

        def inputs(batch: int) -> dict[str, Any]:  # every frame of the video, decoded as images
            return {"z": torch.zeros(batch * num_frames, channels, height // f, width // f, device=p.device,
                                     dtype=p.dtype)}

        return CostStage("vae_decoder", vae, inputs, calls=1, paper_convention=False,
                         forward=lambda module, **kw: module.decode(**kw).sample)

    def _meta_pipeline(self) -> Any:
        if self._meta_pipe is None:
            self._meta_pipe = self.pipe if self.device.type == "meta" else meta_copy(self.pipe)
        return self._meta_pipe


def _batched(one: dict[str, Any], two: dict[str, Any]) -> Callable[[int], dict[str, Any]]:
    """``batch -> kwargs`` from the arguments traced at batch 1 (``one``) and 2 (``two``): a tensor with
    ``k`` rows at batch 1 and ``2k`` at batch 2 gets ``batch x k`` rows (zeros: values do not change FLOPs);
    everything else is passed as traced."""

    def make(batch: int) -> dict[str, Any]:
        out = {}
        for key, v in one.items():
            w = two.get(key)
            if (isinstance(v, torch.Tensor) and isinstance(w, torch.Tensor) and v.ndim >= 1
                    and w.shape[0] == 2 * v.shape[0] and w.shape[1:] == v.shape[1:]):
                v = torch.zeros((batch * v.shape[0], *v.shape[1:]), dtype=v.dtype, device=v.device)
            out[key] = v
        return out

    return make


# --- Meta-device pipelines and tracing ---------------------------------------------------------------------


def _meta_module(module: Any) -> Any:
    """A network rebuilt from its config on the meta device (same class, dtype); other components as they are."""
    from diffusers.models.modeling_utils import ModelMixin

    dtype = getattr(module, "dtype", torch.float32)
    if isinstance(module, ModelMixin):
        with torch.device("meta"):
            return _cast(type(module).from_config(module.config), dtype)
    if isinstance(module, torch.nn.Module) and hasattr(module, "config"):  # transformers models
        with torch.device("meta"):
            return _cast(type(module)(module.config), dtype)
    if hasattr(module, "config") and hasattr(type(module), "from_config"):  # schedulers: a fresh copy
        return type(module).from_config(module.config)
    return module


def _cast(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """``module`` in ``dtype`` (built in float32; casting to float32 again only makes diffusers log a notice)."""
    return module if dtype == torch.float32 else module.to(dtype)


def meta_copy(pipe: Any) -> Any:
    """The same pipeline class with every network rebuilt on the meta device (tokenizers shared)."""
    components = {k: _meta_module(v) for k, v in pipe.components.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notices of older pipeline classes
        meta = type(pipe)(**components)
    meta.set_progress_bar_config(disable=True)
    return meta


def load_meta_pipeline(reference: str, dtype: torch.dtype = torch.float32) -> Any:
    """Build a saved pipeline's networks from their configs on the meta device, reading no weights."""
    import importlib

    from diffusers import DiffusionPipeline
    from diffusers.models.modeling_utils import ModelMixin

    index = DiffusionPipeline.load_config(reference)
    pipeline_class = getattr(importlib.import_module("diffusers"), index["_class_name"])
    components: dict[str, Any] = {}
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, (list, tuple)) or len(spec) != 2:
            continue
        library, class_name = spec
        if library is None or class_name is None:
            components[name] = None
            continue
        cls = getattr(importlib.import_module(library), class_name)
        if issubclass(cls, ModelMixin):
            with torch.device("meta"):
                components[name] = _cast(cls.from_config(cls.load_config(reference, subfolder=name)), dtype)
        elif issubclass(cls, torch.nn.Module):  # transformers models: config only
            config = cls.config_class.from_pretrained(reference, subfolder=name)
            with torch.device("meta"):
                components[name] = _cast(cls(config), dtype)
        else:  # tokenizers, schedulers, feature extractors: small files
            components[name] = cls.from_pretrained(reference, subfolder=name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = pipeline_class(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def trace_inputs(pipe: Any, frames_argument: str, num_frames: int, height: int, width: int, prompts: list[str],
                 modules: dict[str, torch.nn.Module]) -> dict[str, dict[str, Any]]:
    """Run ``pipe`` (meta networks) for ``prompts`` without guidance until ``modules["denoiser"]`` is first
    called; return each module's first-call arguments by parameter name."""
    captured: dict[str, dict[str, Any]] = {}

    def recorder(name: str) -> Callable[..., None]:
        def pre_hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            if name not in captured:
                bound = inspect.signature(module.forward).bind(*args, **kwargs).arguments
                flat: dict[str, Any] = {}
                for key, value in bound.items():
                    if inspect.signature(module.forward).parameters[key].kind is inspect.Parameter.VAR_KEYWORD:
                        flat.update(value)
                    else:
                        flat[key] = value
                captured[name] = flat
            if name == "denoiser":
                raise _Traced

        return pre_hook

    handles = [m.register_forward_pre_hook(recorder(n), with_kwargs=True) for n, m in modules.items()]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pipe(prompt=list(prompts), height=height, width=width, num_inference_steps=1, guidance_scale=1.0,
                 generator=[torch.Generator().manual_seed(i) for i in range(len(prompts))], output_type="latent",
                 **{frames_argument: num_frames})
    except _Traced:
        pass
    except Exception as err:  # noqa: BLE001  (any failure of a foreign pipeline on meta tensors)
        raise RuntimeError(f"cost_stages: tracing {type(pipe).__name__} on the meta device failed before its "
                           f"first denoiser call: {type(err).__name__}: {err}") from err
    finally:
        for h in handles:
            h.remove()
    if "denoiser" not in captured:
        raise RuntimeError(f"cost_stages: {type(pipe).__name__} finished without calling its denoiser")
    return captured


# --- Loading and the name scheme --------------------------------------------------------------------------


def load_diffusers_generator(reference: str, spec: GeneratorSpec, *, name: str | None = None) -> DiffusersVideoGenerator:
    """Load the pipeline at ``reference`` (a local folder, else a hub id) as a generator built per ``spec``."""
    name = name or f"{SCHEME}:{reference}"
    if spec.tiny:
        raise ValueError(f"{name} loads the pipeline saved at {reference!r}; tiny (a random-weight miniature) does "
                         "not apply to it: drop --tiny (to test, save a small random pipeline to a folder and name it)")
    if spec.checkpoint is not None and spec.checkpoint != reference:
        raise ValueError(f"{name} names its pipeline itself; checkpoint={spec.checkpoint!r} would be a second one "
                         "(drop --checkpoint)")
    local = Path(reference).expanduser()
    looks_local = local.exists() or reference.startswith((".", "/", "~")) or reference.count("/") > 1
    if looks_local and not (local / "model_index.json").is_file():
        what = "does not exist" if not local.exists() else "has no model_index.json (not a saved DiffusionPipeline)"
        raise FileNotFoundError(f"{name}: {local} {what}; pass a folder written by pipeline.save_pretrained or a "
                                "Hugging Face hub id (org/name)")
    source = str(local) if looks_local else reference
    if spec.device == "meta":
        pipe = load_meta_pipeline(source, spec.torch_dtype)
    else:
        from diffusers import DiffusionPipeline

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                pipe = DiffusionPipeline.from_pretrained(source, torch_dtype=spec.torch_dtype,
                                                         local_files_only=looks_local)
        except OSError as err:
            raise FileNotFoundError(f"{name}: {reference!r} is not a local pipeline folder and could not be loaded "
                                    f"from the Hugging Face hub ({str(err).splitlines()[0]})") from None
        pipe = pipe.to(spec.device)
        pipe.set_progress_bar_config(disable=True)
    return DiffusersVideoGenerator(pipe, name=name, reference=reference)


def resolve(reference: str) -> Callable[[GeneratorSpec], DiffusersVideoGenerator]:
    """The factory behind ``diffusers:<reference>`` (what the registry's ``get`` returns)."""
    reference = reference.strip()

    def factory(spec: GeneratorSpec) -> DiffusersVideoGenerator:
        return load_diffusers_generator(reference, spec)

    factory.__doc__ = f"diffusers pipeline {reference}"
    factory.__module__ = __name__
    return factory


GENERATORS.register_scheme(
    SCHEME, resolve, argument="path-or-id",
    description="any diffusers text-to-video pipeline (TextToVideoSD, AnimateDiff, Latte, ...) from a "
                "save_pretrained folder or hub id; its own scheduler and guidance, per-sample seeds",
)
