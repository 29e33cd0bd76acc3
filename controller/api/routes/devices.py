"""HTTP routes for devices: the registry of connected devices, one inference run on a device, and a capture of the
request inputs a device kept."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from controller.api.state import AppState
from controller.api.views import device_view
from controller.fleet import devices
from controller.fleet.capture import capture
from controller.rollouts import labels
from protocol import MODEL_NAME_PATTERN
from protocol.errors import EdgeError
from protocol.labels import LabelError, parse_selector


class InferRequest(BaseModel):
    model: str = Field(pattern=MODEL_NAME_PATTERN)
    inputs: dict[str, Any] = Field(description="name -> {datatype, shape, b64}")
    timeout: float = Field(default=10.0, gt=0, le=300)


class LabelRequest(BaseModel):
    set: dict[str, str] = Field(default_factory=dict, description="KEY -> VALUE operator labels to set")
    remove: list[str] = Field(default_factory=list, description="operator label keys to remove")


class CaptureRequest(BaseModel):
    model: str = Field(pattern=MODEL_NAME_PATTERN)
    timeout: float = Field(default=30.0, gt=0, le=300)


def router(state: AppState) -> APIRouter:
    router = APIRouter()

    @router.get("/api/v1/devices")
    def list_devices(select: Annotated[list[str], Query()] = []) -> list[dict[str, Any]]:  # noqa: B006
        """Every device with its labels; `select=KEY=VALUE` (repeatable, all must hold) keeps the matching ones."""
        try:
            selector = parse_selector(select)
        except LabelError as exc:
            raise EdgeError(str(exc), "invalid_label") from None
        return [device_view(d.row) | d.view() for d in labels.select(state.db, selector)]

    @router.get("/api/v1/devices/{device_id}")
    def get_device(device_id: str) -> dict[str, Any]:
        """The device, with its labels and its newest telemetry (latency, resources, drift flags) under `telemetry`."""
        device = labels.device_labelled(state.db, device_id)
        view = device_view(device.row) | device.view()
        view["telemetry"] = state.fleet.telemetry.device_summary(device_id)
        return view

    @router.post("/api/v1/devices/{device_id}/labels")
    def set_labels(device_id: str, body: LabelRequest) -> dict[str, Any]:
        """Set or remove operator labels (kept by the controller; a device's measured labels cannot be set)."""
        changes: dict[str, str | None] = {**dict.fromkeys(body.remove), **body.set}
        return {"id": device_id, **labels.set_labels(state.db, device_id, changes).view()}

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
