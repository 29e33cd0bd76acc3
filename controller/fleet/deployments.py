"""Deployments: a model version made the desired one on devices, and a rollback planned to an earlier version (by
default the one the device still keeps as `previous`), each then published to the devices."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

from controller.db.database import Database, ModelRow
from controller.db.devices import find_device
from controller.registry.optimizer import choose_variants
from protocol import DEVICE_ID_PATTERN
from protocol.errors import EdgeError


class Publisher(Protocol):
    """What tells a device its desired state (the Fleet)."""

    def publish_desired(self, device_id: str) -> object: ...


@dataclass(frozen=True)
class RollbackPlan:
    """Which model of a device goes back to which registered version, with the backend it keeps."""

    device_id: str
    model: str
    target: ModelRow
    backend: str | None
    current: ModelRow | None


def check_devices(db: Database, device_ids: list[str]) -> None:
    """unknown_device unless every id names a device that has connected."""
    bad = [d for d in device_ids if not re.match(DEVICE_ID_PATTERN, d)]
    unknown = sorted(set(device_ids) - db.known_devices([d for d in device_ids if d not in bad]))
    if unknown:
        known = ", ".join(d["id"] for d in db.list_devices())
        raise EdgeError(
            f"unknown device(s) {', '.join(unknown)}; a device is known once its agent has connected. "
            f"Known devices: {known or 'none yet'}",
            code="unknown_device",
        )


def pick_model(device_id: str, names: list[str], wanted: str | None) -> str:
    """The model to roll back: `wanted` if the device has it, else its only one (which_model / unknown_model)."""
    if wanted is not None:
        if wanted not in names:
            raise EdgeError(f"device {device_id} has no model {wanted!r}; its models: {names}", code="unknown_model")
        return wanted
    if len(names) != 1:
        message = (
            f"device {device_id} has {len(names)} models {names}: say which one to roll back (--model)"
            if names
            else f"device {device_id} has no model to roll back"
        )
        raise EdgeError(message, code="which_model")
    return names[0]


def refuse_failed_before(db: Database, device_id: str, row: ModelRow) -> None:
    """failed_before when the device reports this very version failed: trying it again is the operator's call."""
    device = db.get_device(device_id) or {}
    for entry in device.get("state") or []:
        if entry.get("name") == row.name and entry.get("sha256") == row.sha256 and entry.get("state") == "failed":
            reason = (entry.get("reason") or {}).get("message") or "no reason given"
            raise EdgeError(
                f"{row.name} version {row.version} already failed on {device_id} ({reason}); "
                "pass --retry to try it again",
                code="failed_before",
            )


def previous_version(device_id: str, name: str, reported: dict[str, Any] | None) -> str:
    """The version the device reports as the model's previous one (no_previous when it reports none)."""
    previous = (reported or {}).get("previous")
    if not previous:
        raise EdgeError(
            f"device {device_id} reports no previous version of {name} to roll back to; "
            "name a registered version with --to",
            code="no_previous",
        )
    return previous["version"]


class Deployments:
    """Writes desired deployments to `db` and publishes them through `fleet`."""

    def __init__(self, db: Database, fleet: Publisher) -> None:
        self.db = db
        self.fleet = fleet

    def deploy(
        self,
        model: str,
        version: str | None,
        devices: list[str],
        backend: str | None = None,
        variants: list[str] | None = None,
        force: bool = False,
        retry: bool = False,
    ) -> dict[str, Any]:
        """Make `model` at `version` (default: the newest) the desired one on each device (all must be known); a
        version a device reports failed is deployed again (a new attempt) only with `retry`."""
        check_devices(self.db, devices)
        row = self.db.get_model(model, version)
        if row is None:
            raise EdgeError(f"model {model!r} version {version or 'latest'} not found", code="unknown_model")
        if not retry:
            for device_id in devices:
                refuse_failed_before(self.db, device_id, row)
        variant_names = choose_variants(self.db, row, variants, force)
        result = []
        for d in devices:
            generation = self._apply(d, row, backend, variant_names)
            result.append({"device": d, "generation": generation, "attempt": self.attempt(d, row.name)})
        return {
            "model": row.name,
            "version": row.version,
            "sha256": row.sha256,
            "variants": variant_names,
            "deployments": result,
        }

    def plan_rollback(self, device_id: str, model: str | None = None, to: str | None = None) -> RollbackPlan:
        """What a rollback would deploy: `to` a registered version, or the device's `previous` one."""
        device = find_device(self.db, device_id)
        reported = {m.get("name"): m for m in device.get("state") or []}
        deployed = {m.name: (m, backend) for m, backend in self.db.desired_models(device_id)}
        name = pick_model(device_id, sorted(set(reported) | set(deployed)), model)
        current, backend = deployed.get(name, (None, None))
        version = to if to is not None else previous_version(device_id, name, reported.get(name))
        target = self.db.get_model(name, version)
        if target is None:
            known = ", ".join(m.version for m in self.db.list_models() if m.name == name)
            raise EdgeError(
                f"{name} version {version!r} is not registered; registered: {known}", code="unknown_version"
            )
        return RollbackPlan(device_id, name, target, backend, current)

    def rollback(self, device_id: str, model: str | None = None, to: str | None = None) -> dict[str, Any]:
        """Deploy the planned earlier version again, with every passing variant of it."""
        plan = self.plan_rollback(device_id, model, to)
        variant_names = choose_variants(self.db, plan.target, None, False)
        generation = self._apply(device_id, plan.target, plan.backend, variant_names)
        return {
            "device": device_id,
            "model": plan.model,
            "version": plan.target.version,
            "sha256": plan.target.sha256,
            "from": plan.current.version if plan.current else None,
            "generation": generation,
            "attempt": self.attempt(device_id, plan.model),
        }

    def undeploy(self, device_id: str, model: str) -> dict[str, Any]:
        """Remove `model` from the device's desired state: the agent stops serving it and deletes its files."""
        find_device(self.db, device_id)
        generation = self.db.remove_deployment(device_id, model)
        if generation is None:
            deployed = sorted(m.name for m, _ in self.db.desired_models(device_id))
            raise EdgeError(
                f"model {model!r} is not deployed to {device_id}; deployed: {deployed}", code="not_deployed"
            )
        self.fleet.publish_desired(device_id)
        return {"device": device_id, "model": model, "generation": generation}

    def attempt(self, device_id: str, model: str) -> int:
        """The attempt the device's desired state carries for `model` (what --wait waits for)."""
        return self.db.deployment_attempts(device_id).get(model, 0)

    def _apply(self, device_id: str, model: ModelRow, backend: str | None, variants: list[str]) -> int:
        """Record the deployment and publish the device's new desired state; its generation."""
        generation = self.db.set_deployment(device_id, model, backend, variants)
        self.fleet.publish_desired(device_id)
        return generation
