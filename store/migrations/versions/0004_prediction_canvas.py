"""Predictions keep the 28x28 image the model saw, so a result page can be shown from the store.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

predictions gain ``canvas``: the model's 28x28 uint8 input (784 bytes, row-major), nullable, so
every older row (and a failed or shadow run) simply has none; the upload itself is never kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the nullable canvas column; existing rows keep every value they had."""
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("canvas", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    """Drop the canvas column (the pages then show the result without the 28x28 view)."""
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("canvas")
