"""The in-memory view of the fleet's telemetry: each device's newest window and totals per model, what /metrics,
`edgectl top` and the dashboard read without touching the database."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from protocol import LATENCY_BUCKETS, Telemetry, histogram_quantile
from protocol.telemetry_fast import plain

SEEN_TS_KEPT = 1024  # per device: enough for the samples a device resends after a reconnect


@dataclass
class ModelView:
    name: str
    version: str = ""
    requests_total: int = 0
    errors_total: int = 0
    latency_total: list[int] = field(default_factory=lambda: [0] * LATENCY_BUCKETS)
    latency_sum_total_ms: float = 0.0
    # the newest window
    ts: float = 0.0
    rps: float = 0.0
    requests: int = 0
    errors: int = 0
    max_ms: float | None = None
    latency: list[tuple[int, int]] = field(default_factory=list)  # the newest window's histogram
    raw_outputs: dict[str, Any] = field(default_factory=dict)  # FastOutputStats, dumped when read
    drift: dict[str, dict[str, Any]] = field(default_factory=dict)  # output -> {score, flagged, baseline_mean, ...}
    quality: dict[str, Any] | None = None  # the quality drift's state and last verdict (tracker.Track.status)
    _quantiles: tuple[float | None, float | None, float | None] | None = None

    def quantiles(self) -> tuple[float | None, float | None, float | None]:
        """p50, p95, p99 of the newest window (computed when read: ingest only stores the histogram)."""
        if self._quantiles is None:
            counts = dict(self.latency)
            self._quantiles = tuple(histogram_quantile(counts, q, self.max_ms) for q in (0.5, 0.95, 0.99))  # type: ignore[assignment]
        return self._quantiles  # type: ignore[return-value]

    @property
    def p50(self) -> float | None:
        return self.quantiles()[0]

    @property
    def p95(self) -> float | None:
        return self.quantiles()[1]

    @property
    def p99(self) -> float | None:
        return self.quantiles()[2]

    @property
    def outputs(self) -> dict[str, Any]:
        return {k: plain(v) for k, v in self.raw_outputs.items()}

    @property
    def drift_score(self) -> float:
        return max((d["score"] for d in self.drift.values()), default=0.0)

    @property
    def quality_drifting(self) -> bool:
        return bool(self.quality and self.quality.get("flagged"))

    @property
    def quality_score(self) -> float:
        return float(self.quality.get("score", 0.0)) if self.quality else 0.0

    @property
    def drifting(self) -> bool:
        return any(d["flagged"] for d in self.drift.values()) or self.quality_drifting

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "ts": self.ts,
            "requests_per_s": round(self.rps, 3),
            "requests": self.requests,
            "errors": self.errors,
            "requests_total": self.requests_total,
            "errors_total": self.errors_total,
            "p50_ms": self.p50,
            "p95_ms": self.p95,
            "p99_ms": self.p99,
            "max_ms": self.max_ms,
            "outputs": self.outputs,
            "drift": self.drift,
            "drifting": self.drifting,
            "drift_score": round(self.drift_score, 3),
            "quality": self.quality,
        }


@dataclass
class DeviceView:
    device_id: str
    ts: float = 0.0
    received_at: float = 0.0
    interval_s: float = 0.0
    raw_resources: Any = None  # FastResources, dumped when read
    dropped: int = 0
    samples_total: int = 0
    models: dict[str, ModelView] = field(default_factory=dict)
    # timestamps of the samples seen lately: a sample the device sent again (it was in doubt when the link dropped)
    # is counted once here, as the database's unique (device_id, ts) stores it once
    seen_ts: OrderedDict[float, None] = field(default_factory=OrderedDict)

    def first_sight(self, ts: float) -> bool:
        if ts in self.seen_ts:
            return False
        self.seen_ts[ts] = None
        if len(self.seen_ts) > SEEN_TS_KEPT:
            self.seen_ts.popitem(last=False)
        return True

    @property
    def resources(self) -> dict[str, Any]:
        return plain(self.raw_resources)

    def summary(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "ts": self.ts,
            "received_at": self.received_at,
            "interval_s": self.interval_s,
            "resources": self.resources,
            "dropped": self.dropped,
            "samples_total": self.samples_total,
            "models": [m.summary() for m in self.models.values()],
            "drifting": any(m.drifting for m in self.models.values()),
        }


def window_summary(message: Telemetry) -> dict[str, Any]:
    """A sample as the API returns it: the message plus p50/p95/p99 and requests/s per model."""
    data = message.model_dump(exclude_none=True)
    span = max(message.ts - message.start, 1e-9) if message.start else message.interval_s
    for model, raw in zip(message.models, data["models"], strict=True):
        counts = dict(model.latency)
        raw["p50_ms"] = histogram_quantile(counts, 0.50, model.latency_max_ms)
        raw["p95_ms"] = histogram_quantile(counts, 0.95, model.latency_max_ms)
        raw["p99_ms"] = histogram_quantile(counts, 0.99, model.latency_max_ms)
        raw["requests_per_s"] = round(model.requests / span, 3) if span else None
    return data
