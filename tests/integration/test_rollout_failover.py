"""A rollout survives the death of the replica driving it: three `edge-controller serve` replicas on one PostgreSQL
database and one Mosquitto, two real agents under traffic; the replica holding the `rollouts` lease is SIGKILLed
mid-wave, another takes the lease and completes the rollout without repeating or skipping a transition."""

from __future__ import annotations

import json

import sqlalchemy as sa
from conftest import wait_model_state, wait_until
from test_replicas import cluster  # noqa: F401  (the fixture)
from test_rollouts import AGENT_CONFIG, Traffic, same_answers

from controller.db.database import make_engine
from edgectl.client import ControllerClient


def lease_owner(db_url: str) -> str | None:
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            query = sa.text(
                "select owner from leases where name = 'rollouts' and expires_at > extract(epoch from now())"
            )
            return conn.execute(query).scalar()
    finally:
        engine.dispose()


def test_the_replica_driving_a_rollout_killed_mid_wave_another_completes_it(
    cluster,  # noqa: F811
    start_agent,
    mlp_model,
    tmp_path,  # noqa: F811
):
    replicas, port, db_url = cluster
    broker = ["--broker", f"mqtt://127.0.0.1:{port}"]
    agents = [start_agent(f"cam-{i}", config=AGENT_CONFIG, extra=broker) for i in range(2)]
    client = ControllerClient(replicas[0].url)
    wait_until(lambda: all(any(d["id"] == a.device_id and d["online"] for d in client.devices()) for a in agents),
               30, "agents online")  # fmt: skip
    record = client.upload_model(mlp_model, "m", "1")
    client.deploy("m", "1", [a.device_id for a in agents])

    class Handle:  # what wait_model_state reads
        def device(self, device_id):
            return client.device(device_id)

    for a in agents:
        wait_model_state(Handle(), a.device_id, "m", record["sha256"], {"serving"}, timeout=60)
    good = same_answers(mlp_model, tmp_path / "m2.onnx")
    client.upload_model(good, "m", "2")
    traffic = Traffic(agents)
    try:
        rollout = client.start_rollout({
            "model": "m", "version": "2", "waves": "1,100%", "bake_s": 8, "min_requests": 20, "max_p95_ratio": 5,
            "activate_timeout_s": 60, "seed": 1,
        })  # fmt: skip
        wait_until(lambda: client.rollout(rollout["id"])["phase"] == "baking", 60, "wave 1 baking")
        owner = lease_owner(db_url)
        (driver,) = [r for r in replicas if (r.health() or {}).get("replica") == owner]
        driver.kill()
        survivor = ControllerClient(next(r for r in replicas if r is not driver).url)
        done = wait_until(
            lambda: (r := survivor.rollout(rollout["id"]))["state"] in ("completed", "halted", "paused") and r,
            120, "the rollout to finish on another replica",
        )  # fmt: skip
        assert done["state"] == "completed", done["reason"]
        assert lease_owner(db_url) not in (None, owner)
        events = survivor.rollout_events(rollout["id"])
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), json.dumps(events)[:2000]
        kinds = [(e["kind"], e["wave"]) for e in events]
        for kind in ("wave_started", "activated", "wave_passed"):
            assert sorted(w for k, w in kinds if k == kind) == [0, 1], kinds
        assert sum(k == "started" for k, _ in kinds) == 1
    finally:
        traffic.close()
    for a in agents:
        models = lambda a=a: survivor.device(a.device_id)["models"]  # noqa: E731
        wait_until(lambda m=models: any((e.get("serving") or {}).get("version") == "2" for e in m()), 30, "v2 served")
