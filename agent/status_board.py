"""The device status in one place: the only builder of ModelStatus/ServingInfo, and the DeviceState publisher.

Written from one module, agent.deploy.deployer: a deployment's steps return their results to the deployer, which
shows them, and what changes a serving version outside a deployment (a rollback in the health window, a re-selection,
a run-time failover) is told to the deployer, which shows it too. Everyone else reads: agent.service (systemd
status, the watchdog's lock check, the state published again on each reconnect) and the RPC `status` call."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, TypedDict

from agent.fetch.store import ModelStore
from agent.serving.table import ModelTable
from protocol import DeviceState, Failover, ModelState, ModelStatus, Problem, Selection, ServingInfo, Shadow

if TYPE_CHECKING:
    from typing_extensions import Unpack


class Fields(TypedDict, total=False):
    """The fields of a model's entry its writer sets, typed as the wire has them: an entry is changed with
    `model_copy(update=...)`, which does not validate, so a value here is dumped as it is given."""

    progress: float
    reason: Problem | None
    backend: str | None
    selection: Selection | None
    failover: Failover | None
    shadow: Shadow | None
    attempt: int


class Changes(Fields, total=False):
    state: ModelState


class StatusBoard:
    """Model statuses by name, under one lock; `send` gets each new DeviceState (the agent publishes it, retained)."""

    def __init__(
        self, device_id: str, table: ModelTable, store: ModelStore, send: Callable[[DeviceState], None]
    ) -> None:
        self.device_id = device_id
        self.table = table
        self.store = store
        self.send = send
        self.lock = threading.Lock()
        self.generation = 0  # of the desired state last reconciled
        self._models: dict[str, ModelStatus] = {}

    # -- reading -----------------------------------------------------------------------------------------------------

    def models(self) -> list[ModelStatus]:
        with self.lock:
            return list(self._models.values())

    def names(self) -> list[str]:
        with self.lock:
            return list(self._models)

    def get(self, name: str) -> ModelStatus | None:
        return self._models.get(name)

    def state(self) -> DeviceState:
        with self.lock:
            return DeviceState(device_id=self.device_id, generation=self.generation, models=list(self._models.values()))

    def publish(self) -> None:
        self.send(self.state())

    # -- writing -----------------------------------------------------------------------------------------------------

    def open(self, name: str, version: str, sha256: str, state: ModelState, **fields: Unpack[Fields]) -> None:
        """Show a model's target version afresh (replacing its entry), with what serves the model now; no publish."""
        serving, previous = self.serving_info(name)
        entry = ModelStatus(
            name=name, version=version, sha256=sha256, state=state, serving=serving, previous=previous, **fields
        )
        with self.lock:
            self._models[name] = entry

    def update(self, name: str, **changes: Unpack[Changes]) -> None:
        """Change fields of a model's entry (none: nothing happens) and publish."""
        self._change(name, dict(changes))

    def update_serving(self, name: str, **changes: Unpack[Changes]) -> None:
        """update(), with `serving` and `previous` read again (after a swap or a rollback)."""
        serving, previous = self.serving_info(name)
        self._change(name, {**changes, "serving": serving, "previous": previous})

    def _change(self, name: str, changes: dict[str, object]) -> None:
        with self.lock:
            current = self._models.get(name)
            if current is None:
                return
            self._models[name] = current.model_copy(update=changes)
        self.publish()

    def remove(self, name: str) -> None:
        with self.lock:
            self._models.pop(name, None)

    # -- what serves -------------------------------------------------------------------------------------------------

    def serving_info(self, name: str) -> tuple[ServingInfo | None, ServingInfo | None]:
        """The version answering requests now, and the one the store keeps from before it."""
        loaded = self.table.current(name)
        serving = (
            ServingInfo(
                version=loaded.version, sha256=loaded.sha256, backend=loaded.backend.label, variant=loaded.variant
            )
            if loaded
            else None
        )
        record = self.store.records.get(name)
        prev = record.previous if record else None
        previous = (
            ServingInfo(version=prev.version, sha256=prev.identity, backend=prev.backend or "", variant=prev.variant)
            if prev
            else None
        )
        return serving, previous

    def serving_backend(self, name: str) -> str | None:
        loaded = self.table.current(name)
        return loaded.backend.label if loaded is not None else None
