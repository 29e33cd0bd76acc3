"""Devices as the API addresses them: looked up by id (an unknown one answered with the known ones), and asked to run
one inference over MQTT."""

from __future__ import annotations

from typing import Any

from controller.db import Database
from controller.errors import DeviceError
from controller.fleet import Fleet
from protocol import valid_device_id
from protocol.errors import EdgeError


def find_device(db: Database, device_id: str) -> dict[str, Any]:
    """The device's row, or unknown_device naming the known devices."""
    row = db.get_device(device_id) if valid_device_id(device_id) else None
    if row is None:
        known = [d["id"] for d in db.list_devices()]
        raise EdgeError(f"unknown device {device_id!r}; known devices: {known or 'none yet'}", code="unknown_device")
    return row


def infer(db: Database, fleet: Fleet, device_id: str, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    """The device's answer to one inference request (blocks up to `timeout`): device_offline, DeviceUnreachable,
    or the device's own error as a DeviceError."""
    row = find_device(db, device_id)
    if not row["online"]:
        raise EdgeError(f"device {device_id} is offline (last seen {row['last_seen']:.0f})", code="device_offline")
    response = fleet.call(device_id, "infer", request, timeout)
    if not response.ok:
        err = response.error
        raise DeviceError(err.message if err else "device error", code=err.code if err else None)
    return response.result or {}
