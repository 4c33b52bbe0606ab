"""Predictions record whether the answer abstained ("not sure: this may not be a clothing
item") and the uncertainty score behind it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02

predictions gain ``abstained`` (not null, false for every existing row: none of them abstained)
and ``uncertainty`` (nullable: older rows, failed runs and models without a fitted combiner
have no score).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add both columns; existing rows keep every value they had and did not abstain."""
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(
            sa.Column("abstained", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch.add_column(sa.Column("uncertainty", sa.Double(), nullable=True))


def downgrade() -> None:
    """Drop both columns (answers then carry no record of abstaining)."""
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("uncertainty")
        batch.drop_column("abstained")
