"""Loading components of a real checkpoint (local directory or hub id) with errors that name what is missing.

A checkpoint is a diffusers-layout directory (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
``scheduler/`` ...) or a hub id resolved from the local Hugging Face cache. ``HF_HUB_OFFLINE=1`` is
honoured by ``from_pretrained`` itself; nothing here downloads on its own.

Networks are loaded directly in the compute dtype (``torch_dtype=`` for diffusers models, ``dtype=`` for
transformers models), so transformers keeps the modules a model lists in ``_keep_in_fp32_modules`` in
float32 (T5's ``wo``) exactly as its own fp16 loading does. In float16 the checkpoint's ``fp16`` variant
files (``*.fp16.safetensors``, as the ModelScope and SD repositories publish them) are preferred; where a
component has none, its default weights are loaded and cast, with a warning.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

FP16_VARIANT = "fp16"


class MissingWeightsError(FileNotFoundError):
    """A checkpoint directory or hub id lacks a component the generator needs."""


def is_local(checkpoint: str) -> bool:
    """Whether ``checkpoint`` names an existing local path (else it is treated as a hub id)."""
    return Path(checkpoint).expanduser().exists()


def require_subfolders(name: str, checkpoint: str, subfolders: Sequence[str], layout_hint: str) -> None:
    """Raise :class:`MissingWeightsError` when a local ``checkpoint`` lacks any of ``subfolders``."""
    path = Path(checkpoint).expanduser()
    if not path.exists():
        return  # a hub id: from_pretrained reports it (see load_component)
    if not path.is_dir():
        raise MissingWeightsError(f"{name}: checkpoint {path} is a file; expected a directory ({layout_hint})")
    missing = [s for s in subfolders if not (path / s).is_dir()]
    if missing:
        raise MissingWeightsError(
            f"{name}: checkpoint directory {path} lacks {missing}; expected subfolders "
            f"{list(subfolders)} ({layout_hint})"
        )


def has_subfolder(checkpoint: str, subfolder: str) -> bool:
    """Whether a local ``checkpoint`` has ``subfolder/`` (a hub id: assumed to, from_pretrained decides)."""
    path = Path(checkpoint).expanduser()
    return (path / subfolder).is_dir() if path.exists() else True


def _dtype_kwargs(cls: Any, dtype: torch.dtype | None) -> dict[str, Any]:
    """The keyword that makes ``cls.from_pretrained`` load in ``dtype`` (none for tokenizers, schedulers)."""
    if dtype is None or not isinstance(cls, type) or not issubclass(cls, torch.nn.Module):
        return {}
    from transformers import PreTrainedModel

    # transformers 5 names it ``dtype`` (``torch_dtype`` is its deprecated alias); diffusers ``torch_dtype``
    return {"dtype": dtype} if issubclass(cls, PreTrainedModel) else {"torch_dtype": dtype}


def _from_pretrained(cls: Any, checkpoint: str, subfolder: str | None, **kwargs: Any) -> Any:
    if is_local(checkpoint):
        path = Path(checkpoint).expanduser() / (subfolder or "")
        return cls.from_pretrained(path, local_files_only=True, **kwargs)
    return cls.from_pretrained(checkpoint, **({"subfolder": subfolder} if subfolder else {}), **kwargs)


def load_component(name: str, cls: Any, checkpoint: str, subfolder: str | None, *,
                   dtype: torch.dtype | None = None, **kwargs: Any) -> Any:
    """``cls.from_pretrained(checkpoint, subfolder=subfolder)`` in ``dtype``, with a clear error when it
    cannot be found. ``subfolder=None``: the checkpoint itself is the component (e.g. a motion adapter).

    ``dtype=torch.float16`` prefers the ``fp16`` variant files and falls back to the default weights.
    """
    local = is_local(checkpoint)
    where = (str(Path(checkpoint).expanduser() / (subfolder or "")) if local
             else f"{checkpoint}" + (f" (subfolder {subfolder!r})" if subfolder else ""))
    kwargs = {**_dtype_kwargs(cls, dtype), **kwargs}
    if dtype == torch.float16 and "variant" not in kwargs and _dtype_kwargs(cls, dtype):
        try:
            return _from_pretrained(cls, checkpoint, subfolder, variant=FP16_VARIANT, **kwargs)
        except OSError:
            warnings.warn(f"{name}: {where} has no {FP16_VARIANT!r} variant of {cls.__name__}; loading its "
                          "default weights in float16", stacklevel=2)
    try:
        return _from_pretrained(cls, checkpoint, subfolder, **kwargs)
    except (OSError, ValueError) as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
        hint = (
            " HF_HUB_OFFLINE is set, so the hub id must already be in the local Hugging Face cache."
            if offline and not local
            else ""
        )
        raise MissingWeightsError(
            f"{name}: cannot load {cls.__name__} from {where}: {err}.{hint}"
        ) from err


def kept_in_float32(module: torch.nn.Module, dtype: torch.dtype) -> tuple[str, ...]:
    """Names transformers keeps in float32 when ``module`` runs in ``dtype``: ``_keep_in_fp32_modules``
    for float16, ``_keep_in_fp32_modules_strict`` for float16 and bfloat16 (as its ``from_pretrained``)."""
    keep: set[str] = set()
    if dtype == torch.float16:
        keep |= set(getattr(module, "_keep_in_fp32_modules", None) or ())
    if dtype in (torch.float16, torch.bfloat16):
        keep |= set(getattr(module, "_keep_in_fp32_modules_strict", None) or ())
    return tuple(sorted(keep))


def place(module: torch.nn.Module, device: str, dtype: torch.dtype) -> torch.nn.Module:
    """Move a built or loaded module to ``device``/``dtype`` (meta modules change only their dtype).

    Submodules transformers keeps in float32 (:func:`kept_in_float32`) stay in float32, so a model built
    with random weights matches one loaded by ``from_pretrained`` in the same dtype.
    """
    from diffusers.utils import logging as diffusers_logging

    module = module.to(device=device)
    keep = kept_in_float32(module, dtype)

    def kept(param_name: str) -> bool:
        return any(part in keep for part in param_name.split(".")[:-1])

    wanted = {n: (torch.float32 if kept(n) else dtype) for n, p in module.named_parameters()
              if p.is_floating_point()}
    if all(p.dtype == wanted[n] for n, p in module.named_parameters() if n in wanted):
        return module
    # diffusers warns about "modules to keep in float32" on every cast; the kept ones are restored below
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        module = module.to(dtype=dtype)
    finally:
        diffusers_logging.set_verbosity(verbosity)
    for sub_name, sub in module.named_modules():
        if sub_name.split(".")[-1] in keep:
            sub.float()
    return module
