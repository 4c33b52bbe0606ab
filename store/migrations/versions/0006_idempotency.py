"""Idempotent predictions and the shared count of failed admin sign-ins.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

``idempotent_answers`` keeps the first answer to a predict request sent with an
``Idempotency-Key`` (per client scope and key), so a retry after a lost answer gets the same
answer and records nothing new, whichever worker or instance it reaches. ``auth_failures`` keeps
each failed admin authentication by client address, so the hourly limit holds across workers.
Both are new tables: no existing row changes.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the two tables and their indexes."""
    op.create_table(
        "idempotent_answers",
        sa.Column("scope", sa.String(64), nullable=False),
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("body", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("scope", "key"),
    )
    op.create_index(
        "ix_idempotent_answers_created_at", "idempotent_answers", ["created_at"], unique=False
    )
    op.create_table(
        "auth_failures",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("client", sa.String(64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_auth_failures_at", "auth_failures", ["at"], unique=False)
    op.create_index("ix_auth_failures_client_at", "auth_failures", ["client", "at"], unique=False)


def downgrade() -> None:
    """Drop both tables (retries are then answered anew, and the failure count starts over)."""
    op.drop_index("ix_auth_failures_client_at", table_name="auth_failures")
    op.drop_index("ix_auth_failures_at", table_name="auth_failures")
    op.drop_table("auth_failures")
    op.drop_index("ix_idempotent_answers_created_at", table_name="idempotent_answers")
    op.drop_table("idempotent_answers")
