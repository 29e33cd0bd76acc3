"""The evidence a rollout decision reads, summed by the database (SQLite and PostgreSQL): per device its previous
version's windows in the baseline before the push, the new version's since it was seen serving it, the peers' since
the wave activated, and restarts (telemetry `seq` going backwards) while serving; checked against a plain sum of
the same generated telemetry, as it is stored (defaults left out: a `seq` of 0 and an empty histogram are absent)."""

from __future__ import annotations

import json
import random

from test_registry import db  # noqa: F401  (the fixture: SQLite, and PostgreSQL when it is there)

from controller.rollouts.evidence import collect
from controller.rollouts.gates import Window
from controller.rollouts.store import RolloutStore
from protocol import latency_bucket
from protocol.telemetry_fast import FastModelTelemetry, FastTelemetry, encode_telemetry

NOW = 10_000.0
PUSHED = NOW - 60.0
ACTIVATED = NOW - 50.0
BASELINE_S = 30.0


def sample(device_id: str, ts: float, seq: int, models: list[tuple[str, str, int, int, list[float]]]) -> dict:
    entries = []
    for name, version, requests, errors, latencies in models:
        counts: dict[int, int] = {}
        for ms in latencies:
            counts[latency_bucket(ms)] = counts.get(latency_bucket(ms), 0) + 1
        entries.append(FastModelTelemetry(
            name=name, version=version, requests=requests, errors=errors, latency=sorted(counts.items()),
            latency_max_ms=max(latencies, default=0.0),
        ))  # fmt: skip
    message = FastTelemetry(device_id=device_id, ts=ts, seq=seq, start=ts - 1, interval_s=1.0, models=entries)
    return {"device_id": device_id, "ts": ts, "received_at": ts, "payload": encode_telemetry(message)}


def reference(rows: list[dict], device_id: str, model: str, accept, start: float, end: float) -> Window:
    """The plain sum the database must match."""
    window = Window()
    for row in rows:
        if row["device_id"] != device_id or not start <= row["ts"] < end:
            continue
        for entry in json.loads(row["payload"]).get("models", []):
            if entry["name"] == model and accept(entry["version"]):
                window.add(entry.get("requests", 0), entry.get("errors", 0), entry.get("latency", []),
                           entry.get("latency_max_ms", 0.0))  # fmt: skip
    return window


def same(a: Window, b: Window) -> bool:
    def key(w: Window) -> tuple:
        return w.requests, w.errors, w.latency, round(w.max_ms, 6)

    return key(a) == key(b)


def test_the_database_sums_what_a_plain_sum_does_and_sees_restarts(db):  # noqa: F811
    rng = random.Random(3)
    store = RolloutStore(db)
    wave = {"serving": ["d-ok", "d-restart"], "pushed": ["d-pending"]}
    peers = ["p-1", "p-2", "p-quiet"]
    rollout = {
        "id": "r1", "name": "m-2", "model": "m", "version": "2", "state": "running", "reason": "",
        "spec": {"baseline_s": BASELINE_S}, "wave": 0, "phase": "baking", "phase_until": NOW, "extended": False,
        "waves": [], "created_at": PUSHED, "updated_at": PUSHED,
    }  # fmt: skip
    devices = [{"device_id": d, "hw_class": "x86", "wave": 0, "previous": "1", "state": state, "target": "2",
                "applied": True, "pushed_at": PUSHED, "activated_at": ACTIVATED if state == "serving" else None}
               for state, ids in wave.items() for d in ids]  # fmt: skip
    devices += [{"device_id": d, "hw_class": "x86", "wave": 1, "previous": "1", "state": "waiting", "target": None,
                 "applied": True, "pushed_at": None, "activated_at": None} for d in peers]  # fmt: skip
    store.create(rollout, devices, {"kind": "created", "wave": None, "reason": "", "data": {}})
    rows = []
    for device_id in ["d-ok", "d-restart", "d-pending", "p-1", "p-2"]:
        seq = 0  # the first sample's seq is 0: stored without the field
        for ts in range(int(NOW) - 120, int(NOW)):
            wave_device = device_id.startswith("d-")
            version = "2" if wave_device and device_id != "d-pending" and ts >= ACTIVATED - 3 else "1"
            if device_id in ("d-restart", "p-2") and ts == int(ACTIVATED) + 20:
                seq = 0  # the agent started again
            latencies = [rng.lognormvariate(1.5, 0.3) for _ in range(rng.randint(0, 12))]
            models = [("m", version, len(latencies), rng.randint(0, 1), latencies), ("other", "9", 5, 5, [99.0])]
            rows.append(sample(device_id, ts + 0.25, seq, models))
            seq += 1
    rows.append(sample("p-quiet", NOW - 200, 0, []))  # a peer with nothing in the period
    assert db.insert_each("telemetry", rows) == [None] * len(rows)

    by_class, pooled, restarts = collect(
        db, rollout, [d for d in store.devices("r1") if d["wave"] == 0], {"x86": peers},
        {d: {"state": [{"name": "m", "serving": {"version": "2"}}]} for d in ["d-ok", "d-restart"]}, ACTIVATED, NOW,
    )  # fmt: skip

    evidence = {e.device_id: e for e in by_class["x86"]}
    assert set(evidence) == {"d-ok", "d-restart", "d-pending"} and evidence["d-pending"].activation is None
    for device_id in ("d-ok", "d-restart", "d-pending"):
        old = reference(rows, device_id, "m", lambda v: v == "1", PUSHED - BASELINE_S, PUSHED)
        assert old.requests > 0 and same(evidence[device_id].old, old), device_id
    for device_id in ("d-ok", "d-restart"):
        new = reference(rows, device_id, "m", lambda v: v == "2", ACTIVATED, NOW + 1)
        assert new.requests > 0 and same(evidence[device_id].new, new), device_id
    assert evidence["d-pending"].new.requests == 0
    assert evidence["d-ok"].restart is None and evidence["d-ok"].harm is None
    assert evidence["d-restart"].restart is not None and "seq 89 -> 0" in evidence["d-restart"].restart
    peer_window = Window()
    for device_id in peers:
        peer_window.merge(reference(rows, device_id, "m", lambda v: v != "2", ACTIVATED, NOW + 1))
    assert same(pooled["x86"], peer_window)
    assert restarts["x86"].seen == 2 and list(restarts["x86"].restarted) == ["p-2"]
