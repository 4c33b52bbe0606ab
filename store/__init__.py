"""Persistence for predictions and feedback (SQLAlchemy 2), so views never write SQL themselves.

Feedback policy: one row per prediction (``feedback.prediction_id`` is unique) and the latest
answer wins: a second verdict for the same prediction overwrites the first, so a person who
clicked the wrong button can correct it and a prediction is never counted twice in the stats.
"""

from store.db import get_session, init_app, ping
from store.models import Base, Feedback, Prediction
from store.queries import (
    accuracy_points,
    add_prediction,
    get_prediction,
    recent_predictions,
    record_feedback,
    records_by,
    total_predictions,
)

__all__ = [
    "Base",
    "Feedback",
    "Prediction",
    "accuracy_points",
    "add_prediction",
    "get_prediction",
    "get_session",
    "init_app",
    "ping",
    "recent_predictions",
    "record_feedback",
    "records_by",
    "total_predictions",
]
