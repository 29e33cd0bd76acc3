"""Devices as the API addresses them: looked up by id (an unknown one answered with the known ones), and asked to run
one inference (or another call) over MQTT."""

from __future__ import annotations

from typing import Any

from controller.db.database import Database
from controller.errors import DeviceError
from controller.fleet.link import Fleet
from protocol import valid_device_id
from protocol.errors import EdgeError


def find_device(db: Database, device_id: str) -> dict[str, Any]:
    """The device's row, or unknown_device naming the known devices."""
    row = db.get_device(device_id) if valid_device_id(device_id) else None
    if row is None:
        known = [d["id"] for d in db.list_devices()]
        raise EdgeError(f"unknown device {device_id!r}; known devices: {known or 'none yet'}", code="unknown_device")
    return row


def online_device(db: Database, device_id: str) -> dict[str, Any]:
    """The device's row when it is online; unknown_device or device_offline otherwise."""
    row = find_device(db, device_id)
    if not row["online"]:
        raise EdgeError(f"device {device_id} is offline (last seen {row['last_seen']:.0f})", code="device_offline")
    return row


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
