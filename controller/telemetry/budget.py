"""A per-device budget for telemetry (messages and bytes, token buckets): one device flooding the controller spends
its own budget, never the writer's time or memory that the rest of the fleet's samples need."""

from __future__ import annotations

import threading
from dataclasses import dataclass

# A device sends one sample per interval (10 s by default) and, after an outage, replays its disk queue at its
# `telemetry_replay_rate`; the defaults leave room for both with a wide margin.
DEFAULT_RATE = 50.0  # messages per second, sustained
DEFAULT_BURST = 2_000.0  # messages at once
DEFAULT_BYTE_RATE = 2 << 20  # bytes per second, sustained
DEFAULT_BYTE_BURST = 64 << 20  # bytes at once
MAX_TRACKED = 100_000  # devices with a bucket; the idlest are forgotten past it (a full bucket is the same as none)


@dataclass
class _Bucket:
    messages: float
    bytes: float
    at: float


class TelemetryBudget:
    """`allow(device, size, now)`: whether the device may send this message now; thread-safe."""

    def __init__(
        self,
        rate: float = DEFAULT_RATE,
        burst: float = DEFAULT_BURST,
        byte_rate: float = DEFAULT_BYTE_RATE,
        byte_burst: float = DEFAULT_BYTE_BURST,
    ) -> None:
        self.rate, self.burst = rate, burst
        self.byte_rate, self.byte_burst = byte_rate, byte_burst
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def allow(self, device_id: str, size: int, now: float) -> bool:
        with self._lock:
            return self._allow(device_id, size, now)

    def allow_many(self, messages: list[tuple[str, bytes]], now: float) -> list[tuple[str, bytes, float]]:
        """The (device, payload, now) of each message allow() lets through, under one lock (one pass: a batch of
        telemetry goes through here every read)."""
        allow = self._allow
        with self._lock:
            return [(d, p, now) for d, p in messages if allow(d, len(p), now)]

    def _allow(self, device_id: str, size: int, now: float) -> bool:
        bucket = self._buckets.get(device_id)
        if bucket is None:
            if len(self._buckets) >= MAX_TRACKED:
                oldest = min(self._buckets, key=lambda d: self._buckets[d].at)
                del self._buckets[oldest]
            bucket = self._buckets[device_id] = _Bucket(self.burst, self.byte_burst, now)
        elapsed = max(0.0, now - bucket.at)
        bucket.at = now
        bucket.messages = min(self.burst, bucket.messages + elapsed * self.rate)
        bucket.bytes = min(self.byte_burst, bucket.bytes + elapsed * self.byte_rate)
        if bucket.messages < 1 or bucket.bytes < size:
            return False
        bucket.messages -= 1
        bucket.bytes -= size
        return True
