"""The cost of one rollout decision's evidence on identical data, on PostgreSQL: the database summing it
(controller/rollouts/evidence.py) against reading every telemetry row and parsing it in Python in one pass (one
`json.loads` per row, summed per device; the code before 2026-12-07 did this less directly, sorting each device's
rows and walking them twice, and took ~4x this pass's CPU on the same data: bench/README.md). N wave devices, 60 s
of the previous version before the push and 40 s of the new one, one telemetry row per device and second (40
requests, as bench/fleet_rollout.py sends).

    python bench/rollout_evidence.py [100 400 500]      (EDGE_TEST_POSTGRES, default postgresql://postgres@127.0.0.1/test)

Prints medians of 5 runs: the controller thread's CPU, the PostgreSQL backend's CPU (from /proc, so the database must
run on this machine) and the wall time."""

from __future__ import annotations

import json
import os
import random
import statistics
import sys
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from controller.db.database import Database  # noqa: E402
from controller.db.schema import telemetry  # noqa: E402
from controller.rollouts.evidence import collect  # noqa: E402
from controller.rollouts.gates import Window  # noqa: E402
from controller.rollouts.store import RolloutStore  # noqa: E402
from protocol import latency_bucket  # noqa: E402
from protocol.telemetry_fast import FastModelTelemetry, FastTelemetry, encode_telemetry  # noqa: E402

POSTGRES = os.environ.get("EDGE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def row(device_id: str, ts: float, seq: int, version: str, rng: random.Random) -> dict:
    counts: dict[int, int] = {}
    for _ in range(40):
        bucket = latency_bucket(rng.lognormvariate(1.7, 0.15))
        counts[bucket] = counts.get(bucket, 0) + 1
    model = FastModelTelemetry(name="detector", version=version, requests=40, latency=sorted(counts.items()),
                               latency_max_ms=12.0)  # fmt: skip
    message = FastTelemetry(device_id=device_id, ts=ts, seq=seq, start=ts - 1, interval_s=1.0, models=[model])
    return {"device_id": device_id, "ts": ts, "received_at": ts, "payload": encode_telemetry(message)}


def parse_each_row(db: Database, ids: list[str], since: float, activated: float, pushed: float) -> dict:
    """Every row since the baseline began, parsed and summed in Python in one pass."""
    found: dict[str, tuple[Window, Window]] = {}
    with db.engine.connect() as conn:
        for i in range(0, len(ids), 500):
            query = sa.select(telemetry.c.device_id, telemetry.c.ts, telemetry.c.payload).where(
                telemetry.c.device_id.in_(ids[i : i + 500]), telemetry.c.ts >= since
            )
            for device_id, ts, payload in conn.execute(query):
                old, new = found.setdefault(device_id, (Window(), Window()))
                for entry in json.loads(payload).get("models") or []:
                    window = new if entry["version"] == "2" and ts >= activated else old if ts < pushed else None
                    if entry["name"] == "detector" and window is not None:
                        window.add(entry.get("requests", 0), entry.get("errors", 0), entry.get("latency", []),
                                   entry.get("latency_max_ms", 0.0))  # fmt: skip
    return found


def measure(n: int, admin: sa.Engine) -> dict[str, float]:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with admin.begin() as conn:
        conn.execute(sa.text(f"create schema {schema}"))
    db = Database(f"{POSTGRES}?options=-csearch_path%3D{schema}")
    try:
        now = time.time()
        pushed, activated = now - 42, now - 40
        store = RolloutStore(db)
        rollout = {"id": "r1", "name": "b", "model": "detector", "version": "2", "state": "running", "reason": "",
                   "spec": {"baseline_s": 60}, "wave": 0, "phase": "baking", "phase_until": now, "extended": False,
                   "waves": [], "created_at": pushed, "updated_at": pushed}  # fmt: skip
        ids = [f"d{i:04d}" for i in range(n)]
        devices = [{"device_id": d, "hw_class": "x86", "wave": 0, "previous": "1", "state": "serving", "target": "2",
                    "applied": True, "pushed_at": pushed, "activated_at": activated} for d in ids]  # fmt: skip
        store.create(rollout, devices, {"kind": "created", "wave": None, "reason": "", "data": {}})
        rng = random.Random(1)
        rows = [row(d, ts + 0.5, k, "2" if ts >= activated else "1", rng)
                for d in ids for k, ts in enumerate(range(int(pushed) - 60, int(now)))]  # fmt: skip
        for i in range(0, len(rows), 5000):
            db.insert_each("telemetry", rows[i : i + 5000])
        with db.engine.connect() as conn:
            conn.execute(sa.text("analyze telemetry"))
        wave_rows = store.devices("r1")
        runs: dict[str, list[float]] = {k: [] for k in ("before_cpu", "after_cpu", "after_db_cpu", "after_wall")}
        for _ in range(5):
            started = time.thread_time()
            parse_each_row(db, ids, pushed - 60, activated, pushed)
            runs["before_cpu"].append(time.thread_time() - started)
            with db.engine.connect() as conn:  # the pool's connection: the one collect() uses next
                pid = conn.execute(sa.text("select pg_backend_pid()")).scalar()
            backend, started, clock = backend_cpu(pid), time.thread_time(), time.monotonic()
            collect(db, rollout, wave_rows, {}, {}, activated, now)
            runs["after_cpu"].append(time.thread_time() - started)
            runs["after_wall"].append(time.monotonic() - clock)
            runs["after_db_cpu"].append(backend_cpu(pid) - backend)
        return {"devices": n, "rows": len(rows), **{k: round(statistics.median(v), 3) for k, v in runs.items()}}
    finally:
        db.close()
        with admin.begin() as conn:
            conn.execute(sa.text(f"drop schema {schema} cascade"))


def backend_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    admin = sa.create_engine(POSTGRES.replace("postgresql://", "postgresql+psycopg://"))
    for n in [int(a) for a in sys.argv[1:]] or [100, 400, 500]:
        print(json.dumps(measure(n, admin)), flush=True)
    admin.dispose()


if __name__ == "__main__":
    main()
