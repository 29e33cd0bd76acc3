"""HTTP routes for devices: the registry of connected devices, one inference run on a device, and a capture of the
request inputs a device kept."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from controller.api.state import AppState
from controller.api.views import device_view
from controller.db.devices import find_device
from controller.fleet import devices
from controller.fleet.capture import capture
from protocol import MODEL_NAME_PATTERN


class InferRequest(BaseModel):
    model: str = Field(pattern=MODEL_NAME_PATTERN)
    inputs: dict[str, Any] = Field(description="name -> {datatype, shape, b64}")
    timeout: float = Field(default=10.0, gt=0, le=300)


class CaptureRequest(BaseModel):
    model: str = Field(pattern=MODEL_NAME_PATTERN)
    timeout: float = Field(default=30.0, gt=0, le=300)


def router(state: AppState) -> APIRouter:
    router = APIRouter()

    @router.get("/api/v1/devices")
    def list_devices() -> list[dict[str, Any]]:
        return [device_view(d) for d in state.db.list_devices()]

    @router.get("/api/v1/devices/{device_id}")
    def get_device(device_id: str) -> dict[str, Any]:
        """The device, with its newest telemetry (latency, resources, drift flags) under `telemetry`."""
        view = device_view(find_device(state.db, device_id))
        view["telemetry"] = state.fleet.telemetry.device_summary(device_id)
        return view

    @router.post("/api/v1/devices/{device_id}/infer")
    async def infer(device_id: str, body: InferRequest) -> dict[str, Any]:
        """Run one inference on the device over MQTT request/response."""
        request = {"model": body.model, "inputs": body.inputs}
        return await devices.infer_async(state.db, state.fleet, device_id, request, body.timeout)

    @router.post("/api/v1/devices/{device_id}/capture")
    async def capture_inputs(device_id: str, body: CaptureRequest) -> Response:
        """The request inputs the device kept for a model (a uniform sample, memory only on the device), as one .npz
        of arrays `sample<i>/<input name>`: ready for `edgectl push --sample` and the converters' `--calibration`."""
        got = await run_in_threadpool(capture, state.db, state.fleet, device_id, body.model, body.timeout)
        headers = {"X-Capture-Count": str(got.count), "X-Capture-Seen": str(got.seen), "X-Model-Version": got.version}
        return Response(got.data, media_type="application/octet-stream", headers=headers)

    return router
