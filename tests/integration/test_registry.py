"""The controller's registry on real databases: SQLite always, PostgreSQL where one runs locally."""

from __future__ import annotations

import os
import time
import uuid

import pytest
import sqlalchemy as sa

from controller.db.database import Conflict, Database, ModelRow

POSTGRES_URL = os.environ.get("EDGE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def postgres_available() -> str | None:
    try:
        engine = sa.create_engine(POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://"))
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        engine.dispose()
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means "not here"
        return f"no PostgreSQL at {POSTGRES_URL}: {type(exc).__name__}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    if request.param == "sqlite":
        database = Database(f"sqlite:///{tmp_path / 'c.db'}")
        yield database
        database.close()
        return
    reason = postgres_available()
    if reason:
        pytest.skip(reason)
    schema = f"t_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://"))
    with admin.begin() as conn:
        conn.execute(sa.text(f"create schema {schema}"))
    database = Database(f"{POSTGRES_URL}?options=-csearch_path%3D{schema}")
    yield database
    database.close()
    with admin.begin() as conn:
        conn.execute(sa.text(f"drop schema {schema} cascade"))
    admin.dispose()


def row(name="m", version="1", sha="a" * 64) -> ModelRow:
    return ModelRow(name, version, sha, 10, "onnx", "m.onnx", {"opset": 17}, time.time())


def test_models_versions_and_conflicts(db):
    db.add_model(row())
    assert db.add_model(row()).sha256 == "a" * 64  # same bytes again: no-op
    with pytest.raises(Conflict, match="already exists"):
        db.add_model(row(sha="b" * 64))
    assert db.next_version("m") == "2"
    db.add_model(row(version="2", sha="b" * 64))
    assert db.get_model("m").version == "2"
    assert db.get_model("m", "1").info == {"opset": 17}
    assert db.find_model_by_sha("m", "b" * 64).version == "2"
    assert db.get_model("nope") is None


def test_devices_and_deployments(db):
    db.record_presence("d1", True, {"arch": "aarch64"}, "0.1.0", "http://x")
    assert db.record_state("d1", [{"name": "m", "state": "serving"}])
    assert not db.record_state("ghost", [])
    m1 = db.add_model(row())
    assert db.set_deployment("d1", m1, None) == 1
    m2 = db.add_model(row(version="2", sha="b" * 64))
    assert db.set_deployment("d1", m2, "openvino") == 2
    assert [(m.version, backend) for m, backend in db.desired_models("d1")] == [("2", "openvino")]
    db.mark_all_offline()
    device = db.get_device("d1")
    assert device["online"] is False and device["hardware"] == {"arch": "aarch64"}
    db.record_presence("d1", False, {}, "", None)  # offline presence keeps the last hardware
    assert db.get_device("d1")["hardware"] == {"arch": "aarch64"}
    assert db.known_devices(["d1", "d2"]) == {"d1"}
    assert db.deployed_devices() == ["d1"]
