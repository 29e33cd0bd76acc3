"""`edgectl capture`: a model's kept request inputs packed into one .npz on request (never sent otherwise), handed
out in chunks that fit an RPC answer."""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from dataclasses import dataclass
from typing import Any

from agent.serving.live import LiveTaps
from agent.serving.table import ModelTable
from protocol.errors import EdgeError
from targets.inputs import pack_samples

CHUNK_BYTES = 512 << 10  # base64 makes it ~683 KiB: inside the 1 MiB cap on an RPC answer
KEEP_S = 120.0  # a pack stays for its chunks to be fetched this long


class CaptureError(EdgeError):
    """Nothing to capture: capture is off on this device, or no request reached the model yet."""

    code = "nothing_captured"


@dataclass(frozen=True)
class Pack:
    id: str
    data: bytes
    count: int
    seen: int
    version: str
    made: float


class Captures:
    """One pack per model at a time: chunks after the first name its id, so every chunk comes from one snapshot."""

    def __init__(self, taps: LiveTaps, table: ModelTable) -> None:
        self.taps = taps
        self.table = table
        self._packs: dict[str, Pack] = {}
        self._lock = threading.Lock()

    def call(self, params: dict[str, Any]) -> dict[str, Any]:
        """`{model, id?, offset?}` -> `{model, version, id, size, offset, count, seen, data (base64)}`."""
        name = str(params.get("model") or "")
        offset = int(params.get("offset") or 0)
        pack = self._pack(name) if offset == 0 else self._existing(name, str(params.get("id") or ""))
        chunk = pack.data[offset : offset + CHUNK_BYTES]
        return {
            "model": name, "version": pack.version, "id": pack.id, "size": len(pack.data), "offset": offset,
            "count": pack.count, "seen": pack.seen, "data": base64.b64encode(chunk).decode(),
        }  # fmt: skip

    def _pack(self, name: str) -> Pack:
        model = self.table.current(name)
        if model is None:
            raise EdgeError(f"model {name!r} is not serving here; serving: {self.table.names()}", code="not_found")
        if not self.taps.capacity:
            raise CaptureError(
                "this device keeps no request inputs (capture is opt-in: its owner sets capture_inputs = N in its "
                "agent.toml)"
            )
        reservoir = self.taps.get(name).reservoir
        kept = reservoir.snapshot() if reservoir is not None else []
        if reservoir is None or not kept:
            raise CaptureError(f"no request has reached {name} on this device since the agent started")
        data = pack_samples(kept)
        pack = Pack(hashlib.sha256(data).hexdigest()[:16], data, len(kept), reservoir.seen, model.version, time.time())
        with self._lock:
            self._packs = {n: p for n, p in self._packs.items() if time.time() - p.made < KEEP_S}
            self._packs[name] = pack
        return pack

    def _existing(self, name: str, pack_id: str) -> Pack:
        with self._lock:
            pack = self._packs.get(name)
        if pack is None or pack.id != pack_id:
            raise CaptureError(f"the capture of {name} being fetched has expired; start again")
        return pack
