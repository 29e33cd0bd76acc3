"""The controller's database: model registry, device registry and deployments (SQLAlchemy Core: SQLite by default,
PostgreSQL by URL, one schema for both)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from controller.db.migrate import upgrade
from controller.db.schema import (
    deployment_variants,
    deployments,
    devices,
    models,
    variants,
)
from controller.db.telemetry import TelemetryTables
from protocol.errors import EdgeError


class Conflict(EdgeError, ValueError):
    """The request contradicts what is stored (e.g. a version re-used for different bytes)."""

    code = "conflict"


@dataclass(frozen=True)
class ModelRow:
    name: str
    version: str
    sha256: str
    size: int
    format: str
    filename: str
    info: dict[str, Any]
    created_at: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class VariantRow:
    model_name: str
    version: str
    variant: str
    sha256: str | None
    size: int
    format: str
    report: dict[str, Any]
    passed: bool
    created_at: float

    @property
    def ok(self) -> bool:
        """Built (it has an artifact), whether or not it passed."""
        return bool(self.sha256)

    def failure(self) -> str:
        """Why it may not be deployed without --force: the failed metrics, the figures too few samples vouch for
        (`unproven`, converters.evidence), or the build error."""
        if not self.ok:
            return f"could not be built: {self.report.get('error') or 'unknown error'}"
        failed = self.report.get("failed_metrics") or []
        unproven = [f"unproven: {line}" for line in self.report.get("unproven") or []]
        return "; ".join(failed or unproven) or "below the accuracy threshold"

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def upsert(
    engine: Engine, table: sa.Table, keys: list[str], row: dict[str, Any], update: dict[str, Any], where: Any = None
):
    """INSERT `row`, or UPDATE the `update` columns of the row with the same `keys` (where `where` holds for it: one
    statement, no race)."""
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects import postgresql

        insert: Any = postgresql.insert
    else:
        from sqlalchemy.dialects import sqlite

        insert = sqlite.insert
    return insert(table).values(**row).on_conflict_do_update(index_elements=keys, set_=update, where=where)


def make_engine(url: str, pre_ping: bool = True, autocommit: bool = False) -> Engine:
    """An engine for the URL; SQLite gets WAL and a busy timeout so API and MQTT threads share it."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    if autocommit:
        return sa.create_engine(url, pool_pre_ping=pre_ping, isolation_level="AUTOCOMMIT")
    return sa.create_engine(url, pool_pre_ping=pre_ping)


class Database(TelemetryTables):
    """All reads and writes the controller makes; each method is one short transaction."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        upgrade(self.engine)  # Alembic migrations, once even when replicas start together (controller/db/migrate.py)
        self.writer = self.engine if url.startswith("sqlite") else make_engine(url, pre_ping=False, autocommit=True)

    def close(self) -> None:
        self.engine.dispose()
        self.writer.dispose()

    # -- models --------------------------------------------------------------------------------------------------

    def add_model(self, row: ModelRow) -> ModelRow:
        """Register a version; the same bytes again are a no-op, different bytes under the same version a Conflict."""
        with self.engine.begin() as conn:
            existing = conn.execute(
                sa.select(models).where(models.c.name == row.name, models.c.version == row.version)
            ).first()
            if existing is not None:
                if existing.sha256 != row.sha256:
                    raise Conflict(
                        f"model {row.name} version {row.version} already exists with sha256 {existing.sha256[:12]}…;"
                        " push it under a new version",
                        code="version_exists",
                    )
                return ModelRow(**existing._mapping)
            conn.execute(models.insert().values(**row.as_dict()))
        return row

    def update_model_info(self, name: str, version: str, changes: dict[str, Any]) -> ModelRow:
        """Merge `changes` into a version's info (samples, shape hints); KeyError when the version is unknown."""
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(models).where(models.c.name == name, models.c.version == version)).first()
            if row is None:
                raise KeyError(f"model {name} version {version}")
            info = {**(row.info or {}), **changes}
            conn.execute(models.update().where(models.c.name == name, models.c.version == version).values(info=info))
        return ModelRow(**{**row._mapping, "info": info})

    def find_model_by_sha(self, name: str, sha256: str) -> ModelRow | None:

        with self.engine.connect() as conn:
            r = conn.execute(sa.select(models).where(models.c.name == name, models.c.sha256 == sha256)).first()
        return ModelRow(**r._mapping) if r else None

    def next_version(self, name: str) -> str:
        """The next integer version for a model pushed without --version."""
        with self.engine.connect() as conn:
            versions = conn.execute(sa.select(models.c.version).where(models.c.name == name)).scalars().all()
        numbers = [int(v) for v in versions if v.isdigit()]
        return str(max(numbers, default=0) + 1)

    def get_model(self, name: str, version: str | None = None) -> ModelRow | None:
        """A version, or the newest version when `version` is None."""
        query = sa.select(models).where(models.c.name == name)
        query = query.where(models.c.version == version) if version else query.order_by(models.c.created_at.desc())
        with self.engine.connect() as conn:
            r = conn.execute(query).first()
        return ModelRow(**r._mapping) if r else None

    def list_models(self) -> list[ModelRow]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(models).order_by(models.c.name, models.c.created_at)).all()
        return [ModelRow(**r._mapping) for r in rows]

    # -- variants ------------------------------------------------------------------------------------------------

    def put_variant(self, row: VariantRow) -> VariantRow:
        """Register (or replace) one variant of a model version."""
        with self.engine.begin() as conn:
            conn.execute(
                variants.delete().where(
                    variants.c.model_name == row.model_name,
                    variants.c.version == row.version,
                    variants.c.variant == row.variant,
                )
            )
            conn.execute(variants.insert().values(**row.as_dict()))
        return row

    def list_variants(self, name: str | None = None, version: str | None = None) -> list[VariantRow]:
        query = sa.select(variants).order_by(variants.c.model_name, variants.c.version, variants.c.variant)
        if name is not None:
            query = query.where(variants.c.model_name == name)
        if version is not None:
            query = query.where(variants.c.version == version)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [VariantRow(**r._mapping) for r in rows]

    # -- devices -------------------------------------------------------------------------------------------------

    def record_presence(
        self, device_id: str, online: bool, hardware: dict, agent_version: str, api_url: str | None
    ) -> None:
        """One upsert: replicas handling two presence messages of a new device at once both succeed."""
        now = time.time()
        values: dict[str, Any] = {"online": online, "last_seen": now}
        if online:
            values.update(hardware=hardware, agent_version=agent_version, api_url=api_url)
        row = {
            "id": device_id, "state": [], "generation": 0, "first_seen": now, "hardware": hardware,
            "agent_version": agent_version, "api_url": api_url, **values,
        }  # fmt: skip
        with self.engine.begin() as conn:
            conn.execute(upsert(self.engine, devices, ["id"], row, values))

    def record_state(self, device_id: str, models_state: list[dict], ts: float | None = None) -> bool:
        """Store a device's reported model states; False when the device is unknown or a newer state (by the
        message's `ts`) is already stored: two replicas may handle one device's messages out of order."""
        fresh = devices.c.id == device_id
        if ts is not None:
            fresh &= devices.c.state_ts.is_(None) | (devices.c.state_ts <= ts)
        with self.engine.begin() as conn:
            values = {"state": models_state, "state_ts": ts, "last_seen": time.time(), "online": True}
            result = conn.execute(devices.update().where(fresh).values(**values))
        return bool(result.rowcount)

    def mark_all_offline(self) -> None:
        """At start-up nothing is known to be online until its presence arrives."""
        with self.engine.begin() as conn:
            conn.execute(devices.update().values(online=False))

    def get_device(self, device_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            r = conn.execute(sa.select(devices).where(devices.c.id == device_id)).first()
        return dict(r._mapping) if r else None

    def list_devices(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(devices).order_by(devices.c.id)).all()
        return [dict(r._mapping) for r in rows]

    def known_devices(self, ids: list[str]) -> set[str]:
        with self.engine.connect() as conn:
            found = conn.execute(sa.select(devices.c.id).where(devices.c.id.in_(ids))).scalars().all()
        return set(found)

    # -- deployments ---------------------------------------------------------------------------------------------

    def set_deployment(
        self, device_id: str, model: ModelRow, backend: str | None, variant_names: list[str] | None = None
    ) -> int:
        """Make `model` the desired version on the device (with these variants of it); returns the device's new
        desired generation."""
        now = time.time()
        with self.engine.begin() as conn:
            key = (deployments.c.device_id == device_id) & (deployments.c.model_name == model.name)
            conn.execute(deployments.delete().where(key))
            vkey = (deployment_variants.c.device_id == device_id) & (deployment_variants.c.model_name == model.name)
            conn.execute(deployment_variants.delete().where(vkey))
            if variant_names:
                conn.execute(
                    deployment_variants.insert().values(
                        device_id=device_id, model_name=model.name, variants=list(variant_names)
                    )
                )
            conn.execute(
                deployments.insert().values(
                    device_id=device_id, model_name=model.name, version=model.version, backend=backend, created_at=now
                )
            )
            conn.execute(devices.update().where(devices.c.id == device_id).values(generation=devices.c.generation + 1))
            return conn.execute(sa.select(devices.c.generation).where(devices.c.id == device_id)).scalar_one()

    def bump_generation(self, device_id: str) -> int:
        """A new desired generation for the device (its desired state changed without a deployment)."""
        with self.engine.begin() as conn:
            conn.execute(devices.update().where(devices.c.id == device_id).values(generation=devices.c.generation + 1))
            return int(conn.execute(sa.select(devices.c.generation).where(devices.c.id == device_id)).scalar_one())

    def remove_deployment(self, device_id: str, model_name: str) -> int | None:
        """Take a model out of the device's desired state; the new generation, or None when it was not deployed."""
        with self.engine.begin() as conn:
            key = (deployments.c.device_id == device_id) & (deployments.c.model_name == model_name)
            if conn.execute(deployments.delete().where(key)).rowcount == 0:
                return None
            vkey = (deployment_variants.c.device_id == device_id) & (deployment_variants.c.model_name == model_name)
            conn.execute(deployment_variants.delete().where(vkey))
            conn.execute(devices.update().where(devices.c.id == device_id).values(generation=devices.c.generation + 1))
            return int(conn.execute(sa.select(devices.c.generation).where(devices.c.id == device_id)).scalar_one())

    def desired_models(self, device_id: str) -> list[tuple[ModelRow, str | None]]:
        """The (model version, backend override) pairs a device should serve."""
        query = (
            sa.select(models, deployments.c.backend)
            .join(
                deployments,
                (deployments.c.model_name == models.c.name) & (deployments.c.version == models.c.version),
            )
            .where(deployments.c.device_id == device_id)
            .order_by(models.c.name)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        result = []
        for r in rows:
            m = dict(r._mapping)
            backend = m.pop("backend")
            result.append((ModelRow(**m), backend))
        return result

    def deployment_attempts(self, device_id: str) -> dict[str, int]:
        """Each deployed model's attempt: when it was last deployed explicitly, in milliseconds (it only grows)."""
        query = sa.select(deployments.c.model_name, deployments.c.created_at).where(
            deployments.c.device_id == device_id
        )
        with self.engine.connect() as conn:
            return {name: int(created * 1000) for name, created in conn.execute(query).all()}

    def get_deployment(self, device_id: str, model_name: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            r = conn.execute(
                sa.select(deployments).where(
                    deployments.c.device_id == device_id, deployments.c.model_name == model_name
                )
            ).first()
        return dict(r._mapping) if r else None

    def deployed_variants(self, device_id: str) -> dict[str, list[VariantRow]]:
        """model name -> the built variants of its desired version that travel with the deployment."""
        with self.engine.connect() as conn:
            wanted = conn.execute(
                sa.select(deployments.c.model_name, deployments.c.version, deployment_variants.c.variants)
                .join(
                    deployment_variants,
                    (deployment_variants.c.device_id == deployments.c.device_id)
                    & (deployment_variants.c.model_name == deployments.c.model_name),
                )
                .where(deployments.c.device_id == device_id)
            ).all()
        result: dict[str, list[VariantRow]] = {}
        for name, version, names in wanted:
            rows = {v.variant: v for v in self.list_variants(name, version)}
            result[name] = [rows[n] for n in names or [] if n in rows and rows[n].ok]
        return result

    def deployed_devices(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(deployments.c.device_id).distinct()).scalars().all())
