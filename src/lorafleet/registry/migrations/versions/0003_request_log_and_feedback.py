"""request log and feedback

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-08 09:30:00

Adds `completions` (the request log: one row per completion served, with the response id the client
saw, the version that served it, tokens, latency and, unless the tenant turned it off, its text),
`feedback` (a score, label or correction of one logged completion) and `tenants.log_text` (keep the
text of the tenant's completions; existing tenants keep it, as new ones do by default).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # in place on SQLite too: recreating `tenants` would break the rows that refer to it (API keys, …)
    with op.batch_alter_table("tenants", schema=None, recreate="never") as batch_op:
        batch_op.add_column(sa.Column("log_text", sa.Boolean(), server_default=sa.true(), nullable=False))

    op.create_table(
        "completions",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("key_id", sa.String(length=40), nullable=True),
        sa.Column("model", sa.String(length=255), nullable=False),
        sa.Column("adapter_version_id", sa.String(length=40), nullable=True),
        sa.Column("prompt", sa.Text(), nullable=True),
        sa.Column("messages", sa.JSON(), nullable=True),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("finish_reason", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("completions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_completions_adapter_version_id"), ["adapter_version_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_completions_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_completions_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "feedback",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("completion_id", sa.String(length=64), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("label", sa.String(length=64), nullable=True),
        sa.Column("correction", sa.Text(), nullable=True),
        sa.Column("key_id", sa.String(length=40), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["completion_id"], ["completions.id"]),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_feedback_completion_id"), ["completion_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_feedback_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_feedback_tenant_id"), ["tenant_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_feedback_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_feedback_created_at"))
        batch_op.drop_index(batch_op.f("ix_feedback_completion_id"))

    op.drop_table("feedback")
    with op.batch_alter_table("completions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_completions_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_completions_created_at"))
        batch_op.drop_index(batch_op.f("ix_completions_adapter_version_id"))

    op.drop_table("completions")
    with op.batch_alter_table("tenants", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("log_text")
