"""HTTP routes for devices: the registry of connected devices, and one inference run on a device."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from controller import devices
from controller.state import AppState
from controller.views import device_view
from protocol import MODEL_NAME_PATTERN


class InferRequest(BaseModel):
    model: str = Field(pattern=MODEL_NAME_PATTERN)
    inputs: dict[str, Any] = Field(description="name -> {datatype, shape, b64}")
    timeout: float = Field(default=10.0, gt=0, le=300)


def router(state: AppState) -> APIRouter:
    router = APIRouter()

    @router.get("/api/v1/devices")
    def list_devices() -> list[dict[str, Any]]:
        return [device_view(d) for d in state.db.list_devices()]

    @router.get("/api/v1/devices/{device_id}")
    def get_device(device_id: str) -> dict[str, Any]:
        """The device, with its newest telemetry (latency, resources, drift flags) under `telemetry`."""
        view = device_view(devices.find_device(state.db, device_id))
        view["telemetry"] = state.fleet.telemetry.device_summary(device_id)
        return view

    @router.post("/api/v1/devices/{device_id}/infer")
    async def infer(device_id: str, body: InferRequest) -> dict[str, Any]:
        """Run one inference on the device over MQTT request/response."""
        request = {"model": body.model, "inputs": body.inputs}
        return await run_in_threadpool(devices.infer, state.db, state.fleet, device_id, request, body.timeout)

    return router
