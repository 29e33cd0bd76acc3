"""Devices asked to run one inference (or another call) over MQTT, once looked up (controller.db.devices)."""

from __future__ import annotations

from typing import Any

from controller.db.database import Database
from controller.db.devices import online_device
from controller.errors import DeviceError
from controller.fleet.link import Fleet


def infer(db: Database, fleet: Fleet, device_id: str, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    """The device's answer to one inference request (blocks up to `timeout`): device_offline, DeviceUnreachable,
    or the device's own error as a DeviceError."""
    online_device(db, device_id)
    return answer(fleet.call(device_id, "infer", request, timeout))


async def infer_async(
    db: Database, fleet: Fleet, device_id: str, request: dict[str, Any], timeout: float
) -> dict[str, Any]:
    """infer() without holding a thread while the device thinks (the lookup runs on a worker thread)."""
    from starlette.concurrency import run_in_threadpool

    await run_in_threadpool(online_device, db, device_id)
    return answer(await fleet.call_async(device_id, "infer", request, timeout))


def answer(response) -> dict[str, Any]:
    """A device's response as the API's result, or its error as a DeviceError."""
    if not response.ok:
        err = response.error
        raise DeviceError(err.message if err else "device error", code=err.code if err else None)
    return response.result or {}
