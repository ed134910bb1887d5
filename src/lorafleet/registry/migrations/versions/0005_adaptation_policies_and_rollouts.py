"""adaptation policies and rollouts

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 16:10:00

Adds `adaptation_policies` (a policy per adapter alias, with the controller's last view of the alias's
monitor) and `rollouts` (each pass of the adaptation loop: its state, job, candidate version and how it
ended), so the controller's progress survives a restart.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "adaptation_policies",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("adapter_id", sa.String(length=40), nullable=False),
        sa.Column("alias", sa.String(length=64), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("status", sa.JSON(), nullable=True),
        sa.Column("status_at", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["adapter_id"], ["adapters.id"]),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("adapter_id", "alias"),
    )
    with op.batch_alter_table("adaptation_policies", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_adaptation_policies_adapter_id"), ["adapter_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_adaptation_policies_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "rollouts",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("adapter_id", sa.String(length=40), nullable=False),
        sa.Column("alias", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("trigger", sa.JSON(), nullable=False),
        sa.Column("from_version_id", sa.String(length=40), nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=True),
        sa.Column("candidate_version_id", sa.String(length=40), nullable=True),
        sa.Column("canary_started_at", sa.Float(), nullable=True),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["adapter_id"], ["adapters.id"]),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_rollouts_adapter_id"), ["adapter_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_rollouts_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_rollouts_tenant_id"), ["tenant_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rollouts_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_rollouts_created_at"))
        batch_op.drop_index(batch_op.f("ix_rollouts_adapter_id"))
    op.drop_table("rollouts")

    with op.batch_alter_table("adaptation_policies", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_adaptation_policies_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_adaptation_policies_adapter_id"))
    op.drop_table("adaptation_policies")
