"""Experiments as data: ensembles, experiments, their events, and what predictions record.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02

predictions: strategy and arm widen to 64 characters (created names have up to 63) and gain the
routing columns, all nullable, so every first-release row is kept as it was.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _timestamp(name: str, nullable: bool = False) -> sa.Column:
    """A UTC timestamp column (store.models.UTCDateTime's DDL)."""
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    """Widen and extend predictions; create ensembles, experiments and experiment_events."""
    # SQLite: one table copy for all of it (foreign keys are off during the copy, see migrate.py).
    with op.batch_alter_table("predictions") as batch:
        batch.alter_column(
            "strategy", existing_type=sa.String(16), type_=sa.String(64), existing_nullable=False
        )
        batch.alter_column(
            "arm", existing_type=sa.String(16), type_=sa.String(64), existing_nullable=False
        )
        batch.add_column(sa.Column("experiment", sa.String(64), nullable=True))
        batch.add_column(sa.Column("members_used", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("shadow_of", sa.String(32), nullable=True))
        batch.add_column(sa.Column("route_reason", sa.String(32), nullable=True))
        batch.add_column(sa.Column("features", sa.JSON(), nullable=True))
        batch.create_foreign_key(
            "fk_predictions_shadow_of",
            "predictions",
            ["shadow_of"],
            ["id"],
            ondelete="CASCADE",
        )
        batch.create_index("ix_predictions_shadow_of", ["shadow_of"])
        batch.create_index(
            "ix_predictions_experiment_arm_created_at", ["experiment", "arm", "created_at"]
        )

    op.create_table(
        "ensembles",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), server_default="active", nullable=False),
        sa.Column("model_version", sa.String(64), nullable=True),
        sa.Column("created_by", sa.String(64), nullable=False),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "experiments",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("router", sa.String(32), nullable=False),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), server_default="running", nullable=False),
        sa.Column("control", sa.String(64), nullable=False),
        sa.Column("decision", sa.JSON(), nullable=True),
        sa.Column("report", sa.JSON(), nullable=True),
        sa.Column("rr_counter", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("revision", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("builtin", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        _timestamp("started_at"),
        _timestamp("ended_at", nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "experiment_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("experiment", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        _timestamp("at"),
        sa.Column("before", sa.JSON(), nullable=True),
        sa.Column("after", sa.JSON(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_experiment_events_experiment", "experiment_events", ["experiment"])


def downgrade() -> None:
    """Back to the first release (fails if a stored strategy or arm is over 16 characters)."""
    op.drop_index("ix_experiment_events_experiment", table_name="experiment_events")
    op.drop_table("experiment_events")
    op.drop_table("experiments")
    op.drop_table("ensembles")
    with op.batch_alter_table("predictions") as batch:
        batch.drop_index("ix_predictions_experiment_arm_created_at")
        batch.drop_index("ix_predictions_shadow_of")
        batch.drop_constraint("fk_predictions_shadow_of", type_="foreignkey")
        for column in ("features", "route_reason", "shadow_of", "members_used", "experiment"):
            batch.drop_column(column)
        batch.alter_column(
            "arm", existing_type=sa.String(64), type_=sa.String(16), existing_nullable=False
        )
        batch.alter_column(
            "strategy", existing_type=sa.String(64), type_=sa.String(16), existing_nullable=False
        )
