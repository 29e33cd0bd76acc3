"""Replicas: the `leases` table (one owner at a time for work done once) and `devices.state_ts` (a state message
older than the one stored is not applied: two replicas may handle one device's messages at once)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("state_ts", sa.Float))


def downgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("state_ts")
    op.drop_table("leases")
