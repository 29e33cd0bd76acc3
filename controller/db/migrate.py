"""Brings a controller database to the current schema with Alembic, once, however many replicas start together.

On PostgreSQL the upgrade runs under a session advisory lock: replicas started at the same moment against an empty
database queue on it, the first creates the schema and the others find it current. A database created before
migrations existed (by `metadata.create_all`, no `alembic_version` table) is upgraded in place: revision 0001 only
creates the tables it lacks, so its rows stay. SQLite is one process: no lock."""

from __future__ import annotations

import logging
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

from protocol.errors import EdgeError

log = logging.getLogger(__name__)

# pg_advisory_lock key: any constant the other users of the database do not pick ("edgefleet" in ASCII, 8 bytes)
ADVISORY_KEY = int.from_bytes(b"edgeflt1", "big") & 0x7FFF_FFFF_FFFF_FFFF
SCRIPTS = Path(__file__).resolve().parents[1] / "migrations"


class SchemaError(EdgeError, RuntimeError):
    """The database cannot be brought to this controller's schema."""

    code = "schema_error"


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(SCRIPTS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def upgrade(engine: Engine) -> str:
    """Upgrade the database to the newest revision (a no-op when it is there); the revision it is at afterwards."""
    head = head_revision()
    try:
        with engine.connect() as conn:
            locked = conn.dialect.name == "postgresql"
            if locked:
                conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": ADVISORY_KEY})
                conn.commit()
            try:
                before = MigrationContext.configure(conn).get_current_revision()
                if before != head:
                    log.info("database schema %s -> %s", before or "(none)", head)
                    command.upgrade(alembic_config(conn), "head")
                    conn.commit()
            finally:
                if locked:
                    conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_KEY})
                    conn.commit()
    except sa.exc.DBAPIError:
        raise  # the database's own answer (unreachable, refused): the daemon names --db with it
    except sa.exc.SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise SchemaError(f"cannot bring the database to schema {head}: {reason}") from None
    return head
