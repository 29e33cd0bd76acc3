"""Rollouts as the controller runs them: the operator's actions, the status views the API and the dashboard show, and
the driver thread that ticks the engine while this replica holds the `rollouts` lease (when the holder dies its
lease lapses and another replica's driver takes over from what the store says)."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from controller.db.database import Database
from controller.fleet.deployments import Deployments
from controller.replicas.leases import Leases
from controller.rollouts.actions import RolloutActions
from controller.rollouts.engine import RolloutEngine
from controller.rollouts.store import RolloutStore
from controller.telemetry.tracker import QualityTracker

log = logging.getLogger(__name__)

LEASE = "rollouts"
LEASE_TTL_S = 10.0  # a driver that stops renewing for this long (the database's clock) is replaced
TICK_S = 1.0


def rollout_view(rollout: Mapping[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The public shape (`edgectl rollout status --json`): state, reason, and each wave with its devices, state and
    the gates' figures per class."""
    waves = []
    for wave in rollout["waves"]:
        mine = [r for r in rows if r["wave"] == wave["index"]]
        states: dict[str, int] = {}
        for r in mine:
            states[r["state"]] = states.get(r["state"], 0) + 1
        waves.append({**wave, "devices": [r["device_id"] for r in mine], "device_states": states})
    return {
        "id": rollout["id"], "name": rollout["name"], "model": rollout["model"], "version": rollout["version"],
        "state": rollout["state"], "reason": rollout["reason"], "wave": rollout["wave"], "phase": rollout["phase"],
        "phase_until": rollout["phase_until"], "selector": rollout["spec"]["selector"], "spec": rollout["spec"],
        "waves": waves, "events": rollout["seq"], "created_at": rollout["created_at"],
        "updated_at": rollout["updated_at"],
        "devices": {r["device_id"]: {"wave": r["wave"], "state": r["state"], "class": r["hw_class"],
                                     "previous": r["previous"], "detail": r["detail"]} for r in rows},
    }  # fmt: skip


class Rollouts:
    """Actions, views and the driver over one database; `publisher` deploys (the Fleet's Deployments)."""

    def __init__(
        self, db: Database, deployments: Deployments, owner: str | None = None,
        disk_free_mb: Callable[[str], float | None] = lambda _: None, tick_s: float = TICK_S,
        quality: QualityTracker | None = None,
    ) -> None:  # fmt: skip
        self.db = db
        self.store = RolloutStore(db)
        self.engine = RolloutEngine(db, self.store, deployments, quality)
        self.actions = RolloutActions(db, self.store, deployments, disk_free_mb)
        self.leases = Leases(db.writer, owner or f"rollouts-{uuid.uuid4().hex[:8]}", LEASE_TTL_S)
        self.tick_s = tick_s
        self.driving = False
        self.ticks = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def status(self, rollout_id: str) -> dict[str, Any]:
        return rollout_view(self.store.get(rollout_id), self.store.devices(rollout_id))

    def listed(self) -> list[dict[str, Any]]:
        return [
            {k: r[k] for k in ("id", "name", "model", "version", "state", "reason", "wave", "created_at")}
            | {"waves": len(r["waves"])}
            for r in self.store.listed()
        ]

    def events(self, rollout_id: str, after: int = 0) -> list[dict[str, Any]]:
        self.store.get(rollout_id)  # unknown_rollout
        return self.store.events(rollout_id, after)

    # -- the driver ----------------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rollouts", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.driving:
            try:
                self.leases.release(LEASE)
            except SQLAlchemyError as exc:
                log.warning("could not give up the rollouts lease: %s", str(exc).splitlines()[0])

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                held = self.leases.acquire(LEASE)
                if held != self.driving:
                    log.info("this replica %s the rollouts", "now drives" if held else "no longer drives")
                self.driving = held
                if held:
                    self.engine.tick()
                    self.ticks += 1
            except SQLAlchemyError as exc:
                log.warning("rollouts: %s", str(exc).splitlines()[0])
            except Exception:
                log.exception("rollouts: tick failed")
            self._stop.wait(max(0.0, self.tick_s - (time.monotonic() - started)))
