"""Puts the previous version back at once when a fresh one misbehaves in its health window; never retries it.

The replaced version stays loaded (standby) through the window; agent.serving.health's watch says what went wrong.
A rollback is returned (RolledBack) to the health thread's owner, agent.deploy.deployer, which shows it."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace

from agent.config import AgentConfig
from agent.deploy.crashguard import CrashGuard
from agent.fetch.store import Installed, ModelStore, Refusal
from agent.serving.health import HealthWatch
from agent.serving.table import LoadedModel, ModelTable
from protocol import Problem

log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 0.25


@dataclass(frozen=True)
class RolledBack:
    """`name` serves its previous version again (on `backend`); `problem` says why the fresh one went."""

    name: str
    problem: Problem
    backend: str


class Rollback:
    """Swaps versions in under watch, and rolls them back; the deploy worker and the health thread both swap."""

    def __init__(self, config: AgentConfig, table: ModelTable, store: ModelStore, guard: CrashGuard) -> None:
        self.config = config
        self.guard = guard
        self.table = table
        self.store = store
        self.lock = threading.RLock()
        self._standby: dict[str, LoadedModel] = {}  # the version a fresh swap replaced, kept for instant rollback

    def standby(self, name: str) -> LoadedModel | None:
        """The version kept loaded to roll `name` back to, while its new version is in its health window."""
        return self._standby.get(name)

    def swap_in(self, model: LoadedModel, installed: Installed) -> None:
        """Serve `model` now (watched for health_window_s), keeping the version it replaces loaded for a rollback."""
        window = self.config.health_window_s
        with self.lock:
            watched = replace(model, watch=HealthWatch(window, self.config.rollback_max_errors)) if window else model
            old = self.table.swap(watched)
            if old is not None:
                self._standby[model.name] = old
            self.store.mark_serving(model.name, installed)
            if window:  # the agent's death before the window ends counts against this version
                self.guard.begin(model.name, model.sha256, model.version, model.attempt, "serving", window)
            else:
                self.guard.end(model.name)

    def forget(self, name: str) -> None:
        with self.lock:
            self._standby.pop(name, None)

    # -- the health window -------------------------------------------------------------------------------------------

    def check_all(self) -> list[RolledBack]:
        """One round of the health thread (every CHECK_INTERVAL_S): check every serving model's health window, and
        let crash-guard marks past their window go; the rollbacks it made."""
        done = [rolled for name in self.table.names() if (rolled := self.check(name)) is not None]
        self.guard.expire()
        return done

    def check(self, name: str) -> RolledBack | None:
        """Roll `name` back if its watch found a problem; free its standby once the window passed cleanly."""
        model = self.table.current(name)
        watch = model.watch if model is not None else None
        if model is None or watch is None:
            return None
        if watch.problem:
            return self.rollback(name, model, watch.problem)
        if watch.passed and name in self._standby:
            self.forget(name)  # healthy: the replaced version may be freed
            self.guard.end(name)
            log.info("%s %s passed its health window (%d requests)", name, model.version, watch.requests)
        return None

    def rollback(self, name: str, bad: LoadedModel, reason: str) -> RolledBack | None:
        """Put the version that served before back (kept loaded during the window), and never retry this one."""
        with self.lock:
            if self.table.current(name) is not bad:
                return None
            old = self._standby.pop(name, None)
            if old is None:
                log.error("cannot roll back %s %s (%s): the previous version is not loaded", name, bad.version, reason)
                return None
            self.table.swap(old)
            self.store.mark_serving(name, self._installed(name, old))
            message = f"rolled back to version {old.version}: {reason}"
            self.store.reject(name, bad.sha256, Refusal(message, "rolled_back", bad.attempt))
            self.guard.end(name)
        log.error("%s %s %s", name, bad.version, message)
        return RolledBack(name, Problem(code="rolled_back", message=message), old.backend.label)

    def _installed(self, name: str, model: LoadedModel) -> Installed:
        """The store's record of a loaded version (a fresh one if the history no longer holds it)."""
        record = self.store.records.get(name)
        found = next((h for h in (record.history if record else []) if h.identity == model.sha256), None)
        return found or Installed(model.version, model.artifact, "onnx", model.backend.label)
