"""Schema migrations: a new database is created at the newest revision and matches controller/db/schema.py; a database
made by `metadata.create_all` before migrations existed is upgraded keeping every row; replicas starting at the same
moment against an empty PostgreSQL database all come up, and the schema is created once."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from test_registry import POSTGRES_URL, postgres_available

from controller.db.database import Database, make_engine
from controller.db.migrate import head_revision
from controller.db.schema import metadata

REPO = Path(__file__).resolve().parents[2]


def current_revision(engine: sa.Engine) -> str | None:
    """The schema revision alembic_version records (None: a database migrations never touched)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@contextlib.contextmanager
def fresh_database():
    """A PostgreSQL database of its own (created empty, dropped after): advisory locks and alembic_version are per
    database, so each test gets one."""
    reason = postgres_available()
    if reason:
        pytest.skip(reason)
    name = f"t_{uuid.uuid4().hex[:10]}"
    url = POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://")
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"create database {name}"))
    try:
        yield POSTGRES_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"drop database {name} with (force)"))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'c.db'}"
        return
    with fresh_database() as url:
        yield url


def schema_differences(url: str) -> list:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            diffs = compare_metadata(MigrationContext.configure(conn), metadata)
    finally:
        engine.dispose()
    # SQLite reflects JSON and BigInteger-as-Integer loosely; types are compared on PostgreSQL
    return [d for d in diffs if not (isinstance(d, list) and d and d[0][0] == "modify_type" and "sqlite" in url)]


def test_a_new_database_is_at_head_and_matches_the_schema(empty_url):
    db = Database(empty_url)
    try:
        assert current_revision(db.engine) == head_revision()
    finally:
        db.close()
    assert schema_differences(empty_url) == []
    Database(empty_url).close()  # a second start finds it current and changes nothing


def test_a_database_made_before_migrations_is_upgraded_keeping_its_rows(empty_url):
    sys.path.insert(0, str(Path(__file__).parent))
    import legacy_schema

    legacy = make_engine(empty_url)
    legacy_schema.metadata.create_all(legacy)
    with legacy.begin() as conn:
        conn.execute(
            legacy_schema.models.insert().values(
                name="m",
                version="1",
                sha256="a" * 64,
                size=3,
                format="onnx",
                filename="m.onnx",
                info={},
                created_at=1.0,
            )  # fmt: skip
        )
        conn.execute(
            legacy_schema.devices.insert().values(
                id="d1", online=True, hardware={"arch": "x86_64"}, agent_version="0.1", state=[], generation=4,
                first_seen=1.0, last_seen=2.0,
            )
        )  # fmt: skip
        conn.execute(
            legacy_schema.telemetry.insert(),
            [{"device_id": "d1", "ts": 1000.0 + i, "received_at": 1000.0 + i, "payload": "{}"} for i in range(5)],
        )
    legacy.dispose()

    db = Database(empty_url)
    try:
        assert current_revision(db.engine) == head_revision()
        assert db.get_model("m", "1").sha256 == "a" * 64
        device = db.get_device("d1")
        assert device["generation"] == 4 and device["hardware"] == {"arch": "x86_64"} and device["state_ts"] is None
        assert db.count_telemetry() == 5
        # what the new revision added works on the old rows
        assert db.record_state("d1", [{"name": "m", "state": "serving"}], ts=50.0)
        assert not db.record_state("d1", [{"name": "m", "state": "loading"}], ts=40.0)  # older: not applied
        assert db.get_device("d1")["state"] == [{"name": "m", "state": "serving"}]
    finally:
        db.close()
    assert schema_differences(empty_url) == []


START = """
import sys, time
from alembic.migration import MigrationContext
from controller.db.database import Database
deadline = float(sys.argv[2])
while time.time() < deadline:
    time.sleep(0.001)
db = Database(sys.argv[1])
with db.engine.connect() as conn:
    print(MigrationContext.configure(conn).get_current_revision())
db.close()
"""


def test_processes_starting_together_on_an_empty_database_all_come_up():
    with fresh_database() as url:
        at = time.time() + 3.0  # every process imports first, then opens the database at the same instant
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", START, url, str(at)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            for _ in range(4)
        ]
        results = [p.communicate(timeout=120) for p in procs]
        for proc, (out, err) in zip(procs, results):
            assert proc.returncode == 0, err.decode()[-2000:]
            assert out.decode().strip() == head_revision()
        engine = make_engine(url)
        with engine.connect() as conn:
            assert conn.execute(sa.text("select count(*) from alembic_version")).scalar_one() == 1
        engine.dispose()
