"""HTTP routes for deployments: deploy a version to devices, roll a device's model back."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from controller.api.state import AppState
from protocol import MODEL_NAME_PATTERN


class DeployRequest(BaseModel):
    model: str = Field(pattern=MODEL_NAME_PATTERN)
    version: str | None = Field(default=None, description="Default: the newest version")
    devices: list[str] = Field(min_length=1, max_length=10_000)
    backend: str | None = Field(default=None, description="Force this backend on the devices")
    variants: list[str] | None = Field(
        default=None, max_length=16, description="Optimized variants to ship with it (default: every passing one)"
    )
    force: bool = Field(default=False, description="Deploy variants below the accuracy threshold too")
    retry: bool = Field(default=False, description="Deploy again a version a device reports failed (a new attempt)")


class RollbackRequest(BaseModel):
    model: str | None = Field(default=None, description="Default: the device's only model")
    to: str | None = Field(default=None, description="Default: the version the device reports as previous")


def router(state: AppState) -> APIRouter:
    router = APIRouter()

    @router.post("/api/v1/deployments")
    def deploy(body: DeployRequest) -> dict[str, Any]:
        """Make a model version the desired one on each listed device (all devices must be known)."""
        return state.deployments.deploy(
            body.model, body.version, body.devices, backend=body.backend, variants=body.variants, force=body.force,
            retry=body.retry,
        )  # fmt: skip

    @router.post("/api/v1/devices/{device_id}/rollback")
    def rollback(device_id: str, body: RollbackRequest | None = None) -> dict[str, Any]:
        """Deploy an earlier version again: by default the one the device reports as `previous` (still on its disk,
        so the swap is immediate), or `to` a registered version; always a new attempt, so a version that failed or
        was rolled back is tried again."""
        body = body or RollbackRequest()
        return state.deployments.rollback(device_id, body.model, body.to)

    @router.delete("/api/v1/devices/{device_id}/models/{name}")
    def undeploy(device_id: str, name: str) -> dict[str, Any]:
        """Remove a model from a device: it stops serving it, deletes its files and no longer reports it."""
        return state.deployments.undeploy(device_id, name)

    return router
