"""Pretraining objectives behind one registry: ``train.method`` names one of them.

Every module of this package (but ``base``) defines one objective class and registers it with
:func:`register`; the package imports them all on first use, so adding a method is adding one
file here. Objectives of other packages register the same way, from code that runs before the
run is configured, or through the ``etp.objectives`` entry-point group of their distribution::

    [project.entry-points."etp.objectives"]
    mymethod = "mypackage.objective:MyObjective"
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib import metadata
from typing import TypeVar

from etp.errors import ConfigError
from etp.objectives.base import Batch, NoOptions, Objective, RunContext

_REGISTRY: dict[str, type[Objective]] = {}
_LOADED = False
ENTRY_POINT_GROUP = "etp.objectives"

O = TypeVar("O", bound=type[Objective])


def register(cls: O) -> O:
    """Class decorator: make ``cls`` selectable as ``train.method=<cls.name>``."""
    name = getattr(cls, "name", "")
    if not isinstance(name, str) or not name or name != name.strip():
        raise ConfigError(f"objective {cls.__qualname__} needs a non-empty `name`")
    known = _REGISTRY.get(name)
    if known is not None and known is not cls and known.__qualname__ != cls.__qualname__:
        raise ConfigError(
            f"objective name {name!r} is taken by {known.__module__}.{known.__qualname__}"
        )
    _REGISTRY[name] = cls
    return cls


def _load_builtin() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for mod in pkgutil.iter_modules(__path__):
        if mod.name != "base" and not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}")
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        cls = ep.load()
        if cls.name not in _REGISTRY:
            register(cls)


def names() -> list[str]:
    """Registered objective names, sorted."""
    _load_builtin()
    return sorted(_REGISTRY)


def get(name: str) -> type[Objective]:
    """The objective class registered as ``name`` (ConfigError listing the known ones)."""
    _load_builtin()
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"train.method: unknown objective {name!r} (known: {', '.join(names())})"
        ) from None


def unregister(name: str) -> None:
    """Remove ``name`` from the registry (tests that register a throw-away objective)."""
    _REGISTRY.pop(name, None)


__all__ = [
    "Batch",
    "NoOptions",
    "Objective",
    "RunContext",
    "get",
    "names",
    "register",
    "unregister",
]
