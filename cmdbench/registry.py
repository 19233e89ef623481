"""Named registries of generators, metrics and datasets, and the plugins that fill them.

A lookup of an unknown name raises :class:`UnknownNameError` listing close matches and every name.
Registration happens by explicit imports in :func:`load_plugins` (:data:`PLUGIN_MODULES`), plus the
``cmdbench.generators`` entry-point group for third-party packages, never by scanning modules or
class-name strings.

Third-party plugins
-------------------
A distribution declares entry points in the group :data:`ENTRY_POINT_GROUP` (``cmdbench.generators``);
every registry (generators, metrics, datasets) may be filled from it. Two forms are accepted::

    [project.entry-points."cmdbench.generators"]
    my-model = "my_pkg.cmdbench_plugin"            # a module: importing it registers
    my-other = "my_pkg.cmdbench_plugin:register"   # a callable: called with no arguments, it registers

A callable is called **with no arguments** and registers through this module's registries itself
(``from cmdbench.registry import GENERATORS``): one way of registering, whichever form names it. Its
return value is ignored. A plugin that fails (import error, a callable that needs arguments or raises,
a name that is already registered) is skipped with one line on stderr naming the entry point and the
error, and everything it had registered before failing is taken out again, so one broken package never
breaks a command. ``CMDBENCH_STRICT_PLUGINS=1`` raises instead (for a plugin's own CI).
:data:`BROKEN_PLUGINS` keeps what was skipped and why.

Name schemes
------------
A registry may also resolve names of the form ``<scheme>:<argument>``: ``GENERATORS.register_scheme(
"diffusers", resolver)`` makes ``GENERATORS.get("diffusers:/path/to/pipeline")`` return
``resolver("/path/to/pipeline")`` (a factory). Schemes are listed by :meth:`Registry.entries` (as
``diffusers:<path-or-id>``) but are not names: :meth:`Registry.names` and the contract test skip them.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Generic, TypeVar

T = TypeVar("T")

ENTRY_POINT_GROUP = "cmdbench.generators"
STRICT_PLUGINS_ENV = "CMDBENCH_STRICT_PLUGINS"


class UnknownNameError(KeyError, ValueError):
    """An unknown registry name. Subclasses KeyError and ValueError so either may be caught."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class PluginError(RuntimeError):
    """A third-party plugin failed to load (raised only under ``CMDBENCH_STRICT_PLUGINS=1``)."""


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    description: str


@dataclass(frozen=True)
class Scheme(Generic[T]):
    """``<scheme>:<argument>`` names: ``resolve(argument)`` returns the object (e.g. a generator factory)."""

    scheme: str
    resolve: Callable[[str], T]
    description: str
    argument: str = "arg"  # shown in listings: "<scheme>:<argument>"


class Registry(Generic[T]):
    """A name -> object map with helpful errors.

    >>> r = Registry[int]("widget"); r.register("one", 1); r.get("one")
    1
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self._schemes: dict[str, Scheme[T]] = {}

    def register(self, name: str, obj: T | None = None, *, description: str = "") -> Any:
        """Register ``obj`` under ``name``; without ``obj``, returns a decorator."""
        if obj is None:

            def decorator(o: T) -> T:
                self.register(name, o, description=description)
                return o

            return decorator
        if name in self._entries and self._entries[name].obj is not obj:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        if ":" in name and name.split(":", 1)[0] in self._schemes:
            raise ValueError(f"{self.kind} name {name!r} would shadow the {name.split(':', 1)[0]}: scheme")
        doc = description or (getattr(obj, "__doc__", None) or "").strip().splitlines()[0:1]
        if isinstance(doc, list):
            doc = doc[0] if doc else ""
        self._entries[name] = Entry(name, obj, doc)
        return obj

    def register_scheme(self, scheme: str, resolve: Callable[[str], T], *, description: str = "",
                        argument: str = "arg") -> None:
        """Resolve ``"<scheme>:<argument>"`` names with ``resolve(argument)`` (see the module docstring)."""
        if not scheme or ":" in scheme:
            raise ValueError(f"{self.kind} scheme {scheme!r}: use a non-empty name without ':'")
        old = self._schemes.get(scheme)
        if old is not None and old.resolve is not resolve:
            raise ValueError(f"{self.kind} scheme {scheme!r} is already registered")
        self._schemes[scheme] = Scheme(scheme, resolve, description, argument)

    def get(self, name: str) -> T:
        entry = self._entries.get(name)
        if entry is not None:
            return entry.obj
        scheme, sep, argument = name.partition(":")
        if sep and scheme in self._schemes:
            if not argument:
                s = self._schemes[scheme]
                raise UnknownNameError(f"{self.kind} {name!r}: write {scheme}:<{s.argument}> ({s.description})")
            return self._schemes[scheme].resolve(argument)
        raise UnknownNameError(self._unknown_message(name))

    def _unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.5)
        scheme = name.partition(":")[0]
        close += [f"{s}:..." for s in difflib.get_close_matches(scheme, list(self._schemes), n=1, cutoff=0.6)]
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        known = sorted(self._entries) + [f"{s.scheme}:<{s.argument}>" for s in self._schemes.values()]
        return f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(known) or '(none)'}"

    def names(self) -> list[str]:
        """Registered names, sorted (schemes are not names)."""
        return sorted(self._entries)

    def schemes(self) -> list[str]:
        return sorted(self._schemes)

    def entries(self) -> Iterator[Entry[Any]]:
        """Every name, then every scheme as ``<scheme>:<argument>`` (its object is the resolver)."""
        for name in self.names():
            yield self._entries[name]
        for scheme in self.schemes():
            s = self._schemes[scheme]
            yield Entry(f"{scheme}:<{s.argument}>", s.resolve, s.description)

    def snapshot(self) -> tuple[dict[str, Entry[T]], dict[str, Scheme[T]]]:
        """The current contents, for :meth:`restore` (plugin rollback, isolated tests)."""
        return dict(self._entries), dict(self._schemes)

    def restore(self, state: tuple[dict[str, Entry[T]], dict[str, Scheme[T]]]) -> None:
        self._entries, self._schemes = dict(state[0]), dict(state[1])

    def __contains__(self, name: object) -> bool:
        """Whether :meth:`get` can resolve ``name``: a registered name or ``<scheme>:<argument>``."""
        if name in self._entries:
            return True
        scheme, sep, argument = str(name).partition(":")
        return bool(sep and argument) and scheme in self._schemes

    def __len__(self) -> int:
        return len(self._entries)


# name -> factory(GeneratorSpec) -> VideoGenerator
GENERATORS: Registry[Callable[..., Any]] = Registry("generator")
# name -> factory(**options) -> VideoMetric
METRICS: Registry[Callable[..., Any]] = Registry("metric")
# name -> dataset class / factory
DATASETS: Registry[Callable[..., Any]] = Registry("dataset")
REGISTRIES: tuple[Registry[Any], ...] = (GENERATORS, METRICS, DATASETS)

# The one explicit import list that registers every built-in generator, metric and dataset.
PLUGIN_MODULES: tuple[str, ...] = (
    "baselines",
    "baselines.diffusers_adapter",
    "cmdbench.cmd.presets",
    "cmdbench.metrics.catalog",
    "cmdbench.metrics.reconstruction",
    "cmdbench.data.datasets",
)
# Entry points that failed to load: "name = value" -> "ExceptionType: message".
BROKEN_PLUGINS: dict[str, str] = {}
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
    load_entry_points()
    _loaded = True


def load_entry_points(group: str = ENTRY_POINT_GROUP) -> list[str]:
    """Load every entry point of ``group`` (see the module docstring); returns the names that loaded.

    A failing entry point is rolled back (all registries as before it), recorded in
    :data:`BROKEN_PLUGINS` and reported in one stderr line; ``CMDBENCH_STRICT_PLUGINS=1`` raises
    :class:`PluginError` instead.
    """
    loaded = []
    for ep in metadata.entry_points(group=group):
        label = f"{ep.name} = {ep.value}"
        before = [r.snapshot() for r in REGISTRIES]
        try:
            run_entry_point(ep)
        except Exception as err:  # noqa: BLE001  (any failure of foreign code: skip that plugin)
            for registry, state in zip(REGISTRIES, before, strict=True):
                registry.restore(state)
            reason = f"{type(err).__name__}: {err}".splitlines()[0]
            dist = f" from {ep.dist.metadata['Name']} {ep.dist.version}" if ep.dist is not None else ""
            if os.environ.get(STRICT_PLUGINS_ENV, "") not in ("", "0"):
                raise PluginError(f"cmdbench plugin {label!r}{dist} failed: {reason}") from err
            BROKEN_PLUGINS[label] = reason
            print(f"cmdbench: skipped plugin {label!r}{dist}: {reason} "
                  f"(set {STRICT_PLUGINS_ENV}=1 for the traceback)", file=sys.stderr)
            continue
        BROKEN_PLUGINS.pop(label, None)
        loaded.append(ep.name)
    return loaded


def run_entry_point(ep: metadata.EntryPoint) -> None:
    """Import ``ep`` (a module registers on import); a named callable is then called with no arguments."""
    obj = ep.load()
    if isinstance(obj, types.ModuleType):
        return
    if not callable(obj):
        raise TypeError(f"{ep.value} is a {type(obj).__name__}; name a module or a callable taking no arguments")
    try:
        inspect.signature(obj).bind()
    except TypeError:
        raise TypeError(f"{ep.value}{inspect.signature(obj)} needs arguments; cmdbench calls a plugin's "
                        "register function with none (register through cmdbench.registry.GENERATORS)") from None
    except ValueError:  # no signature (a builtin): just call it
        pass
    obj()


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]
