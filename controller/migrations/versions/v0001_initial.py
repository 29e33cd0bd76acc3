"""The schema as `metadata.create_all` made it before migrations existed (a frozen copy, not controller/db/schema.py).

Each table is created only where it is missing: a database made by an older controller (create_all, no
alembic_version) passes through this revision keeping its rows, and gains the tables it lacked."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _tables() -> sa.MetaData:
    meta = sa.MetaData()
    big_id = sa.BigInteger().with_variant(sa.Integer, "sqlite")
    sa.Table(
        "models", meta,
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("version", sa.String(64), primary_key=True),
        sa.Column("sha256", sa.String(64), nullable=False, index=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("filename", sa.String(256), nullable=False),
        sa.Column("info", sa.JSON, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )  # fmt: skip
    sa.Table(
        "devices", meta,
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("online", sa.Boolean, nullable=False),
        sa.Column("hardware", sa.JSON, nullable=False),
        sa.Column("agent_version", sa.String(32), nullable=False),
        sa.Column("api_url", sa.String(256)),
        sa.Column("state", sa.JSON, nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("first_seen", sa.Float, nullable=False),
        sa.Column("last_seen", sa.Float, nullable=False),
    )  # fmt: skip
    sa.Table(
        "deployments", meta,
        sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.id"), primary_key=True),
        sa.Column("model_name", sa.String(128), primary_key=True),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("backend", sa.String(64)),
        sa.Column("created_at", sa.Float, nullable=False),
    )  # fmt: skip
    sa.Table(
        "variants", meta,
        sa.Column("model_name", sa.String(128), primary_key=True),
        sa.Column("version", sa.String(64), primary_key=True),
        sa.Column("variant", sa.String(64), primary_key=True),
        sa.Column("sha256", sa.String(64)),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("report", sa.JSON, nullable=False),
        sa.Column("passed", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )  # fmt: skip
    sa.Table(
        "deployment_variants", meta,
        sa.Column("device_id", sa.String(64), primary_key=True),
        sa.Column("model_name", sa.String(128), primary_key=True),
        sa.Column("variants", sa.JSON, nullable=False),
    )  # fmt: skip
    telemetry = sa.Table(
        "telemetry", meta,
        sa.Column("id", big_id, primary_key=True, autoincrement=True),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.UniqueConstraint("device_id", "ts", name="uq_telemetry_device_ts"),
    )  # fmt: skip
    sa.Index("ix_telemetry_ts", telemetry.c.ts)
    sa.Index("ix_telemetry_received_at", telemetry.c.received_at)
    sa.Table(
        "drift_baselines", meta,
        sa.Column("device_id", sa.String(64), primary_key=True),
        sa.Column("model", sa.String(128), primary_key=True),
        sa.Column("version", sa.String(64), primary_key=True),
        sa.Column("output", sa.String(128), primary_key=True),
        sa.Column("mean", sa.Float, nullable=False),
        sa.Column("std", sa.Float, nullable=False),
        sa.Column("count", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )  # fmt: skip
    sa.Table(
        "telemetry_quarantine", meta,
        sa.Column("id", big_id, primary_key=True, autoincrement=True),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("received_at", sa.Float, nullable=False, index=True),
        sa.Column("reason", sa.String(512), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
    )  # fmt: skip
    return meta


def upgrade() -> None:
    _tables().create_all(op.get_bind(), checkfirst=True)


def downgrade() -> None:
    _tables().drop_all(op.get_bind())
