"""Results a client cannot forge: secret assignment keys, and every verdict kept with its time.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02

experiments gain ``assignment_key``, the secret of their keyed (HMAC) sticky assignment; every
existing row, the built-in ``ab`` included, gets a fresh random key here, so the clients of
existing experiments are reassigned once (the old public sha256 namespaces let anyone choose an
arm by choosing ids). ``feedback_events`` keeps every verdict as submitted; ``feedback`` stays
the effective verdict statistics read, and each existing feedback row is copied into the
history as the counted client verdict it was.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Bytes of an assignment key (``experiments.assignment.KEY_BYTES``; not imported: a migration
#: must not change when the code does).
KEY_BYTES = 32


def _give_every_experiment_a_key() -> None:
    """One fresh random key per existing experiment, drawn here (never a shared default)."""
    connection = op.get_bind()
    experiments = sa.table(
        "experiments", sa.column("name", sa.String), sa.column("assignment_key", sa.LargeBinary)
    )
    names = connection.execute(sa.select(experiments.c.name)).scalars().all()
    for name in names:
        connection.execute(
            experiments.update()
            .where(experiments.c.name == name)
            .values(assignment_key=secrets.token_bytes(KEY_BYTES))
        )


def _copy_feedback_into_history() -> None:
    """Each existing verdict becomes the counted client verdict of its history."""
    feedback = sa.table(
        "feedback",
        sa.column("id", sa.Integer),
        sa.column("prediction_id", sa.String),
        sa.column("true_class_index", sa.Integer),
        sa.column("correct", sa.Boolean),
        sa.column("created_at", sa.DateTime),
    )
    predictions = sa.table(
        "predictions",
        sa.column("id", sa.String),
        sa.column("client_hash", sa.String),
        sa.column("experiment", sa.String),
        sa.column("strategy", sa.String),
    )
    events = sa.table(
        "feedback_events",
        *(
            sa.column(name)
            for name in (
                "prediction_id",
                "true_class_index",
                "correct",
                "source",
                "actor",
                "client_hash",
                "scope",
                "at",
                "counted",
                "note",
            )
        ),
    )
    rows = (
        sa.select(
            feedback.c.prediction_id,
            feedback.c.true_class_index,
            feedback.c.correct,
            sa.literal("client", sa.String),
            sa.null(),
            predictions.c.client_hash,
            sa.func.coalesce(predictions.c.experiment, predictions.c.strategy),
            feedback.c.created_at,
            sa.literal(True, sa.Boolean),
            sa.literal("recorded before verdict history existed", sa.Text),
        )
        .join(predictions, predictions.c.id == feedback.c.prediction_id)
        .order_by(feedback.c.id)
    )
    op.execute(events.insert().from_select(list(events.c.keys()), rows))


def upgrade() -> None:
    """Add and fill experiments.assignment_key; create and fill feedback_events."""
    with op.batch_alter_table("experiments") as batch:
        batch.add_column(sa.Column("assignment_key", sa.LargeBinary(32), nullable=True))
    _give_every_experiment_a_key()
    with op.batch_alter_table("experiments") as batch:
        batch.alter_column(
            "assignment_key",
            existing_type=sa.LargeBinary(32),
            existing_nullable=True,
            nullable=False,
        )

    op.create_table(
        "feedback_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("prediction_id", sa.String(32), nullable=False),
        sa.Column("true_class_index", sa.Integer(), nullable=False),
        sa.Column("correct", sa.Boolean(), nullable=False),
        sa.Column("source", sa.String(8), nullable=False),
        sa.Column("actor", sa.String(64), nullable=True),
        sa.Column("client_hash", sa.String(64), nullable=True),
        sa.Column("scope", sa.String(64), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("counted", sa.Boolean(), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["prediction_id"],
            ["predictions.id"],
            name="fk_feedback_events_prediction_id",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_feedback_events_prediction_id", "feedback_events", ["prediction_id"])
    op.create_index(
        "ix_feedback_events_scope_client_hash", "feedback_events", ["scope", "client_hash"]
    )
    _copy_feedback_into_history()


def downgrade() -> None:
    """Back to 0002: the history and the keys are dropped (effective verdicts stay)."""
    op.drop_index("ix_feedback_events_scope_client_hash", table_name="feedback_events")
    op.drop_index("ix_feedback_events_prediction_id", table_name="feedback_events")
    op.drop_table("feedback_events")
    with op.batch_alter_table("experiments") as batch:
        batch.drop_column("assignment_key")
