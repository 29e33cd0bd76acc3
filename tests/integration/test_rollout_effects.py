"""A rollout wave's deployments applied as a batch (SQLite and PostgreSQL): every device's desired-state row written
in one transaction, its generation bumped once, its desired state published once, the rollout rows marked done; a
device already at the target is left alone, and one that cannot take it (gone from the fleet) is recorded with why
while the rest of the wave is deployed. Then the revert: every device back on its previous version, or the model
removed where it had none."""

from __future__ import annotations

import time

import sqlalchemy as sa
from test_registry import db  # noqa: F401  (the fixture: SQLite, and PostgreSQL when it is there)

from controller.db.database import ModelRow
from controller.db.schema import devices as devices_table
from controller.fleet.deployments import Deployments
from controller.rollouts.effects import apply_pending, revert_target
from controller.rollouts.store import Change, RolloutStore


class Recorder:
    """The fleet's publisher: which devices were told their desired state."""

    def __init__(self) -> None:
        self.published: list[str] = []

    def publish_desired(self, device_id: str) -> None:
        self.published.append(device_id)


def generations(database, ids) -> dict[str, int]:
    with database.engine.connect() as conn:
        query = sa.select(devices_table.c.id, devices_table.c.generation).where(devices_table.c.id.in_(ids))
        return dict(conn.execute(query).all())


def test_a_wave_is_deployed_as_a_batch_and_reverted(db):  # noqa: F811
    for version in ("1", "2"):
        db.add_model(ModelRow("m", version, version * 64, 10, "onnx", "m.onnx", {}, time.time()))
    ids = [f"cam-{i:03d}" for i in range(120)]
    for device_id in ids:
        db.record_presence(device_id, True, {"arch": "x86_64"}, "1.0", None)
    fleet = Recorder()
    deployments = Deployments(db, fleet)
    deployments.deploy("m", "1", ids[:100])  # 100 on version 1, 19 without the model, cam-119 already on 2
    deployments.deploy("m", "2", ids[119:])
    fleet.published.clear()
    before = generations(db, ids)
    store = RolloutStore(db)
    rollout = {
        "id": "r1", "name": "m-2", "model": "m", "version": "2", "state": "running", "reason": "", "spec": {},
        "wave": 0, "phase": "activating", "phase_until": None, "extended": False, "waves": [],
        "created_at": time.time(), "updated_at": time.time(),
    }  # fmt: skip
    rows = [{"device_id": d, "hw_class": "x86", "wave": 0, "previous": "1" if i < 100 else None, "state": "waiting",
             "target": None, "applied": True, "pushed_at": None, "activated_at": None}
            for i, d in enumerate(ids)]  # fmt: skip
    rows.append({**rows[0], "device_id": "cam-gone"})  # planned, then gone from the fleet
    store.create(rollout, rows, {"kind": "created", "wave": None, "reason": "", "data": {}})
    all_ids = [*ids, "cam-gone"]
    pushed = Change(devices=[(all_ids, {"state": "pushed", "target": "2", "applied": False})])
    rollout = store.transition(store.get("r1"), "wave_started", "", {}, pushed)

    commits: list[int] = []
    sa.event.listen(db.engine, "commit", lambda _conn: commits.append(1))
    assert apply_pending(store, deployments, rollout, store.devices("r1")) == len(all_ids)
    assert len(commits) <= 3, len(commits)  # the batch and the marks: not one or two per device
    assert all(db.get_deployment(d, "m")["version"] == "2" for d in ids)
    assert sorted(fleet.published) == ids[:119]  # each once; cam-119 was at the target already
    after = generations(db, ids)
    assert all(after[d] == before[d] + 1 for d in ids[:119]) and after[ids[119]] == before[ids[119]]
    done = {r["device_id"]: r for r in store.devices("r1")}
    assert all(r["applied"] for r in done.values())
    assert "unknown device cam-gone" in done["cam-gone"]["detail"] and done[ids[0]]["detail"] is None
    assert apply_pending(store, deployments, rollout, store.devices("r1")) == 0  # idempotent: nothing undone

    fleet.published.clear()
    reverts = [([r["device_id"]], {"state": "reverted", "target": revert_target(r), "applied": False})
               for r in store.devices("r1") if r["device_id"] != "cam-gone"]  # fmt: skip
    rollout = store.transition(rollout, "aborted", "", {}, Change({"state": "aborted"}, devices=reverts))
    assert apply_pending(store, deployments, rollout, store.devices("r1")) == len(ids)
    assert all(db.get_deployment(d, "m")["version"] == "1" for d in ids[:100])
    assert all(db.get_deployment(d, "m") is None for d in ids[100:])  # had none: the model removed
    assert sorted(fleet.published) == ids
