"""Leases on a real database: one statement takes, renews or refuses a lease; replicas racing for a lapsed lease
(threads here, each with its own connection) leave exactly one holder; a lease not renewed lapses by the database's
clock and is listed for takeover."""

from __future__ import annotations

import threading
import time

import pytest
from test_telemetry import db  # noqa: F401  (db: the SQLite and PostgreSQL fixture)

from controller.replicas.leases import LEADER, REPLICA, Leases


def test_a_lease_is_held_by_one_owner_until_it_lapses(db):  # noqa: F811
    a, b = Leases(db.writer, "a", ttl_s=0.6), Leases(db.writer, "b", ttl_s=0.6)
    assert a.acquire(LEADER)  # creates the row
    assert not b.acquire(LEADER)
    assert a.acquire(LEADER) and a.renew(LEADER)  # the holder renews either way
    assert not b.renew(LEADER)
    assert a.holders() == {LEADER: "a"}
    time.sleep(0.8)
    assert a.holders() == {}
    assert b.acquire(LEADER)  # lapsed: taken
    assert not a.renew(LEADER) and not a.acquire(LEADER)
    b.release(LEADER)
    assert a.acquire(LEADER)


def test_a_lapsed_membership_is_listed_and_taken_once(db):  # noqa: F811
    dead, alive = Leases(db.writer, "dead", ttl_s=5), Leases(db.writer, "alive", ttl_s=5)
    assert dead.acquire(REPLICA + "dead") and alive.acquire(REPLICA + "alive")
    assert alive.lapsed(REPLICA) == []
    dead.expire(REPLICA + "dead")
    assert alive.lapsed(REPLICA) == [REPLICA + "dead"]
    assert alive.acquire(REPLICA + "dead")
    assert alive.lapsed(REPLICA) == [] and not dead.renew(REPLICA + "dead")


@pytest.mark.parametrize("lapsed", [False, True], ids=["new", "lapsed"])
def test_replicas_racing_for_a_lease_leave_one_holder(db, lapsed):  # noqa: F811
    if db.engine.dialect.name != "postgresql":
        pytest.skip("SQLite serves one process")
    if lapsed:
        old = Leases(db.writer, "old", ttl_s=5)
        assert old.acquire(LEADER)
        old.expire(LEADER)
    racers = [Leases(db.writer, f"r{i}", ttl_s=5) for i in range(8)]
    start = threading.Barrier(len(racers))
    won: list[str] = []

    def race(leases: Leases) -> None:
        start.wait()
        if leases.acquire(LEADER):
            won.append(leases.owner)

    threads = [threading.Thread(target=race, args=(r,)) for r in racers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(won) == 1, won
    assert racers[0].holders()[LEADER] == won[0]
