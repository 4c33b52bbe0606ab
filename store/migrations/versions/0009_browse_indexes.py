"""Indexes for the admin's list of predictions.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03

``/admin/predictions`` (``store.browse``) pages through the predictions newest first, filtered
by requested strategy or by serving arm. With only ``(strategy, arm)`` and ``created_at`` to go
by, a filtered page sorted every matching row (about a second at a million rows on SQLite) or
read the whole table for a rare arm; ``(strategy, created_at, id)`` and ``(arm, created_at, id)``
make each page a short range scan. Only indexes: no row changes. Building them reads the table
once (seconds at a million rows), under the migration's lock.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = {
    "ix_predictions_strategy_created_at": ["strategy", "created_at", "id"],
    "ix_predictions_arm_created_at": ["arm", "created_at", "id"],
}


def upgrade() -> None:
    """Create the two indexes."""
    for name, columns in INDEXES.items():
        op.create_index(name, "predictions", columns, unique=False)


def downgrade() -> None:
    """Drop them (the list still works, slower on large tables)."""
    for name in INDEXES:
        op.drop_index(name, table_name="predictions")
