"""Labels and rollouts: `device_labels` (operator labels), `rollouts`, `rollout_devices`, `rollout_events` (append-only,
keyed by (rollout, seq)) and `rollout_claims` (one active rollout per device and model)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "device_labels",
        sa.Column("device_id", sa.String(64), primary_key=True),
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(64), nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "rollouts",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(512), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("wave", sa.Integer, nullable=False),
        sa.Column("phase", sa.String(16), nullable=False),
        sa.Column("phase_until", sa.Float),
        sa.Column("extended", sa.Boolean, nullable=False),
        sa.Column("waves", sa.JSON, nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "rollout_devices",
        sa.Column("rollout_id", sa.String(32), primary_key=True),
        sa.Column("device_id", sa.String(64), primary_key=True),
        sa.Column("hw_class", sa.String(256), nullable=False),
        sa.Column("wave", sa.Integer, nullable=False),
        sa.Column("previous", sa.String(64)),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("target", sa.String(64)),
        sa.Column("applied", sa.Boolean, nullable=False),
        sa.Column("pushed_at", sa.Float),
        sa.Column("activated_at", sa.Float),
        sa.Column("detail", sa.String(512)),
    )
    op.create_table(
        "rollout_events",
        sa.Column("rollout_id", sa.String(32), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("wave", sa.Integer),
        sa.Column("reason", sa.String(512), nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
    )
    op.create_table(
        "rollout_claims",
        sa.Column("device_id", sa.String(64), primary_key=True),
        sa.Column("model", sa.String(128), primary_key=True),
        sa.Column("rollout_id", sa.String(32), nullable=False),
    )
    op.create_index("ix_rollout_claims_rollout_id", "rollout_claims", ["rollout_id"])


def downgrade() -> None:
    op.drop_index("ix_rollout_claims_rollout_id", "rollout_claims")
    for table in ("rollout_claims", "rollout_events", "rollout_devices", "rollouts", "device_labels"):
        op.drop_table(table)
