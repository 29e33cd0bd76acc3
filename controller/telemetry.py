"""Telemetry on the controller: ingest (batched inserts off the MQTT thread), retention, the fleet's latest numbers
for /metrics, `edgectl top` and the dashboard, and drift against a per (device, model version) baseline.

The MQTT thread only queues (device id, payload). One writer thread takes up to `batch` messages at a time, decodes
them, inserts them in one transaction (duplicates ignored) and updates the in-memory view. Drift: the first window
of a (device, model, version) with output statistics becomes the baseline of each output (stored, so it survives a
restart); a later window whose output mean is more than `drift_threshold` baseline standard deviations away from the
baseline mean flags the model on that device.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from controller.db import Database
from protocol import LATENCY_BUCKETS, ProtocolError, Telemetry, decode, histogram_quantile

log = logging.getLogger(__name__)

DEFAULT_RETENTION_S = 7 * 86400.0
DEFAULT_DRIFT_THRESHOLD = 3.0
PRUNE_EVERY_S = 60.0
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
    raw_outputs: dict[str, Any] = field(default_factory=dict)  # OutputStats, dumped when read
    drift: dict[str, dict[str, Any]] = field(default_factory=dict)  # output -> {score, flagged, baseline_mean, ...}
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
        return {k: v.model_dump(exclude_none=True) for k, v in self.raw_outputs.items()}

    @property
    def drift_score(self) -> float:
        return max((d["score"] for d in self.drift.values()), default=0.0)

    @property
    def drifting(self) -> bool:
        return any(d["flagged"] for d in self.drift.values())

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
        }


@dataclass
class DeviceView:
    device_id: str
    ts: float = 0.0
    received_at: float = 0.0
    interval_s: float = 0.0
    raw_resources: Any = None  # Resources, dumped when read
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
        return self.raw_resources.model_dump(exclude_none=True) if self.raw_resources is not None else {}

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


class TelemetryIngest:
    def __init__(
        self,
        db: Database,
        *,
        retention_s: float = DEFAULT_RETENTION_S,
        drift_threshold: float = DEFAULT_DRIFT_THRESHOLD,
        batch: int = 2000,
        queue_size: int = 10_000,
    ) -> None:
        self.db = db
        self.retention_s = retention_s
        self.drift_threshold = drift_threshold
        self.batch = batch
        self._queue: queue.Queue[list[tuple[str, bytes, float]] | None] = queue.Queue(maxsize=queue_size)
        self.devices: dict[str, DeviceView] = {}
        self._baselines: dict[tuple[str, str, str, str], tuple[float, float]] = {}
        self._lock = threading.Lock()
        self.received = 0
        self.stored = 0
        self.rejected = 0
        self._last_prune = time.time()  # the first pass runs a minute after start
        self._thread = threading.Thread(target=self._run, name="telemetry-ingest", daemon=True)

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def start(self) -> None:
        for b in self.db.drift_baselines():
            self._baselines[(b["device_id"], b["model"], b["version"], b["output"])] = (b["mean"], b["std"])
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    def submit(self, device_id: str, payload: bytes) -> None:
        """From the MQTT thread: queue only (blocks when the writer is far behind, which slows the broker down
        instead of losing QoS 1 messages)."""
        self.received += 1
        self._queue.put([(device_id, payload, time.time())])

    def submit_many(self, items: list[tuple[str, bytes]]) -> None:
        """A batch from the telemetry subscriber: one queue entry for all of them."""
        received = time.time()
        self.received += len(items)
        self._queue.put([(device_id, payload, received) for device_id, payload in items])

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is stored (tests and benchmarks)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._queue.unfinished_tasks == 0:
                return True
            time.sleep(0.01)
        return False

    # -- the writer ------------------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            entries = [self._queue.get()]
            items = list(entries[0] or [])
            while len(items) < self.batch:
                try:
                    entry = self._queue.get_nowait()
                except queue.Empty:
                    break
                entries.append(entry)
                items.extend(entry or [])
            stop = None in entries
            try:
                self._store(items)
            except Exception:
                log.exception("storing %d telemetry messages failed", len(items))
            finally:
                for _ in entries:
                    self._queue.task_done()
            if stop:
                return
            self._maybe_prune()

    def _store(self, items: list[tuple[str, bytes, float]]) -> None:
        rows: list[dict[str, Any]] = []
        baselines: list[dict[str, Any]] = []
        messages: list[Telemetry] = []
        for device_id, payload, received in items:
            try:
                message = decode(Telemetry, payload)
            except ProtocolError as exc:
                self.rejected += 1
                log.warning("dropped telemetry from %s: %s", device_id, exc)
                continue
            if message.device_id != device_id:
                self.rejected += 1
                log.warning("dropped telemetry on %s's topic claiming to be %s", device_id, message.device_id)
                continue
            rows.append(
                {"device_id": device_id, "ts": message.ts, "received_at": received, "payload": payload.decode()}
            )
            messages.append(message)
        with self._lock:
            for message, row in zip(messages, rows, strict=True):
                self._update_view(message, row["received_at"], baselines)
        if rows or baselines:
            self.db.insert_telemetry(rows, baselines)
        self.stored += len(rows)

    def _maybe_prune(self) -> None:
        now = time.time()
        if self.retention_s <= 0 or now - self._last_prune < PRUNE_EVERY_S:
            return
        self._last_prune = now
        try:
            removed = self.db.prune_telemetry(now - self.retention_s)
            if removed:
                log.info("telemetry retention: removed %d sample(s) older than %.0fs", removed, self.retention_s)
        except Exception:
            log.exception("telemetry retention failed")

    def prune_now(self) -> int:
        return self.db.prune_telemetry(time.time() - self.retention_s)

    # -- the in-memory view ----------------------------------------------------------------------------------------

    def _update_view(self, message: Telemetry, received: float, baselines: list[dict[str, Any]]) -> None:
        device = self.devices.get(message.device_id)
        if device is None:
            device = self.devices[message.device_id] = DeviceView(message.device_id)
        if not device.first_sight(message.ts):
            return
        device.samples_total += 1
        latest = message.ts >= device.ts
        if latest:
            device.ts, device.received_at, device.interval_s = message.ts, received, message.interval_s
            device.raw_resources = message.resources
            device.dropped = message.dropped
        span = max(message.ts - message.start, 1e-9) if message.start else message.interval_s
        for model in message.models:
            view = device.models.get(model.name)
            if view is None:
                if len(device.models) >= 32:
                    continue
                view = device.models[model.name] = ModelView(model.name)
            view.requests_total += model.requests
            view.errors_total += model.errors
            view.latency_sum_total_ms += model.latency_sum_ms
            total = view.latency_total
            for index, count in model.latency:
                if 0 <= index < LATENCY_BUCKETS:
                    total[index] += count
            drift = self._drift(message.device_id, model, message.ts, baselines)
            if latest or message.ts >= view.ts:
                if view.version != model.version:
                    view.drift = {}
                view.version, view.ts = model.version, message.ts
                view.requests, view.errors = model.requests, model.errors
                view.rps = model.requests / span if span else 0.0
                view.latency, view._quantiles = model.latency, None
                view.max_ms = model.latency_max_ms if model.requests else None
                view.raw_outputs = model.outputs
                view.drift.update(drift)

    def _drift(self, device_id: str, model, ts: float, baselines: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        result: dict[str, dict[str, Any]] = {}
        for output, stats in model.outputs.items():
            if not stats.count:
                continue
            key = (device_id, model.name, model.version, output)
            base = self._baselines.get(key)
            if base is None:
                self._baselines[key] = base = (stats.mean, stats.std)
                baselines.append(
                    {
                        "device_id": device_id,
                        "model": model.name,
                        "version": model.version,
                        "output": output,
                        "mean": stats.mean,
                        "std": stats.std,
                        "count": stats.count,
                        "created_at": ts,
                    }
                )
            mean, std = base
            diff = abs(stats.mean - mean)
            score = diff / std if std > 1e-12 else (0.0 if diff <= 1e-12 else float("inf"))
            result[output] = {
                "score": round(min(score, 1e9), 3),
                "flagged": score > self.drift_threshold,
                "baseline_mean": mean,
                "baseline_std": std,
                "mean": stats.mean,
            }
        return result

    def reset_baseline(self, device_id: str, model: str | None = None) -> int:
        with self._lock:
            for key in [k for k in self._baselines if k[0] == device_id and (model is None or k[1] == model)]:
                del self._baselines[key]
            view = self.devices.get(device_id)
            if view:
                for m in view.models.values():
                    if model is None or m.name == model:
                        m.drift = {}
        return self.db.reset_drift_baseline(device_id, model)

    # -- reads -----------------------------------------------------------------------------------------------------

    def device_summary(self, device_id: str) -> dict[str, Any] | None:
        with self._lock:
            view = self.devices.get(device_id)
            return view.summary() if view else None

    def fleet_summary(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {d: v.summary() for d, v in sorted(self.devices.items())}

    def history(self, device_id: str, since: float, limit: int = 10_000) -> list[dict[str, Any]]:
        samples = []
        for _, payload in self.db.telemetry_since(device_id, since, limit):
            try:
                samples.append(window_summary(Telemetry.model_validate_json(payload)))
            except ValueError:
                continue
        return samples

    def snapshot(self):
        """A consistent copy of the per-device views for /metrics."""
        with self._lock:
            return [
                (
                    d.device_id,
                    d.ts,
                    dict(d.resources),
                    d.dropped,
                    [
                        (
                            m.name,
                            m.version,
                            m.requests_total,
                            m.errors_total,
                            list(m.latency_total),
                            m.latency_sum_total_ms,
                            m.p50,
                            m.p95,
                            m.p99,
                            m.rps,
                            m.drift_score,
                            m.drifting,
                        )
                        for m in d.models.values()
                    ],
                )  # fmt: skip
                for d in sorted(self.devices.values(), key=lambda v: v.device_id)
            ]


def dumps(data: Any) -> str:
    return json.dumps(data, default=str)
