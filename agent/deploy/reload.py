"""Loads an unloaded model's serving version again from the store (agent/serving/eviction.py asks on its next
request): the cached backend choice, the stored samples, the memory budget's admission like any load."""

from __future__ import annotations

from collections.abc import Callable

from agent.deploy.downloads import Downloads
from agent.deploy.loader import Loader
from agent.fetch.store import ModelStore
from agent.serving.table import LoadedModel


def reloader(loader: Loader, store: ModelStore, downloads: Downloads) -> Callable[[str], LoadedModel | None]:
    """`reload(name)`: the model's serving version loaded and warm (None when the store no longer has it)."""

    def reload(name: str) -> LoadedModel | None:
        record = store.records.get(name)
        installed = record.serving if record is not None else None
        if installed is None or not store.path(installed.sha256).exists():
            return None
        loaded = loader.load(
            name, installed.version, installed.sha256, installed.format,
            samples=downloads.stored_samples(installed.samples), hints=installed.input_shapes, defer_trial=True,
        )  # fmt: skip
        return loaded.model

    return reload
