"""Follows devices until each one serves a given artifact, fails, or the timeout passes."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgectl.client import ApiError, ControllerClient

CONTROLLER_GONE_S = 5.0  # a controller that has not answered for this long while we wait is reported as lost


class ControllerLost(ApiError):
    """The controller stopped answering while edgectl waited on the devices: said within seconds, not at the
    timeout."""

    code = "controller_lost"


@dataclass
class DeviceOutcome:
    device: str
    state: str = "pending"
    progress: float = 0.0
    backend: str | None = None
    reason: str | None = None

    @property
    def done(self) -> bool:
        return self.state in ("serving", "failed")


ALREADY_SERVING = "already serving this version"


def model_entry(device: dict[str, Any], name: str, sha256: str, attempt: int = 0) -> dict[str, Any] | None:
    """The device's entry for this version of the model, at `attempt` or later (an older outcome is stale), or
    serving it since an earlier attempt: a device reports no new attempt for a version it serves already."""
    for entry in device.get("models", []):
        if entry.get("name") == name and entry.get("sha256") == sha256:
            current = int(entry.get("attempt") or 0) >= attempt
            return entry if current or entry.get("state") == "serving" else None
    return None


def observe(device: dict[str, Any], name: str, sha256: str, outcome: DeviceOutcome, attempt: int = 0) -> None:
    entry = model_entry(device, name, sha256, attempt)
    online = bool(device.get("online"))
    outcome.reason = None if online else "device is offline"
    if entry is None:
        return
    outcome.state = entry.get("state") or "pending"
    outcome.progress = float(entry.get("progress") or 0.0)
    outcome.backend = entry.get("backend")
    reason = entry.get("reason")
    outcome.reason = reason.get("message") if isinstance(reason, dict) else None
    if outcome.state == "serving" and int(entry.get("attempt") or 0) < attempt:
        outcome.reason = ALREADY_SERVING + ("" if online else " (as last reported: the device is offline)")


def wait_serving(
    client: ControllerClient,
    devices: list[str],
    name: str,
    sha256: str,
    timeout: float,
    on_update: Callable[[DeviceOutcome], None] | None = None,
    poll: float = 0.1,
    attempts: dict[str, int] | None = None,
    gone_after: float = CONTROLLER_GONE_S,
) -> dict[str, DeviceOutcome]:
    """Poll the controller until every device serves `sha256` or failed, or `timeout` passes; ControllerLost once
    the controller has not answered for `gone_after` seconds."""
    outcomes = {d: DeviceOutcome(d) for d in devices}
    started = time.monotonic()
    deadline = started + timeout
    silent_since: float | None = None
    while time.monotonic() < deadline and not all(o.done for o in outcomes.values()):
        for device_id, outcome in outcomes.items():
            if outcome.done:
                continue
            try:
                device = client.device(device_id, timeout=gone_after)
                observe(device, name, sha256, outcome, (attempts or {}).get(device_id, 0))
                silent_since = None
            except ApiError as exc:
                if exc.status is not None:  # it answered: an error about this device, not a lost controller
                    outcome.reason = str(exc)
                else:
                    silent_since = silent_since or time.monotonic()
                    if time.monotonic() - silent_since >= gone_after:
                        raise lost(client, devices, gone_after, time.monotonic() - started) from None
            if on_update:
                on_update(outcome)
        time.sleep(poll)
    for outcome in outcomes.values():
        if not outcome.done:
            outcome.reason = f"timed out after {timeout:g}s while {outcome.state}" + (
                f" ({outcome.reason})" if outcome.reason else ""
            )
    return outcomes


def lost(client: ControllerClient, devices: list[str], gone_after: float, waited: float) -> ControllerLost:
    return ControllerLost(
        f"lost the controller at {client.base_url}: no answer for {gone_after:g}s, {waited:.0f}s into the "
        f"wait; the deployment stands, `edgectl status {devices[0]}` shows it once the controller is back"
    )
