"""Rollouts in the database: the rollout row, its devices, its append-only events and the claims (one active rollout per
device and model). A transition is one transaction that commits only from the `seq` it read (UPDATE ... WHERE seq =
read) and appends the event numbered seq + 1: whichever replica (or API call) commits first wins, the other gets
Stale and reads again, so a takeover never repeats or skips a transition."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from controller.db.database import Database
from controller.db.schema import rollout_claims, rollout_devices, rollout_events, rollouts
from protocol.errors import EdgeError

ACTIVE = ("planned", "running", "paused")
TERMINAL = ("halted", "completed", "aborted")
CHUNK = 500  # ids per IN (...) list


class Stale(RuntimeError):
    """Another replica (or an API call) made a transition of this rollout first: read it again."""


@dataclass
class Change:
    """What one transition does besides its event: the rollout's new fields, device rows updated (ids -> values),
    device rows added (with their claims), and whether the rollout gives its claims back (it ended)."""

    rollout: dict[str, Any] = field(default_factory=dict)
    devices: list[tuple[Sequence[str], dict[str, Any]]] = field(default_factory=list)
    added: list[dict[str, Any]] = field(default_factory=list)
    release: bool = False


def _chunks(ids: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(ids), CHUNK):
        yield ids[i : i + CHUNK]


class RolloutStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.engine = db.engine

    # -- reads -------------------------------------------------------------------------------------------------------

    def get(self, rollout_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(rollouts).where(rollouts.c.id == rollout_id)).first()
        if row is None:
            raise EdgeError(f"no rollout {rollout_id!r}; `edgectl rollout list` shows them", "unknown_rollout")
        return dict(row._mapping)

    def listed(self, states: Sequence[str] | None = None) -> list[dict[str, Any]]:
        query = sa.select(rollouts).order_by(rollouts.c.created_at)
        if states:
            query = query.where(rollouts.c.state.in_(states))
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def devices(self, rollout_id: str) -> list[dict[str, Any]]:
        query = sa.select(rollout_devices).where(rollout_devices.c.rollout_id == rollout_id)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query.order_by(rollout_devices.c.device_id))]

    def events(self, rollout_id: str, after: int = 0) -> list[dict[str, Any]]:
        query = sa.select(rollout_events).where(rollout_events.c.rollout_id == rollout_id, rollout_events.c.seq > after)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query.order_by(rollout_events.c.seq))]

    def claimed(self, model: str, device_ids: Sequence[str]) -> dict[str, str]:
        """device id -> the active rollout holding it for `model`."""
        found: dict[str, str] = {}
        with self.engine.connect() as conn:
            for ids in _chunks(list(device_ids)):
                query = sa.select(rollout_claims.c.device_id, rollout_claims.c.rollout_id).where(
                    rollout_claims.c.model == model, rollout_claims.c.device_id.in_(ids)
                )
                found.update({d: r for d, r in conn.execute(query)})
        return found

    # -- writes ------------------------------------------------------------------------------------------------------

    def create(self, row: dict[str, Any], devices: list[dict[str, Any]], event: dict[str, Any]) -> None:
        """The rollout, its devices, their claims and event 1 in one transaction; rollout_conflict when another
        active rollout claimed one of the devices for this model meanwhile."""
        with self.engine.begin() as conn:
            conn.execute(rollouts.insert().values(**row, seq=1))
            self._add_devices(conn, row["id"], row["model"], devices)
            conn.execute(rollout_events.insert().values(rollout_id=row["id"], seq=1, ts=row["created_at"], **event))

    def _add_devices(self, conn: sa.Connection, rollout_id: str, model: str, devices: list[dict[str, Any]]) -> None:
        if not devices:
            return
        claims = [{"device_id": d["device_id"], "model": model, "rollout_id": rollout_id} for d in devices]
        try:
            with conn.begin_nested():
                conn.execute(rollout_claims.insert(), claims)
        except sa.exc.IntegrityError:
            held = self.claimed(model, [d["device_id"] for d in devices])
            raise EdgeError(
                f"another active rollout already holds {model} on {sorted(held)[:5]} ({sorted(set(held.values()))});"
                " finish or abort it first, or select other devices",
                "rollout_conflict",
            ) from None
        conn.execute(rollout_devices.insert(), [{"rollout_id": rollout_id, **d} for d in devices])

    def transition(
        self, rollout: dict[str, Any], kind: str, reason: str, data: dict[str, Any], change: Change,
        ts: float | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Commit one transition made from `rollout` as read (its seq); Stale when another came first. Returns the
        rollout's new fields merged into it. ts: the clock the decision was made on (the engine's step), so an
        event's time and the deadlines computed from it agree (a bake is never shorter than its events show)."""
        now = time.time() if ts is None else ts
        seq = int(rollout["seq"]) + 1
        values = {**change.rollout, "seq": seq, "updated_at": now}
        with self.engine.begin() as conn:
            guard = (rollouts.c.id == rollout["id"]) & (rollouts.c.seq == rollout["seq"])
            if conn.execute(rollouts.update().where(guard).values(**values)).rowcount != 1:
                raise Stale(f"rollout {rollout['id']} moved past seq {rollout['seq']}")
            event = {"rollout_id": rollout["id"], "seq": seq, "ts": now, "kind": kind, "reason": reason[:512]}
            conn.execute(rollout_events.insert().values(**event, wave=rollout.get("wave"), data=data))
            for ids, device_values in change.devices:
                for part in _chunks(list(ids)):
                    where = (rollout_devices.c.rollout_id == rollout["id"]) & rollout_devices.c.device_id.in_(part)
                    conn.execute(rollout_devices.update().where(where).values(**device_values))
            self._add_devices(conn, rollout["id"], rollout["model"], change.added)
            if change.release:
                conn.execute(rollout_claims.delete().where(rollout_claims.c.rollout_id == rollout["id"]))
        return {**rollout, **values}

    def mark_applied(self, rollout_id: str, device_ids: Sequence[str], details: dict[str, str]) -> int:
        """The effects on these devices are done (with why, where one could not be): one transaction."""
        done = 0
        with self.engine.begin() as conn:
            for chunk in _chunks(list(device_ids)):
                where = (rollout_devices.c.rollout_id == rollout_id) & rollout_devices.c.device_id.in_(chunk)
                done += conn.execute(rollout_devices.update().where(where).values(applied=True)).rowcount
            for device_id, detail in details.items():
                where = (rollout_devices.c.rollout_id == rollout_id) & (rollout_devices.c.device_id == device_id)
                conn.execute(rollout_devices.update().where(where).values(detail=detail))
        return done

    def observe_many(self, rollout_id: str, device_ids: Sequence[str], only_state: str, **values: Any) -> set[str]:
        """`observe` for many devices seen doing the same thing (one transaction); the ids whose row changed."""
        changed: set[str] = set()
        with self.engine.begin() as conn:
            for chunk in _chunks(list(device_ids)):
                where = (rollout_devices.c.rollout_id == rollout_id) & rollout_devices.c.device_id.in_(chunk)
                query = rollout_devices.update().where(where & (rollout_devices.c.state == only_state)).values(**values)
                changed.update(conn.execute(query.returning(rollout_devices.c.device_id)).scalars())
        return changed

    def observe(self, rollout_id: str, device_id: str, only_state: str | None, **values: Any) -> bool:
        """Record what a device was seen doing (activated, failed, effect applied): not a decision, idempotent; with
        `only_state`, only while the device row is still in that state. False when nothing changed."""
        where = (rollout_devices.c.rollout_id == rollout_id) & (rollout_devices.c.device_id == device_id)
        if only_state is not None:
            where &= rollout_devices.c.state == only_state
        with self.engine.begin() as conn:
            return bool(conn.execute(rollout_devices.update().where(where).values(**values)).rowcount)
