"""The controller's HTTP routes, one router per resource; each is built from the AppState it serves."""

from __future__ import annotations

from fastapi import APIRouter

from controller.api.routes import dashboard, deployments, devices, models, rollouts, samples, telemetry
from controller.api.state import AppState


def all_routers(state: AppState) -> list[APIRouter]:
    """Every router of the API."""
    return [m.router(state) for m in (dashboard, models, samples, devices, telemetry, deployments, rollouts)]
