"""Follows devices until each one serves a given artifact, fails, or the timeout passes."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgectl.client import ApiError, ControllerClient


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


def model_entry(device: dict[str, Any], name: str, sha256: str, attempt: int = 0) -> dict[str, Any] | None:
    """The device's entry for this version of the model, at `attempt` or later (an older outcome is stale)."""
    for entry in device.get("models", []):
        if entry.get("name") == name and entry.get("sha256") == sha256:
            return entry if int(entry.get("attempt") or 0) >= attempt else None
    return None


def observe(device: dict[str, Any], name: str, sha256: str, outcome: DeviceOutcome, attempt: int = 0) -> None:
    entry = model_entry(device, name, sha256, attempt)
    if not device.get("online"):
        outcome.reason = "device is offline"
    if entry is None:
        return
    outcome.state = entry.get("state") or "pending"
    outcome.progress = float(entry.get("progress") or 0.0)
    outcome.backend = entry.get("backend")
    reason = entry.get("reason")
    outcome.reason = reason.get("message") if isinstance(reason, dict) else None


def wait_serving(
    client: ControllerClient,
    devices: list[str],
    name: str,
    sha256: str,
    timeout: float,
    on_update: Callable[[DeviceOutcome], None] | None = None,
    poll: float = 0.1,
    attempts: dict[str, int] | None = None,
) -> dict[str, DeviceOutcome]:
    outcomes = {d: DeviceOutcome(d) for d in devices}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(o.done for o in outcomes.values()):
        for device_id, outcome in outcomes.items():
            if outcome.done:
                continue
            try:
                observe(client.device(device_id), name, sha256, outcome, (attempts or {}).get(device_id, 0))
            except ApiError as exc:
                outcome.reason = str(exc)
            if on_update:
                on_update(outcome)
        time.sleep(poll)
    for outcome in outcomes.values():
        if not outcome.done:
            outcome.reason = f"timed out after {timeout:g}s while {outcome.state}" + (
                f" ({outcome.reason})" if outcome.reason else ""
            )
    return outcomes
