"""HTTP routes about the controller itself: health, Prometheus metrics, and the dashboard's page and static files."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse, PlainTextResponse

from controller import __version__
from controller.api.metrics import render as render_metrics
from controller.api.state import AppState
from controller.rollouts.metrics import render as render_rollout_metrics
from protocol.errors import EdgeError

STATIC = Path(__file__).resolve().parents[2] / "static"
MEDIA_TYPES = {".js": "text/javascript", ".css": "text/css"}


def router(state: AppState) -> APIRouter:
    router = APIRouter()

    @router.get("/api/v1/health")
    async def health() -> dict[str, Any]:
        """Answered on the event loop: never queued behind worker threads, never waiting on a device."""
        replication = state.fleet.replication
        return {
            "ok": True,
            "version": __version__,
            "broker_connected": state.fleet.connected,
            "telemetry_subscribed": state.fleet.telemetry_link.connected.is_set(),
            "replica": replication.replica_id if replication.enabled else None,  # one of several (PostgreSQL)
            "leader": replication.is_leader(),  # does the work done once: desired states on connect, retention
            "time": time.time(),
        }

    @router.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> PlainTextResponse:
        """Prometheus exposition format; labels and their bounds are documented in controller/api/metrics.py."""
        text = render_metrics(state.db.list_devices(), state.fleet.telemetry, max_devices=state.metrics_max_devices)
        text += render_rollout_metrics(state.rollouts.store.listed())
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    @router.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @router.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> FileResponse:
        path = STATIC / name
        if "/" in name or name.startswith(".") or not path.is_file():
            raise EdgeError(f"no static file {name!r}", code="not_found")
        return FileResponse(path, media_type=MEDIA_TYPES.get(path.suffix, "application/octet-stream"))

    return router
