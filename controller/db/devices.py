"""Devices as the API addresses them: looked up by id, an unknown one answered with the known ones, an offline one
named with when it was last seen."""

from __future__ import annotations

from typing import Any

from controller.db.database import Database
from protocol import valid_device_id
from protocol.errors import EdgeError


def find_device(db: Database, device_id: str) -> dict[str, Any]:
    """The device's row, or unknown_device naming the known devices."""
    row = db.get_device(device_id) if valid_device_id(device_id) else None
    if row is None:
        known = ", ".join(d["id"] for d in db.list_devices())
        raise EdgeError(f"unknown device {device_id!r}; known devices: {known or 'none yet'}", code="unknown_device")
    return row


def online_device(db: Database, device_id: str) -> dict[str, Any]:
    """The device's row when it is online; unknown_device or device_offline otherwise."""
    row = find_device(db, device_id)
    if not row["online"]:
        raise EdgeError(f"device {device_id} is offline (last seen {row['last_seen']:.0f})", code="device_offline")
    return row
