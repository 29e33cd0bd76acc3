"""Telemetry on the controller: ingest (batched inserts off the MQTT thread), retention, the fleet's latest numbers
for /metrics, `edgectl top` and the dashboard, and drift against a per (device, model version) baseline.

The telemetry subscriber hands over what it read and, once its socket is drained (`idle`), the same thread stores it:
decodes the messages, inserts them in one statement (duplicates ignored), calls each entry's `done` (the subscriber
acknowledges to the broker then) and updates the in-memory view. A handoff to a writer thread cost more CPU per
sample (bench/fleet.py, 3 replicas, alternated: 38-43 us against 35-38 with this and the autocommit insert): waking a
second thread, and the samples read on one core and decoded on the other. Meanwhile new messages wait in the socket
and the broker, which is the back pressure a full queue gave before. A housekeeping thread stores what waited over
`linger_s` (a subscriber that never says idle), prunes and re-reads the drift baselines.

Drift: the first window of a (device, model, version) with output statistics becomes the baseline of each output
(stored, so it survives a restart); a later window whose output mean is more than `drift_threshold` baseline standard
deviations away from the baseline mean flags the model on that device. The quality drift (class mix, every output
element, the inputs) is judged by `tracker.QualityTracker` with the tests of `drift.py`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from controller.db.database import Database
from controller.telemetry.budget import TelemetryBudget
from controller.telemetry.drift import DEFAULT_SETTINGS, DriftSettings
from controller.telemetry.tracker import QualityTracker
from controller.telemetry.views import DeviceView, ModelView, window_summary
from protocol import MAX_TELEMETRY_MODELS, MAX_TELEMETRY_OUTPUTS, ProtocolError, Telemetry
from protocol.telemetry_fast import FastModelTelemetry, FastTelemetry, decode_telemetry, encode_telemetry

log = logging.getLogger(__name__)

DEFAULT_RETENTION_S = 7 * 86400.0
DEFAULT_DRIFT_THRESHOLD = 3.0
PRUNE_EVERY_S = 60.0
# drift baselines one device may hold: every output of every model it may report at once (one version each)
MAX_BASELINES_PER_DEVICE = MAX_TELEMETRY_MODELS * MAX_TELEMETRY_OUTPUTS
HISTORY_PAGE = 1000  # samples per page of history (at 1 MB a sample, ~1 GB of memory for the old 10,000)
# What is handed over is stored when the subscriber says its socket is drained (`idle`): the broker is then waiting
# for PUBACKs (a small in-flight window) or the fleet is quiet; at `batch` entries, or once the oldest has waited
# LINGER_S, it is stored anyway. A statement per batch costs more than a sample (at 1,000 samples/s, 50 transactions/s
# tripled the CPU per sample); a fixed gap timer instead split batches whenever the subscriber paused.
DEFAULT_LINGER_S = 0.5
HOUSEKEEPING_S = 5.0  # how often stale entries, retention and the drift baselines are looked at without traffic
# Drift baselines are read back from the database this often (a reset through another replica reaches this one), and
# this soon after this process created some: where replicas saw a device's first window at once, the table keeps the
# first stored and every replica then judges drift against that one.
BASELINES_REFRESH_S = 60.0
BASELINES_ADOPT_S = 5.0

Done = Callable[[bool], None]  # called with True once an entry is stored, False when it could not be (retry later)
Entry = tuple[list[tuple[str, bytes, float]], Done | None]


class TelemetryIngest:
    def __init__(
        self,
        db: Database,
        *,
        retention_s: float = DEFAULT_RETENTION_S,
        drift_threshold: float = DEFAULT_DRIFT_THRESHOLD,
        batch: int = 2000,
        budget: TelemetryBudget | None = None,
        linger_s: float = DEFAULT_LINGER_S,
        is_leader: Callable[[], bool] | None = None,
        baselines_refresh_s: float = BASELINES_REFRESH_S,
        quality: DriftSettings = DEFAULT_SETTINGS,
    ) -> None:
        self.db = db
        # class mix, elements, inputs against a baseline (tracker.py), the baselines shared through the database
        self.quality = QualityTracker(quality, store=db)
        self.baselines_refresh_s = baselines_refresh_s
        self._baselines_read = 0.0
        self._baselines_new = False  # this process created baselines since it last read them
        self.linger_s = linger_s
        self.is_leader = is_leader or (lambda: True)  # retention runs on the replica holding the lease only
        self.retention_s = retention_s
        self.drift_threshold = drift_threshold
        self.batch = batch
        self._pending: list[Entry] = []  # handed over, not stored yet (under _store_lock)
        self._pending_items = 0
        self._pending_since = 0.0  # monotonic: when the oldest pending entry came
        self._store_lock = threading.Lock()  # one store at a time (the subscriber and a session being drained)
        self._stop = threading.Event()
        self.devices: dict[str, DeviceView] = {}
        self._baselines: dict[tuple[str, str, str, str], tuple[float, float]] = {}
        self._baselines_per_device: dict[str, int] = {}
        self._lock = threading.Lock()
        self.budget = budget or TelemetryBudget()
        self.received = 0
        self.stored = 0
        self.rejected = 0  # not a valid sample of the device whose topic it came on
        self.quarantined = 0  # valid, but the database refused it (kept in telemetry_quarantine)
        self.over_budget = 0  # dropped: the device exceeded its message or byte budget
        self._last_prune = time.time()  # the first pass runs a minute after start
        self._thread = threading.Thread(target=self._housekeeping, name="telemetry-housekeeping", daemon=True)

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._read_baselines()
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self.flush()

    def submit(self, device_id: str, payload: bytes) -> None:
        """One message, stored with the next batch (tests: then `flush`)."""
        self.submit_many([(device_id, payload)])

    def submit_many(self, items: list[tuple[str, bytes]], done: Done | None = None) -> None:
        """A batch from the telemetry subscriber, less what exceeds its device's budget (dropped here). It is stored
        on `idle`, at `batch` entries or after `linger_s`, in the calling thread; `done` is called then, in the order
        entries were submitted (PUBACKs keep the order of their messages)."""
        received = time.time()
        self.received += len(items)
        kept = self.budget.allow_many(items, received)
        if len(kept) < len(items):
            dropped = len(items) - len(kept)
            self.over_budget += dropped
            log.warning("dropped %d telemetry message(s) over their device's budget", dropped)
        if not kept and done is None:
            return
        with self._store_lock:
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending.append((kept, done))
            self._pending_items += len(kept)
            if self._pending_items >= self.batch or time.monotonic() - self._pending_since >= self.linger_s:
                self._store_pending()

    def idle(self) -> None:
        """From the subscriber: all its socket held is handed over; store it now."""
        with self._store_lock:
            self._store_pending()

    def flush(self, timeout: float = 10.0) -> bool:
        """Store what was handed over now (tests and benchmarks); True once it is (the timeout bounds the wait for
        a store running in another thread)."""
        if not self._store_lock.acquire(timeout=timeout):
            return False
        try:
            self._store_pending()
        finally:
            self._store_lock.release()
        return True

    # -- storing ---------------------------------------------------------------------------------------------------

    def _housekeeping(self) -> None:
        while not self._stop.wait(min(HOUSEKEEPING_S, self.baselines_refresh_s)):
            if self._pending and time.monotonic() - self._pending_since >= self.linger_s:
                with self._store_lock:
                    if self._pending and time.monotonic() - self._pending_since >= self.linger_s:
                        self._store_pending()
            self._maybe_prune()
            with self._store_lock:
                self._maybe_read_baselines()

    def _store_pending(self) -> None:
        """Store the pending entries in one batch and call their `done` (caller holds _store_lock)."""
        entries, self._pending, self._pending_items = self._pending, [], 0
        if not entries:
            return
        items = [item for kept, _ in entries for item in kept]
        ok = True
        try:
            self._store(items)
        except sa.exc.OperationalError as exc:  # the database is unreachable: the broker delivers them again
            ok = False
            log.warning("storing %d telemetry messages failed: %s", len(items), str(exc.orig).splitlines()[0])
        except Exception:
            log.exception("storing %d telemetry messages failed", len(items))
        for _, done in entries:
            if done is not None:
                done(ok)

    def _store(self, items: list[tuple[str, bytes, float]]) -> None:
        """Decode and check each message, store the validated sample (not the raw payload: unknown fields are not
        kept), then update the view with what was stored. A row the database refuses is quarantined alone."""
        rows: list[dict[str, Any]] = []
        messages: list[FastTelemetry] = []
        for device_id, payload, received in items:
            try:
                message = decode_telemetry(payload)
            except ProtocolError as exc:
                self.rejected += 1
                log.warning("dropped telemetry from %s: %s", device_id, exc)
                continue
            if message.device_id != device_id:
                self.rejected += 1
                log.warning("dropped telemetry on %s's topic claiming to be %s", device_id, message.device_id)
                continue
            sample = encode_telemetry(message)
            rows.append({"device_id": device_id, "ts": message.ts, "received_at": received, "payload": sample})
            messages.append(message)
        stored: list[tuple[FastTelemetry, dict[str, Any]]] = []
        for message, row, reason in zip(messages, rows, self.db.insert_each("telemetry", rows), strict=True):
            if reason is None:
                stored.append((message, row))
                continue
            self.quarantined += 1
            log.warning("quarantined a telemetry sample from %s: %s", row["device_id"], reason)
            self.db.quarantine_telemetry(row["device_id"], row["received_at"], reason, row["payload"])
        baselines: list[dict[str, Any]] = []
        with self._lock:
            for message, row in stored:
                self._update_view(message, row["received_at"], baselines)
        self._baselines_new = self._baselines_new or bool(baselines)
        for baseline, reason in zip(baselines, self.db.insert_each("drift_baselines", baselines), strict=True):
            if reason is not None:
                log.warning("drift baseline of %s/%s not stored: %s", baseline["device_id"], baseline["model"], reason)
        try:
            self.quality.save()  # baselines frozen by this batch: the first stored wins across replicas
        except sa.exc.SQLAlchemyError as exc:
            log.warning("quality baselines not stored (kept here, stored with the next batch): %s", _first_line(exc))
        self.stored += len(stored)

    def _maybe_prune(self) -> None:
        now = time.time()
        if self.retention_s <= 0 or now - self._last_prune < PRUNE_EVERY_S or not self.is_leader():
            return
        self._last_prune = now
        try:
            removed = self.prune_now()
            if removed:
                log.info("telemetry retention: removed %d sample(s) older than %.0fs", removed, self.retention_s)
        except Exception:
            log.exception("telemetry retention failed")

    def _read_baselines(self) -> None:
        """The stored drift baselines replace what this process holds (the table keeps one per key: the first)."""
        baselines: dict[tuple[str, str, str, str], tuple[float, float]] = {}
        per_device: dict[str, int] = {}
        for b in self.db.drift_baselines():
            baselines[(b["device_id"], b["model"], b["version"], b["output"])] = (b["mean"], b["std"])
            per_device[b["device_id"]] = per_device.get(b["device_id"], 0) + 1
        with self._lock:
            self._baselines, self._baselines_per_device = baselines, per_device
        self.quality.refresh()  # the quality baselines other replicas stored or reset
        self._baselines_read, self._baselines_new = time.monotonic(), False

    def _maybe_read_baselines(self) -> None:
        since = time.monotonic() - self._baselines_read
        if since < self.baselines_refresh_s and not (self._baselines_new and since >= BASELINES_ADOPT_S):
            return
        try:
            self._read_baselines()
        except sa.exc.SQLAlchemyError as exc:
            self._baselines_read = time.monotonic()
            log.warning("could not read the drift baselines: %s", str(exc).splitlines()[0])

    def prune_now(self) -> int:
        """Retention: delete the samples received more than retention_s ago; how many went."""
        return self.db.prune_telemetry(time.time() - self.retention_s)

    # -- the in-memory view ----------------------------------------------------------------------------------------

    def _update_view(self, message: FastTelemetry, received: float, baselines: list[dict[str, Any]]) -> None:
        """Fold one stored sample into the view (runs for every sample: kept lean, the structs are validated)."""
        device = self.devices.get(message.device_id)
        if device is None:
            device = self.devices[message.device_id] = DeviceView(message.device_id)
        ts = message.ts
        if not device.first_sight(ts):
            return
        device.samples_total += 1
        latest = ts >= device.ts
        if latest:
            device.ts, device.received_at, device.interval_s = ts, received, message.interval_s
            device.raw_resources, device.dropped = message.resources, message.dropped
        span = max(ts - message.start, 1e-9) if message.start else message.interval_s
        for model in message.models:
            view = device.models.get(model.name)
            if view is None:
                if len(device.models) >= MAX_TELEMETRY_MODELS:
                    continue
                view = device.models[model.name] = ModelView(model.name)
            view.requests_total += model.requests
            view.errors_total += model.errors
            view.latency_sum_total_ms += model.latency_sum_ms
            total = view.latency_total
            for index, count in model.latency:  # buckets validated: 0 <= index < LATENCY_BUCKETS
                total[index] += count
            drift = self._drift(message.device_id, model, ts, baselines) if model.outputs else None
            track = self.quality.observe(message.device_id, model, ts) if model.outputs or model.inputs else None
            if latest or ts >= view.ts:
                if view.version != model.version:
                    view.drift, view.quality = {}, None
                view.version, view.ts = model.version, ts
                view.requests, view.errors = model.requests, model.errors
                view.rps = model.requests / span if span else 0.0
                view.latency, view._quantiles = model.latency, None
                view.max_ms = model.latency_max_ms if model.requests else None
                view.raw_outputs = model.outputs
                if drift:
                    view.drift.update(drift)
                if track is not None and track.version == model.version:
                    view.quality = track.status(self.quality.settings)

    def _drift(
        self, device_id: str, model: FastModelTelemetry, ts: float, baselines: list[dict[str, Any]]
    ) -> dict[str, dict[str, Any]]:
        result: dict[str, dict[str, Any]] = {}
        for output, stats in model.outputs.items():
            if not stats.count:
                continue
            key = (device_id, model.name, model.version, output)
            base = self._baselines.get(key)
            if base is None:
                held = self._baselines_per_device.get(device_id, 0)
                if held >= MAX_BASELINES_PER_DEVICE:
                    continue  # capped: a device cycling model names or versions cannot grow the table
                self._baselines_per_device[device_id] = held + 1
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
                self._baselines_per_device[device_id] -= 1
            view = self.devices.get(device_id)
            if view:
                for m in view.models.values():
                    if model is None or m.name == model:
                        m.drift, m.quality = {}, None
        self.quality.reset(device_id, model, time.time())
        return self.db.reset_drift_baseline(device_id, model)

    # -- reads -----------------------------------------------------------------------------------------------------

    def device_summary(self, device_id: str) -> dict[str, Any] | None:
        with self._lock:
            view = self.devices.get(device_id)
            return view.summary() if view else None

    def fleet_summary(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {d: v.summary() for d, v in sorted(self.devices.items())}

    def history(
        self, device_id: str, since: float, limit: int = 10_000, before: float | None = None
    ) -> list[dict[str, Any]]:
        """The newest `limit` samples with since <= ts (< before), oldest first."""
        samples = []
        for _, payload in self.db.telemetry_since(device_id, since, limit, before):
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
                            m.quality_score,
                        )
                        for m in d.models.values()
                    ],
                )  # fmt: skip
                for d in sorted(self.devices.values(), key=lambda v: v.device_id)
            ]


def _first_line(exc: Exception) -> str:
    return (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__])[0]


def dumps(data: Any) -> str:
    return json.dumps(data, default=str)
