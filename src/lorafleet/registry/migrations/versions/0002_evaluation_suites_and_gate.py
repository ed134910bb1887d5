"""evaluation suites, gate policies, gated alias moves

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06 11:05:00

Adds `eval_suites` (a held-out file and its metric per adapter), `adapters.gate_policy` (the promotion
gate, None: not gated) and, on `alias_moves`, `forced` (promoted past a failed gate) and `report` (the
gate report of a gated move). Existing moves were never gated: `forced` false, `report` null.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "eval_suites",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("adapter_id", sa.String(length=40), nullable=False),
        sa.Column("dataset_id", sa.String(length=40), nullable=False),
        sa.Column("metric", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["adapter_id"], ["adapters.id"]),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"]),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("eval_suites", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_eval_suites_adapter_id"), ["adapter_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_eval_suites_dataset_id"), ["dataset_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_eval_suites_tenant_id"), ["tenant_id"], unique=False)

    with op.batch_alter_table("adapters", schema=None) as batch_op:
        batch_op.add_column(sa.Column("gate_policy", sa.JSON(), nullable=True))

    with op.batch_alter_table("alias_moves", schema=None) as batch_op:
        batch_op.add_column(sa.Column("forced", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.add_column(sa.Column("report", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("alias_moves", schema=None) as batch_op:
        batch_op.drop_column("report")
        batch_op.drop_column("forced")

    with op.batch_alter_table("adapters", schema=None) as batch_op:
        batch_op.drop_column("gate_policy")

    with op.batch_alter_table("eval_suites", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_eval_suites_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_eval_suites_dataset_id"))
        batch_op.drop_index(batch_op.f("ix_eval_suites_adapter_id"))

    op.drop_table("eval_suites")
