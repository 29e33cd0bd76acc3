"""Fetches a device's kept request inputs for a model (`edgectl capture`): the device's .npz, chunk by chunk."""

from __future__ import annotations

import base64
from dataclasses import dataclass

from controller.db.database import Database
from controller.fleet import devices
from controller.fleet.link import Fleet
from protocol.errors import EdgeError

MAX_CAPTURE_BYTES = 256 << 20


@dataclass(frozen=True)
class Captured:
    data: bytes  # .npz: arrays `sample{i}/{input name}` (edgectl push --sample, converters' --calibration)
    count: int
    seen: int
    version: str


def capture(db: Database, fleet: Fleet, device_id: str, model: str, timeout: float) -> Captured:
    """Every chunk of one snapshot of the model's reservoir on the device, joined."""
    devices.online_device(db, device_id)
    parts: list[bytes] = []
    offset, pack_id = 0, ""
    while True:
        params = {"model": model, "offset": offset, "id": pack_id}
        result = devices.answer(fleet.call(device_id, "capture", params, timeout))
        chunk = base64.b64decode(result.get("data") or "")
        parts.append(chunk)
        offset += len(chunk)
        pack_id = str(result.get("id") or "")
        size = int(result.get("size") or 0)
        if size > MAX_CAPTURE_BYTES:
            raise EdgeError(f"the capture is {size} bytes, over the {MAX_CAPTURE_BYTES} allowed", code="too_large")
        if offset >= size or not chunk:
            break
    return Captured(
        b"".join(parts), int(result.get("count") or 0), int(result.get("seen") or 0), str(result["version"])
    )
