"""The controller's tables (SQLAlchemy Core), one schema for SQLite and PostgreSQL; controller/db/database.py queries
them."""

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
    # the `ts` of the state message stored: with replicas two state messages of one device may be handled at once,
    # and an older one must not overwrite a newer (migration 0002)
    sa.Column("state_ts", sa.Float),
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

# Quality-drift baselines (controller/db/quality.py): one row per (device, model, version), the summary NULL while it
# is being (re)built; `generation` counts the operator's resets, so every replica drops a baseline that was reset.
quality_baselines = sa.Table(
    "quality_baselines",
    metadata,
    sa.Column("device_id", sa.String(64), primary_key=True),
    sa.Column("model", sa.String(128), primary_key=True),
    sa.Column("version", sa.String(64), primary_key=True),
    sa.Column("generation", sa.Integer, nullable=False),
    sa.Column("rows", sa.BigInteger, nullable=False),
    sa.Column("summary", sa.Text),
    sa.Column("since", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

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

# Work that one controller replica must do at a time (publishing desired states, retention), and each replica's
# membership (`replica:<id>`): a row is held while `expires_at` (the database's clock, epoch seconds) is ahead; the
# holder renews it every few seconds, and another replica takes it once it has lapsed (controller/replicas/leases.py).
leases = sa.Table(
    "leases",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("owner", sa.String(128), nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
)

# Labels an operator set on a device (`edgectl label`), kept by the controller beside what the device reports (its own
# labels and its hardware); see protocol/labels.py (migration 0003).
device_labels = sa.Table(
    "device_labels",
    metadata,
    sa.Column("device_id", sa.String(64), primary_key=True),
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(64), nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

# Fleet rollouts (controller/rollouts/): the rollout with its spec and where it stands; its devices with their wave
# and what the rollout wants them to serve; its append-only events keyed by (rollout, seq), the seq also guarding
# each transition (a transition commits only from the seq it read, so two replicas never both make one); and the
# claims that keep one active rollout per (device, model).
rollouts = sa.Table(
    "rollouts",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(512), nullable=False, default=""),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("wave", sa.Integer, nullable=False, default=0),
    sa.Column("phase", sa.String(16), nullable=False, default="pending"),
    sa.Column("phase_until", sa.Float),
    sa.Column("extended", sa.Boolean, nullable=False, default=False),
    sa.Column("waves", sa.JSON, nullable=False),
    sa.Column("seq", sa.Integer, nullable=False, default=0),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

rollout_devices = sa.Table(
    "rollout_devices",
    metadata,
    sa.Column("rollout_id", sa.String(32), primary_key=True),
    sa.Column("device_id", sa.String(64), primary_key=True),
    sa.Column("hw_class", sa.String(256), nullable=False),
    sa.Column("wave", sa.Integer, nullable=False),
    sa.Column("previous", sa.String(64)),  # the version deployed before the rollout (None: none)
    sa.Column("state", sa.String(16), nullable=False),  # waiting, pushed, serving, failed, reverted
    sa.Column("target", sa.String(64)),  # the version the rollout wants deployed there ("" : none; None: untouched)
    sa.Column("applied", sa.Boolean, nullable=False, default=True),
    sa.Column("pushed_at", sa.Float),
    sa.Column("activated_at", sa.Float),
    sa.Column("detail", sa.String(512)),
)

rollout_events = sa.Table(
    "rollout_events",
    metadata,
    sa.Column("rollout_id", sa.String(32), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("wave", sa.Integer),
    sa.Column("reason", sa.String(512), nullable=False, default=""),
    sa.Column("data", sa.JSON, nullable=False),
)

rollout_claims = sa.Table(
    "rollout_claims",
    metadata,
    sa.Column("device_id", sa.String(64), primary_key=True),
    sa.Column("model", sa.String(128), primary_key=True),
    sa.Column("rollout_id", sa.String(32), nullable=False, index=True),
)
