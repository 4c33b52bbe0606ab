"""The two tables: one row per prediction request (failed ones too) and its feedback."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Index, String, Text, TypeDecorator
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    """Aware UTC now: every timestamp in the database is UTC."""
    return datetime.now(UTC)


def new_id() -> str:
    """A random uuid4 hex: unguessable, so a prediction id can be handed to any client."""
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator[datetime]):
    """Store UTC and read back aware UTC: SQLite keeps no time zone, so both backends agree."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base holding the metadata that ``create_all`` builds."""


class Prediction(Base):
    """One prediction request: what was asked, which ensemble served, what it answered."""

    __tablename__ = "predictions"
    __table_args__ = (Index("ix_predictions_strategy_arm", "strategy", "arm"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    #: The strategy the client asked for: bagging, boosting, stacking or ab.
    strategy: Mapped[str] = mapped_column(String(16))
    #: The ensemble that served (for ab: the assigned arm; otherwise equal to ``strategy``).
    arm: Mapped[str] = mapped_column(String(16))
    label: Mapped[str | None] = mapped_column(String(64))
    class_index: Mapped[int | None]
    confidence: Mapped[float | None]
    #: ``{class name: probability}`` in class order.
    probabilities: Mapped[dict[str, float] | None] = mapped_column(JSON(none_as_null=True))
    members: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    fallback: Mapped[dict[str, str] | None] = mapped_column(JSON(none_as_null=True))
    degraded: Mapped[list[str]] = mapped_column(JSON, default=list)
    latency_ms: Mapped[float]
    model_version: Mapped[str] = mapped_column(String(64))
    client_hash: Mapped[str | None] = mapped_column(String(64))
    image_sha256: Mapped[str] = mapped_column(String(64))
    #: Set when the ensemble failed (e.g. every member failed); the answer columns are then NULL.
    error: Mapped[str | None] = mapped_column(Text)

    feedback: Mapped[Feedback | None] = relationship(
        back_populates="prediction", uselist=False, lazy="raise"
    )


class Feedback(Base):
    """The true class of a prediction's image; unique per prediction, the latest answer wins."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(primary_key=True)
    prediction_id: Mapped[str] = mapped_column(
        ForeignKey("predictions.id", ondelete="CASCADE"), unique=True
    )
    true_class_index: Mapped[int]
    correct: Mapped[bool]
    #: When the (latest) answer was given.
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    prediction: Mapped[Prediction] = relationship(back_populates="feedback", lazy="raise")
