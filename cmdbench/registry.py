"""Named registries of generators, metrics and datasets.

A lookup of an unknown name raises :class:`UnknownNameError` listing close matches and every name.
Registration happens by explicit imports in :func:`load_plugins` (plus the ``cmdbench.generators``
entry-point group for third-party packages), never by scanning modules or class-name strings.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError, ValueError):
    """An unknown registry name. Subclasses KeyError and ValueError so either may be caught."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    description: str


class Registry(Generic[T]):
    """A name -> object map with helpful errors.

    >>> r = Registry[int]("widget"); r.register("one", 1); r.get("one")
    1
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, obj: T | None = None, *, description: str = "") -> Any:
        """Register ``obj`` under ``name``; without ``obj``, returns a decorator."""
        if obj is None:

            def decorator(o: T) -> T:
                self.register(name, o, description=description)
                return o

            return decorator
        if name in self._entries and self._entries[name].obj is not obj:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        doc = description or (getattr(obj, "__doc__", None) or "").strip().splitlines()[0:1]
        if isinstance(doc, list):
            doc = doc[0] if doc else ""
        self._entries[name] = Entry(name, obj, doc)
        return obj

    def get(self, name: str) -> T:
        try:
            return self._entries[name].obj
        except KeyError:
            raise UnknownNameError(self._unknown_message(name)) from None

    def _unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        return f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(sorted(self._entries)) or '(none)'}"

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> Iterator[Entry[T]]:
        for name in self.names():
            yield self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)


# name -> factory(GeneratorSpec) -> VideoGenerator
GENERATORS: Registry[Callable[..., Any]] = Registry("generator")
# name -> factory(**options) -> VideoMetric
METRICS: Registry[Callable[..., Any]] = Registry("metric")
# name -> dataset class / factory
DATASETS: Registry[Callable[..., Any]] = Registry("dataset")

# The one explicit import list that registers every built-in generator, metric and dataset.
PLUGIN_MODULES: tuple[str, ...] = (
    "baselines",
    "cmdbench.cmd.presets",
    "cmdbench.metrics.catalog",
    "cmdbench.data.datasets",
)
_loaded = False


def load_plugins() -> None:
    """Import every registering module once (idempotent), then third-party entry points."""
    global _loaded
    if _loaded:
        return
    for module in PLUGIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:  # a part not built yet must not break the rest
            if err.name not in {module, *_parents(module)}:
                raise
    for ep in metadata.entry_points(group="cmdbench.generators"):
        ep.load()
    _loaded = True


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]
