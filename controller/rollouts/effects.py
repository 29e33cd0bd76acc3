"""What a rollout's transitions do to the fleet, applied after they commit: each device row names the version the
rollout wants deployed there (`target`; "" for none) and whether that is done (`applied`). Applying is idempotent (a
device already at its target is left alone), so a replica taking over simply applies what is still marked undone.
A wave is applied as a batch: its desired-state rows in one transaction, its publishes queued back to back, the rows
marked done in one transaction (a 400-device wave one deployment at a time took most of a 15 s bake's wave)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from controller.db.database import Database
from controller.db.schema import deployment_variants
from controller.db.schema import deployments as deployments_table
from controller.db.schema import devices as devices_table
from controller.fleet.deployments import Deployments, check_devices
from controller.registry.optimizer import choose_variants
from controller.rollouts.store import CHUNK, RolloutStore
from protocol.errors import EdgeError

log = logging.getLogger(__name__)


def revert_target(row: Mapping[str, Any]) -> str:
    """The version a device goes back to: its previous one, or "" (the model removed) when it had none."""
    return str(row["previous"] or "")


def current_versions(db: Database, model: str, device_ids: Sequence[str]) -> dict[str, str]:
    """device -> the version of `model` deployed there now (devices without it left out): one query per 500."""
    found: dict[str, str] = {}
    with db.engine.connect() as conn:
        for i in range(0, len(device_ids), CHUNK):
            query = sa.select(deployments_table.c.device_id, deployments_table.c.version).where(
                deployments_table.c.model_name == model, deployments_table.c.device_id.in_(device_ids[i : i + CHUNK])
            )
            found.update({d: v for d, v in conn.execute(query).all()})
    return found


def deploy_many(deployments: Deployments, model: str, version: str, device_ids: Sequence[str]) -> None:
    """`Deployments.deploy(model, version, ids, retry=True)` for a whole wave: the desired-state rows of every
    device in one transaction (not one per device), then each device's desired state published (QoS 1 publishes
    are queued, not waited for, so they travel pipelined)."""
    db = deployments.db
    ids = list(dict.fromkeys(device_ids))
    check_devices(db, ids)
    row = db.get_model(model, version)
    if row is None:
        raise EdgeError(f"model {model!r} version {version} not found", code="unknown_model")
    variants = choose_variants(db, row, None, False)
    now = time.time()
    with db.engine.begin() as conn:
        for i in range(0, len(ids), CHUNK):
            chunk = ids[i : i + CHUNK]
            conn.execute(deployments_table.delete().where(deployments_table.c.model_name == model,
                                                          deployments_table.c.device_id.in_(chunk)))  # fmt: skip
            conn.execute(deployment_variants.delete().where(deployment_variants.c.model_name == model,
                                                            deployment_variants.c.device_id.in_(chunk)))  # fmt: skip
            if variants:
                conn.execute(deployment_variants.insert(), [{"device_id": d, "model_name": model,
                                                             "variants": list(variants)} for d in chunk])  # fmt: skip
            conn.execute(deployments_table.insert(), [{"device_id": d, "model_name": model, "version": version,
                                                       "backend": None, "created_at": now} for d in chunk])  # fmt: skip
            conn.execute(devices_table.update().where(devices_table.c.id.in_(chunk))
                         .values(generation=devices_table.c.generation + 1))  # fmt: skip
    for device_id in ids:
        deployments.fleet.publish_desired(device_id)


def apply_pending(
    store: RolloutStore, deployments: Deployments, rollout: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]
) -> int:
    """Deploy each undone target (the new version, or the previous one when reverting), a batch per target version,
    and mark them done in one transaction; how many were applied. A batch the database or the registry refuses is
    tried one device at a time, so each device's row says why it could not be deployed."""
    model = rollout["model"]
    todo = [row for row in rows if not row["applied"] and row["target"] is not None]
    if not todo:
        return 0
    current = current_versions(deployments.db, model, [row["device_id"] for row in todo])
    batches: dict[str, list[str]] = {}
    details: dict[str, str] = {}
    for row in todo:
        device_id, target = row["device_id"], row["target"]
        if target == "":
            if device_id in current:
                try:
                    deployments.undeploy(device_id, model)
                except EdgeError as exc:
                    details[device_id] = f"could not remove {model}: {exc}"[:500]
        elif current.get(device_id) != target:
            batches.setdefault(target, []).append(device_id)
    known = deployments.db.known_devices([d for ids in batches.values() for d in ids])
    for target, ids in batches.items():
        for device_id in [d for d in ids if d not in known]:
            details[device_id] = f"could not deploy {model} {target}: unknown device {device_id}"
        ids = [d for d in ids if d in known]
        if not ids:
            continue
        try:
            deploy_many(deployments, model, target, ids)
        except EdgeError:  # a device or the version went away meanwhile: find which, record why, do not retry forever
            for device_id in ids:
                try:
                    deployments.deploy(model, target, [device_id], retry=True)
                except EdgeError as exc:
                    details[device_id] = f"could not deploy {model} {target}: {exc}"[:500]
    for device_id, detail in details.items():
        log.warning("rollout %s: %s on %s", rollout["id"], detail, device_id)
    applied = store.mark_applied(rollout["id"], [row["device_id"] for row in todo], details)
    if applied:
        log.info("rollout %s: applied %d deployment change(s) of %s", rollout["id"], applied, model)
    return applied
