"""Fixture: controller/db/schema.py as it was before migrations existed (commit 9b7c8fe), frozen: databases created by
`metadata.create_all` with it must be upgraded by the migrations without losing a row (test_migrations.py)."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

models = sa.Table(
    "models",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("version", sa.String(64), primary_key=True),
    sa.Column("sha256", sa.String(64), nullable=False, index=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("format", sa.String(16), nullable=False),
    sa.Column("filename", sa.String(256), nullable=False, default=""),
    sa.Column("info", sa.JSON, nullable=False, default=dict),
    sa.Column("created_at", sa.Float, nullable=False),
)

devices = sa.Table(
    "devices",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("online", sa.Boolean, nullable=False, default=False),
    sa.Column("hardware", sa.JSON, nullable=False, default=dict),
    sa.Column("agent_version", sa.String(32), nullable=False, default=""),
    sa.Column("api_url", sa.String(256)),
    sa.Column("state", sa.JSON, nullable=False, default=list),
    sa.Column("generation", sa.Integer, nullable=False, default=0),
    sa.Column("first_seen", sa.Float, nullable=False),
    sa.Column("last_seen", sa.Float, nullable=False),
)

deployments = sa.Table(
    "deployments",
    metadata,
    sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.id"), primary_key=True),
    sa.Column("model_name", sa.String(128), primary_key=True),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("backend", sa.String(64)),
    sa.Column("created_at", sa.Float, nullable=False),
)

# Optimized variants of a registered model version (built by converters on the controller), each content-addressed
# in the artifact store, with its conversion report; `passed` says it met the accuracy thresholds.
variants = sa.Table(
    "variants",
    metadata,
    sa.Column("model_name", sa.String(128), primary_key=True),
    sa.Column("version", sa.String(64), primary_key=True),
    sa.Column("variant", sa.String(64), primary_key=True),
    sa.Column("sha256", sa.String(64)),  # None when the variant could not be built
    sa.Column("size", sa.BigInteger, nullable=False, default=0),
    sa.Column("format", sa.String(16), nullable=False, default="onnx"),
    sa.Column("report", sa.JSON, nullable=False, default=dict),
    sa.Column("passed", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

# Which variants travel with a deployment (a JSON list of variant names; a table of its own so databases made before
# variants existed need no migration).
deployment_variants = sa.Table(
    "deployment_variants",
    metadata,
    sa.Column("device_id", sa.String(64), primary_key=True),
    sa.Column("model_name", sa.String(128), primary_key=True),
    sa.Column("variants", sa.JSON, nullable=False, default=list),
)

# One row per telemetry message: the message's JSON as received; (device_id, ts) is unique, so a sample replayed
# twice (queued on the device, then also resent by the MQTT client) is stored once.
telemetry = sa.Table(
    "telemetry",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("device_id", sa.String(64), nullable=False),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("received_at", sa.Float, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.UniqueConstraint("device_id", "ts", name="uq_telemetry_device_ts"),
)
sa.Index("ix_telemetry_ts", telemetry.c.ts)

# Output statistics a model version showed first on a device: what drift is measured against.
drift_baselines = sa.Table(
    "drift_baselines",
    metadata,
    sa.Column("device_id", sa.String(64), primary_key=True),
    sa.Column("model", sa.String(128), primary_key=True),
    sa.Column("version", sa.String(64), primary_key=True),
    sa.Column("output", sa.String(128), primary_key=True),
    sa.Column("mean", sa.Float, nullable=False),
    sa.Column("std", sa.Float, nullable=False),
    sa.Column("count", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)
sa.Index("ix_telemetry_received_at", telemetry.c.received_at)

# Telemetry the database refused although it parsed (one bad row must not cost the rest of its batch): kept for the
# operator to read, bounded (payload cut to QUARANTINE_PAYLOAD_CHARS) and pruned with the telemetry.
telemetry_quarantine = sa.Table(
    "telemetry_quarantine",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("device_id", sa.String(64), nullable=False),
    sa.Column("received_at", sa.Float, nullable=False, index=True),
    sa.Column("reason", sa.String(512), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
)
