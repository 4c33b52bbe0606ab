"""Model versions activated at run time.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02

``model_activations`` keeps every activation of a model version (who, when, the version served
before, what was paused for it). Its newest row is the version every worker and instance
serves, so an activation through one worker reaches the others without a restart. A new table:
no existing row changes.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the table."""
    op.create_table(
        "model_activations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("previous", sa.String(64), nullable=True),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("paused", sa.JSON(none_as_null=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    """Drop it (workers then serve ``MODEL_VERSION`` or the newest version again)."""
    op.drop_table("model_activations")
