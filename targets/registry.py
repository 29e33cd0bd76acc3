"""Discovers backend modules with pkgutil and builds the discriminated config union: callers never branch on names."""

from __future__ import annotations

import importlib
import pkgutil
import types
from functools import cache
from typing import Annotated, Any, Union

from pydantic import Field, TypeAdapter

from targets import backends
from targets.base import Backend, BackendConfig


@cache
def backend_types() -> dict[str, type[Backend]]:
    """All backend classes by type key. Importing a plugin module never imports its runtime."""
    found: dict[str, type[Backend]] = {}
    for info in pkgutil.iter_modules(backends.__path__):
        module = importlib.import_module(f"{backends.__name__}.{info.name}")
        for obj in vars(module).values():
            if isinstance(obj, types.GenericAlias):  # `list[int]` passes isinstance(..., type) on 3.9/3.10
                continue
            if isinstance(obj, type) and issubclass(obj, Backend) and obj is not Backend and hasattr(obj, "type_key"):
                found[obj.type_key] = obj
    return found


@cache
def _config_adapter() -> TypeAdapter[Any]:
    configs = tuple(cls.config_class for cls in backend_types().values())
    union = Annotated[Union[configs], Field(discriminator="type")]  # type: ignore[valid-type]  # noqa: UP007 - dynamic union
    return TypeAdapter(union)


def parse_config(options: dict[str, Any]) -> BackendConfig:
    """Validate backend options (with `type`) against that backend's own config class."""
    config: BackendConfig = _config_adapter().validate_python(options)
    return config


def create(name: str, options: dict[str, Any] | None = None) -> Backend:
    """A fresh, unloaded backend instance by name."""
    types = backend_types()
    if name not in types:
        raise KeyError(f"unknown backend {name!r}; known: {', '.join(sorted(types))}")
    config = parse_config({**(options or {}), "type": name})
    return types[name](config)


def installed_backends(model_format: str | None = None) -> list[str]:
    """Backends whose runtime is importable here (and that read `model_format`, when given)."""
    return [
        key
        for key, cls in backend_types().items()
        if cls.installed() and (model_format is None or model_format in cls.formats)
    ]
