"""Quality-drift baselines in the database (mixed into controller.db.database.Database through TelemetryTables), so
every controller replica judges a (device, model, version) against the same baseline and a restart keeps it.

A row is one version's baseline: `summary` (controller/telemetry/summary.py as JSON) once one replica froze it, NULL
while it is being (re)built. The first stored summary wins: a replica that froze its own later adopts the stored
one. `generation` counts the operator's resets: a reset through any replica empties the summary and raises it, and
a replica holding a baseline of an older generation drops it when it next reads the table.
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from controller.db.schema import quality_baselines

log = logging.getLogger(__name__)

_KEY = ("device_id", "model", "version")


def _where(device_id: str, model: str, version: str) -> Any:
    c = quality_baselines.c
    return sa.and_(c.device_id == device_id, c.model == model, c.version == version)


class QualityBaselineTables:
    """Reads and writes of `quality_baselines`; the host class provides `engine`."""

    engine: Engine

    def quality_baselines(self) -> list[dict[str, Any]]:
        """Every stored baseline row (a few per device and model: the versions it served)."""
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.select(quality_baselines)).all()]

    def store_quality_baseline(
        self, device_id: str, model: str, version: str, generation: int, rows: int, summary: str, now: float
    ) -> dict[str, Any]:
        """Store a frozen baseline unless one is stored already for this generation (the first wins); the row as
        stored now, which the caller adopts (another replica's summary, or a newer generation: a reset)."""
        values = {"device_id": device_id, "model": model, "version": version, "generation": generation,
                  "rows": rows, "summary": summary, "since": now, "updated_at": now}  # fmt: skip
        where = _where(device_id, model, version)
        c = quality_baselines.c
        with self.engine.begin() as conn:
            if conn.execute(sa.select(c.generation).where(where)).first() is None:
                self._insert_ignoring(conn, values)
            conn.execute(
                quality_baselines.update()
                .where(where, c.summary.is_(None), c.generation == generation)
                .values(rows=rows, summary=summary, updated_at=now)
            )
            return dict(conn.execute(sa.select(quality_baselines).where(where)).one()._mapping)

    def reset_quality_baselines(self, device_id: str, model: str | None, current: dict[str, str], now: float) -> int:
        """The operator's reset: each model's current version (`current`: model -> version where this replica knows
        it, else the newest stored) gets an empty baseline of the next generation; how many were reset."""
        c = quality_baselines.c
        query = sa.select(c.model, c.version, c.generation, c.updated_at).where(c.device_id == device_id)
        if model is not None:
            query = query.where(c.model == model)
        with self.engine.begin() as conn:
            stored = conn.execute(query).all()
            newest: dict[str, tuple[str, int, float]] = {}
            for row in stored:
                if row.model not in newest or row.updated_at > newest[row.model][2]:
                    newest[row.model] = (row.version, row.generation, row.updated_at)
            targets = {m: v for m, v in current.items() if model is None or m == model}
            for name, (version, _, _) in newest.items():
                targets.setdefault(name, version)
            generations = {(r.model, r.version): r.generation for r in stored}
            for name, version in targets.items():
                generation = generations.get((name, version))
                if generation is None:
                    values = {"device_id": device_id, "model": name, "version": version, "generation": 1,
                              "rows": 0, "summary": None, "since": now, "updated_at": now}  # fmt: skip
                    self._insert_ignoring(conn, values)
                    continue
                conn.execute(
                    quality_baselines.update()
                    .where(_where(device_id, name, version))
                    .values(generation=generation + 1, rows=0, summary=None, since=now, updated_at=now)
                )
        log.info("quality baselines of %s reset: %s", device_id, ", ".join(f"{m}@{v}" for m, v in targets.items()))
        return len(targets)

    def _insert_ignoring(self, conn: Connection, values: dict[str, Any]) -> None:
        dialect = conn.dialect.name
        if dialect == "postgresql":
            from sqlalchemy.dialects import postgresql

            conn.execute(postgresql.insert(quality_baselines).values(**values).on_conflict_do_nothing())
        elif dialect == "sqlite":
            from sqlalchemy.dialects import sqlite

            conn.execute(sqlite.insert(quality_baselines).values(**values).on_conflict_do_nothing())
        else:
            conn.execute(quality_baselines.insert().values(**values))
