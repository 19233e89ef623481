"""Loading components of a real checkpoint (local directory or hub id) with errors that name what is missing.

A checkpoint is a diffusers-layout directory (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
``scheduler/`` ...) or a hub id resolved from the local Hugging Face cache. ``HF_HUB_OFFLINE=1`` is
honoured by ``from_pretrained`` itself; nothing here downloads on its own.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


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


def load_component(name: str, cls: Any, checkpoint: str, subfolder: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained(checkpoint, subfolder=subfolder)`` with a clear error when it cannot be found."""
    local = is_local(checkpoint)
    where = str(Path(checkpoint).expanduser() / subfolder) if local else f"{checkpoint} (subfolder {subfolder!r})"
    try:
        if local:
            return cls.from_pretrained(Path(checkpoint).expanduser() / subfolder, local_files_only=True, **kwargs)
        return cls.from_pretrained(checkpoint, subfolder=subfolder, **kwargs)
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
