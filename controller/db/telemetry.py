"""The telemetry tables' reads and writes, mixed into controller.db.database.Database: batches that fall back to one row
at a time (a row the database refuses costs only itself), keyset-paginated history and retention by receive time."""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from controller.db.quality import QualityBaselineTables
from controller.db.schema import drift_baselines, telemetry, telemetry_quarantine

log = logging.getLogger(__name__)

QUARANTINE_PAYLOAD_CHARS = 16 << 10
# PostgreSQL: a whole batch as four arrays in one statement; psycopg's executemany sends a statement per row, and
# on the controller's side that costs about as much as decoding the sample did
_PG_BATCH = (
    "INSERT INTO telemetry (device_id, ts, received_at, payload) "
    "SELECT * FROM unnest(%b::varchar[], %b::float8[], %b::float8[], %b::text[]) ON CONFLICT DO NOTHING"
)


class TelemetryTables(QualityBaselineTables):
    """Telemetry storage; the host class provides `engine`, and `writer`: the engine the ingest writes with (on
    PostgreSQL one in autocommit without a ping per checkout: a batch is one statement, atomic by itself, so BEGIN
    and COMMIT were two round trips for nothing; a batch that meets a dead connection fails whole and is delivered
    again by the broker, so the ping's round trip per batch buys nothing either)."""

    engine: Engine
    writer: Engine

    def _insert_ignoring_duplicates(self, table: sa.Table):
        dialect = self.engine.dialect.name
        if dialect == "postgresql":
            from sqlalchemy.dialects import postgresql

            return postgresql.insert(table).on_conflict_do_nothing()
        if dialect == "sqlite":
            from sqlalchemy.dialects import sqlite

            return sqlite.insert(table).on_conflict_do_nothing()
        return table.insert()

    def insert_each(self, table: str, rows: list[dict[str, Any]]) -> list[str | None]:
        """The rows in one transaction when the database takes them all; else one transaction per row. Per row: None
        when stored (or a duplicate), else the database's one-line reason."""
        target = {"telemetry": telemetry, "drift_baselines": drift_baselines}[table]
        if not rows:
            return []
        try:
            with self.writer.begin() as conn:
                if target is telemetry and self.writer.dialect.name == "postgresql" and len(rows) > 1:
                    columns = [[row[c] for row in rows] for c in ("device_id", "ts", "received_at", "payload")]
                    conn.exec_driver_sql(_PG_BATCH, tuple(columns))
                else:
                    conn.execute(self._insert_ignoring_duplicates(target), rows)
            return [None] * len(rows)
        except sa.exc.OperationalError:
            raise  # the database is unreachable, not refusing a row: the batch is not stored (nor acknowledged)
        except Exception as exc:  # a row the database refuses: find it, keep the others
            log.warning("a batch of %d %s rows failed (%s); storing them one by one", len(rows), table, _reason(exc))
        reasons: list[str | None] = []
        for row in rows:
            try:
                with self.writer.begin() as conn:
                    conn.execute(self._insert_ignoring_duplicates(target), [row])
                reasons.append(None)
            except Exception as exc:
                reasons.append(_reason(exc))
        return reasons

    def quarantine_telemetry(self, device_id: str, received_at: float, reason: str, payload: str) -> None:
        """Keep a sample the database refused, cut to QUARANTINE_PAYLOAD_CHARS, for the operator to read."""
        safe = payload[:QUARANTINE_PAYLOAD_CHARS].replace("\x00", "\\u0000")
        row = {"device_id": device_id[:64], "received_at": received_at, "reason": reason[:512], "payload": safe}
        try:
            with self.engine.begin() as conn:
                conn.execute(telemetry_quarantine.insert().values(**row))
        except Exception as exc:
            log.warning("could not quarantine a sample from %s: %s", device_id, _reason(exc))

    def quarantined(self, device_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        query = sa.select(telemetry_quarantine).order_by(telemetry_quarantine.c.id.desc()).limit(limit)
        if device_id is not None:
            query = query.where(telemetry_quarantine.c.device_id == device_id)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query).all()]

    def telemetry_since(
        self, device_id: str, since: float, limit: int = 10_000, before: float | None = None
    ) -> list[tuple[float, str]]:
        """(ts, payload JSON) of a device's samples with since <= ts (< before), oldest first (the newest `limit`)."""
        where = [telemetry.c.device_id == device_id, telemetry.c.ts >= since]
        if before is not None:
            where.append(telemetry.c.ts < before)
        query = sa.select(telemetry.c.ts, telemetry.c.payload).where(*where).order_by(telemetry.c.ts.desc())
        with self.engine.connect() as conn:
            rows = conn.execute(query.limit(limit)).all()
        return [(r.ts, r.payload) for r in reversed(rows)]

    def count_telemetry(self, device_prefix: str | None = None) -> int:
        query = sa.select(sa.func.count()).select_from(telemetry)
        if device_prefix:
            query = query.where(telemetry.c.device_id.startswith(device_prefix))
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def prune_telemetry(self, before: float) -> int:
        """Retention: delete samples received before `before` (the controller's clock, so a device dating its
        samples in the year 3000 cannot keep them forever) or dated before it; returns how many went."""
        old = (telemetry.c.received_at < before) | (telemetry.c.ts < before)
        with self.engine.begin() as conn:
            removed = conn.execute(telemetry.delete().where(old)).rowcount or 0
            conn.execute(telemetry_quarantine.delete().where(telemetry_quarantine.c.received_at < before))
        return removed

    def drift_baselines(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.select(drift_baselines)).all()]

    def reset_drift_baseline(self, device_id: str, model: str | None = None) -> int:
        query = drift_baselines.delete().where(drift_baselines.c.device_id == device_id)
        if model:
            query = query.where(drift_baselines.c.model == model)
        with self.engine.begin() as conn:
            return conn.execute(query).rowcount or 0


def _reason(exc: Exception) -> str:
    """The first line of a database error, without SQLAlchemy's statement dump."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]
