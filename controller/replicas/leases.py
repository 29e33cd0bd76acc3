"""Leases in the database: work that one controller replica must do at a time (publishing desired states on
connect, telemetry retention) belongs to whoever holds the `leader` row, and each replica holds a `replica:<id>` row
while it lives. A holder renews every few seconds; a row whose `expires_at` has passed may be taken by anyone, in
one conditional statement, so two replicas never both win. Times are the database's clock (PostgreSQL), so replicas
on machines whose clocks disagree still agree on who holds what. SQLite serves one process: it always holds every
lease.

Each call is one prepared statement in autocommit with the clock read inside it, and a replica's periodic calls share
one connection (`connection()`): it renews every 2 s for as long as it lives, and a transaction per call with a
separate clock query cost five round trips each.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from controller.db.database import upsert
from controller.db.schema import leases

LEADER = "leader"
REPLICA = "replica:"  # + the replica's id: its membership (its telemetry session is adopted once this lapses)


class Leases:
    """Take, renew, release and list lease rows; each method takes an open `connection()` or opens its own."""

    def __init__(self, engine: Engine, owner: str, ttl_s: float) -> None:
        self.shared = engine.dialect.name == "postgresql"  # replicas possible; SQLite is always one process
        self.engine = engine.execution_options(isolation_level="AUTOCOMMIT") if self.shared else engine
        self.owner = owner
        self.ttl_s = ttl_s
        now = self._now()
        name, owner_, expires = leases.c.name, leases.c.owner, leases.c.expires_at
        lease, me = sa.bindparam("lease", type_=sa.String), sa.bindparam("me", type_=sa.String)
        held = {"owner": me, "expires_at": now + sa.bindparam("ttl")}
        taken = upsert(engine, leases, ["name"], {"name": lease, **held}, held, where=(owner_ == me) | (expires < now))
        self._acquire = taken.returning(owner_)  # the row comes back only when it was inserted or updated
        mine = leases.update().where(name == lease, owner_ == me)
        self._renew = mine.values(expires_at=now + sa.bindparam("ttl"))
        self._expire = mine.values(expires_at=0.0)
        self._release = leases.delete().where(name == lease, owner_ == me)
        self._lapsed = sa.select(name).where(name.startswith(sa.bindparam("prefix")), expires < now)
        self._holders = sa.select(name, owner_).where(expires >= now)

    def _now(self) -> sa.ColumnElement[float]:
        """The current time as SQL: PostgreSQL's clock when the statement runs, else this machine's (read then)."""
        if self.shared:
            return sa.cast(sa.extract("epoch", sa.func.clock_timestamp()), sa.Float)
        return sa.bindparam("now", type_=sa.Float, callable_=time.time)

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn

    def _run(self, statement: sa.Executable, conn: Connection | None, **params: object) -> list[sa.Row] | int:
        """The rows the statement returns, else how many it changed."""
        if conn is None:
            with self.engine.begin() as own:
                return self._run(statement, own, **params)
        result = conn.execute(statement, {"me": self.owner, "ttl": self.ttl_s, **params})
        return list(result.all()) if result.returns_rows else result.rowcount

    def _rows(self, statement: sa.Executable, conn: Connection | None, **params: object) -> list[sa.Row]:
        rows = self._run(statement, conn, **params)
        assert isinstance(rows, list)
        return rows

    def acquire(self, name: str, conn: Connection | None = None) -> bool:
        """Take the lease (creating its row), or renew it when this owner holds it; False while someone else's has
        not lapsed. One INSERT ... ON CONFLICT DO UPDATE ... WHERE: the database decides who wins."""
        return bool(self._run(self._acquire, conn, lease=name))

    def renew(self, name: str, conn: Connection | None = None) -> bool:
        """Extend a lease this owner holds; False when it lapsed and someone else took it (or it is gone)."""
        return bool(self._run(self._renew, conn, lease=name))

    def release(self, name: str, conn: Connection | None = None) -> None:
        self._run(self._release, conn, lease=name)

    def expire(self, name: str, conn: Connection | None = None) -> None:
        """Let this owner's lease lapse now (it stays, for another replica to take and act on)."""
        self._run(self._expire, conn, lease=name)

    def lapsed(self, prefix: str, conn: Connection | None = None) -> list[str]:
        """Names starting with `prefix` whose lease has lapsed (their holder stopped renewing)."""
        return [row.name for row in self._rows(self._lapsed, conn, prefix=prefix)]

    def holders(self, conn: Connection | None = None) -> dict[str, str]:
        """name -> owner of every lease that has not lapsed."""
        return {row.name: row.owner for row in self._rows(self._holders, conn)}
