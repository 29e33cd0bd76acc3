"""HTTP routes for telemetry: a device's samples over time, the fleet's newest, drift (a device's verdicts, its
baseline set anew, one model across the fleet)."""

from __future__ import annotations

import re
import time
from typing import Any

from fastapi import APIRouter, Query

from controller.api.state import AppState
from controller.api.views import device_view
from controller.db.devices import find_device
from controller.telemetry.ingest import HISTORY_PAGE
from protocol.errors import EdgeError
from protocol.labels import hardware_class, measured_labels

_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(value: str | None, now: float | None = None, default_s: float = 3600.0) -> float:
    """`10m`, `2h`, `30s`, `1d` (that long ago) or epoch seconds; ValueError otherwise."""
    now = time.time() if now is None else now
    if not value:
        return now - default_s
    match = _DURATION_RE.match(value.strip())
    if match:
        return now - float(match.group(1)) * _UNITS[match.group(2)]
    return float(value)


def router(state: AppState) -> APIRouter:
    router = APIRouter()
    db, telemetry = state.db, state.fleet.telemetry

    @router.get("/api/v1/devices/{device_id}/telemetry")
    def device_telemetry(
        device_id: str,
        since: str | None = Query(default=None, description="`10m`, `2h`, `1d` ago, or epoch seconds (default 1h)"),
        limit: int = Query(default=HISTORY_PAGE, ge=1, le=HISTORY_PAGE),
        before: float | None = Query(default=None, description="Only samples older than this ts (the next page)"),
    ) -> dict[str, Any]:
        """The device's telemetry samples since a time, oldest first, each with p50/p95/p99 and requests/s: the
        newest `limit` of them (at most 1,000 a page); `next_before`, when set, asks for the page before."""
        find_device(db, device_id)
        try:
            start = parse_since(since)
        except ValueError:
            raise EdgeError(f"since={since!r}: use 10m, 2h, 1d or epoch seconds", code="bad_since") from None
        samples = telemetry.history(device_id, start, limit, before)
        return {
            "device": device_id,
            "since": start,
            "samples": samples,
            "next_before": samples[0]["ts"] if len(samples) == limit else None,
            "latest": telemetry.device_summary(device_id),
        }

    @router.get("/api/v1/telemetry")
    def fleet_telemetry() -> list[dict[str, Any]]:
        """Every device with its models and newest telemetry: what `edgectl top` and the dashboard show."""
        summaries = telemetry.fleet_summary()
        return [{**device_view(d), "telemetry": summaries.get(d["id"])} for d in db.list_devices()]

    @router.post("/api/v1/devices/{device_id}/drift/reset")
    def reset_drift(device_id: str, model: str | None = None) -> dict[str, Any]:
        """Forget the drift baseline (the next window becomes the new one)."""
        find_device(db, device_id)
        return {"device": device_id, "model": model, "removed": telemetry.reset_baseline(device_id, model)}

    @router.get("/api/v1/devices/{device_id}/drift")
    def device_drift(device_id: str, model: str | None = None) -> dict[str, Any]:
        """Each model's quality drift on the device: the baseline's state, the last verdict and what moved."""
        find_device(db, device_id)
        latest = telemetry.device_summary(device_id) or {"models": []}
        names = [m["name"] for m in latest["models"] if model is None or m["name"] == model]
        if model is not None and not names:
            raise EdgeError(f"{device_id} has reported no telemetry for model {model!r}", code="unknown_model")
        return {"device": device_id, "models": {n: telemetry.quality.status(device_id, n) for n in names}}

    @router.post("/api/v1/devices/{device_id}/drift/baseline")
    def set_baseline(device_id: str, model: str | None = None) -> dict[str, Any]:
        """A new baseline from the device's next windows on (after an intended change: new camera, new site)."""
        find_device(db, device_id)
        removed = telemetry.reset_baseline(device_id, model)
        return {"device": device_id, "model": model, "removed": removed, "since": time.time()}

    @router.get("/api/v1/models/{name}/drift")
    def fleet_drift(name: str) -> dict[str, Any]:
        """Each device's latest judged windows of the model against the other devices serving the same version on
        the same hardware class (measured arch/accelerator/board/ram_gb), and per class the devices that differ."""
        classes = {d["id"]: hardware_class(measured_labels(d.get("hardware"))) for d in db.list_devices()}
        return {"model": name, **telemetry.quality.fleet(name, classes=classes)}

    return router
