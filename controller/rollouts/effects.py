"""What a rollout's transitions do to the fleet, applied after they commit: each device row names the version the
rollout wants deployed there (`target`; "" for none) and whether that is done (`applied`). Applying is idempotent (a
device already at its target is left alone), so a replica taking over simply applies what is still marked undone."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from controller.fleet.deployments import Deployments
from controller.rollouts.store import RolloutStore
from protocol.errors import EdgeError

log = logging.getLogger(__name__)


def revert_target(row: Mapping[str, Any]) -> str:
    """The version a device goes back to: its previous one, or "" (the model removed) when it had none."""
    return str(row["previous"] or "")


def apply_pending(
    store: RolloutStore, deployments: Deployments, rollout: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]
) -> int:
    """Deploy each undone target (the new version, or the previous one when reverting); how many were applied."""
    model = rollout["model"]
    applied = 0
    for row in rows:
        if row["applied"] or row["target"] is None:
            continue
        device_id, target = row["device_id"], row["target"]
        detail = None
        try:
            current = deployments.db.get_deployment(device_id, model)
            if target == "":
                if current is not None:
                    deployments.undeploy(device_id, model)
            elif current is None or current["version"] != target:
                deployments.deploy(model, target, [device_id], retry=True)
        except EdgeError as exc:  # the device or version went away: record why, do not retry forever
            detail = f"could not deploy {model} {target or '(removal)'}: {exc}"[:500]
            log.warning("rollout %s: %s on %s", rollout["id"], detail, device_id)
        values: dict[str, Any] = {"applied": True}
        if detail:
            values["detail"] = detail
        if store.observe(rollout["id"], device_id, None, **values):
            applied += 1
    if applied:
        log.info("rollout %s: applied %d deployment change(s) of %s", rollout["id"], applied, model)
    return applied
