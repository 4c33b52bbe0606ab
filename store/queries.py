"""Every read and write the app makes, in portable SQLAlchemy (SQLite and Postgres alike)."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from store.models import Feedback, Prediction, utcnow

AB = "ab"


def add_prediction(session: Session, **fields: Any) -> Prediction:
    """Insert one prediction row in its own short transaction, so a worker holds no lock long."""
    row = Prediction(**fields)
    session.add(row)
    try:
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return row


def get_prediction(session: Session, prediction_id: str) -> Prediction | None:
    """One prediction with its feedback loaded, or None."""
    query = (
        select(Prediction)
        .where(Prediction.id == prediction_id)
        .options(selectinload(Prediction.feedback))
    )
    return session.scalars(query).one_or_none()


def record_feedback(session: Session, prediction: Prediction, true_class_index: int) -> Feedback:
    """Store the true class for a prediction; a later answer overwrites an earlier one."""
    correct = prediction.class_index == true_class_index
    for attempt in range(2):
        existing = session.scalars(
            select(Feedback).where(Feedback.prediction_id == prediction.id)
        ).one_or_none()
        if existing is None:
            row = Feedback(
                prediction_id=prediction.id, true_class_index=true_class_index, correct=correct
            )
            session.add(row)
        else:
            row = existing
            row.true_class_index = true_class_index
            row.correct = correct
            row.created_at = utcnow()
        try:
            session.commit()
            return row
        except IntegrityError:
            # Another worker inserted feedback for this prediction first: update theirs instead.
            session.rollback()
            if attempt:
                raise
    raise AssertionError("unreachable")


def _record(row: Any) -> dict[str, Any]:
    """One row in the shape ``experiments.stats.arm_summary`` reads."""
    return {
        "correct": row.correct,
        "confidence": row.confidence,
        "latency_ms": row.latency_ms,
        "fallback": row.has_fallback,
        "error": row.has_error,
    }


def records_by(session: Session, *, ab: bool) -> dict[str, list[dict[str, Any]]]:
    """A/B records keyed by the arm that served (ab=True), or direct ones keyed by strategy."""
    key = Prediction.arm if ab else Prediction.strategy
    condition = Prediction.strategy == AB if ab else Prediction.strategy != AB
    query = (
        select(
            key.label("key"),
            Feedback.correct,
            Prediction.confidence,
            Prediction.latency_ms,
            Prediction.fallback.is_not(None).label("has_fallback"),
            Prediction.error.is_not(None).label("has_error"),
        )
        .outerjoin(Feedback, Feedback.prediction_id == Prediction.id)
        .where(condition)
    )
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in session.execute(query):
        grouped[row.key].append(_record(row))
    return dict(grouped)


def total_predictions(session: Session) -> int:
    """Every recorded prediction request, failed ones included."""
    return int(session.scalar(select(func.count()).select_from(Prediction)) or 0)


def accuracy_points(session: Session) -> dict[str, list[tuple[datetime, bool]]]:
    """Labelled A/B outcomes per arm in time order: the raw material of the accuracy chart."""
    query = (
        select(Prediction.arm, Prediction.created_at, Feedback.correct)
        .join(Feedback, Feedback.prediction_id == Prediction.id)
        .where(Prediction.strategy == AB, Prediction.error.is_(None))
        .order_by(Prediction.created_at, Prediction.id)
    )
    points: dict[str, list[tuple[datetime, bool]]] = defaultdict(list)
    for arm, created_at, correct in session.execute(query):
        points[arm].append((created_at, bool(correct)))
    return dict(points)


def recent_predictions(session: Session, limit: int = 25) -> list[Prediction]:
    """The newest predictions with their feedback, for the admin table."""
    query = (
        select(Prediction)
        .options(selectinload(Prediction.feedback))
        .order_by(Prediction.created_at.desc(), Prediction.id)
        .limit(limit)
    )
    return list(session.scalars(query))
