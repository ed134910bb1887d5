"""routing splits and adapter events

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-10 10:00:00

Adds `route_splits` (a tenant's canaries and A/B experiments: the reference split, the split as JSON,
who set it last), `adapter_events` (an adapter's audited history beyond alias moves: canaries and
experiments set and cleared, a controller's triggers, jobs, gates) and, on `completions`, `version`
(the served version as `name@number`, or the base model's name) and `route` (why the router chose it).
Rows logged before have neither: both null.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "route_splits",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("model", sa.String(length=160), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=160), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant_id", "kind", "model"),
        sa.UniqueConstraint("tenant_id", "kind", "name"),
    )

    op.create_table(
        "adapter_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("adapter_id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["adapter_id"], ["adapters.id"]),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("adapter_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_adapter_events_adapter_id"), ["adapter_id"], unique=False)

    # in place on SQLite too: recreating `completions` would break the feedback rows that refer to it
    with op.batch_alter_table("completions", schema=None, recreate="never") as batch_op:
        batch_op.add_column(sa.Column("version", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("route", sa.String(length=80), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("completions", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("route")
        batch_op.drop_column("version")

    with op.batch_alter_table("adapter_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_adapter_events_adapter_id"))

    op.drop_table("adapter_events")
    op.drop_table("route_splits")
