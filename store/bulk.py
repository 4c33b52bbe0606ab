"""Bulk writes: many predictions and their verdicts in a few statements (seeding, imports).

The request path writes one prediction per transaction (``add_prediction``); a benchmark that
needs a million rows, or an import of history, goes through here instead: one multi-row INSERT
per table and chunk, the effective verdict and its history row written together as
``store.feedback`` would have written a first client verdict, and the chunk's roll-ups
(``store.rollups``) summed in Python and applied as one upsert per unit, arm and strategy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from store import rollups
from store.models import Feedback, FeedbackEvent, Prediction, new_id, utcnow


def add_predictions(
    session: Session,
    predictions: Sequence[Mapping[str, Any]],
    verdicts: Mapping[int, int] | None = None,
) -> list[str]:
    """Insert ``predictions`` (``Prediction`` columns; ``id`` and ``created_at`` (now) made
    when absent) and, for the
    row at index ``i`` in ``verdicts``, a counted first verdict of class ``verdicts[i]``, with
    their roll-ups; commits once and returns the ids."""
    now = utcnow()
    rows = [{"id": new_id(), "created_at": now, **row} for row in predictions]
    verdicts = verdicts or {}
    feedback, events = [], []
    for index, true_class in verdicts.items():
        row = rows[index]
        correct = row.get("class_index") == true_class
        at = row["created_at"]
        feedback.append(
            {
                "prediction_id": row["id"],
                "true_class_index": true_class,
                "correct": correct,
                "created_at": at,
            }
        )
        events.append(
            {
                "prediction_id": row["id"],
                "true_class_index": true_class,
                "correct": correct,
                "source": "client",
                "actor": None,
                "client_hash": row.get("client_hash"),
                "scope": row.get("experiment") or row["strategy"],
                "at": at,
                "counted": True,
                "note": None,
            }
        )
    try:
        session.execute(insert(Prediction), rows)
        if feedback:
            session.execute(insert(Feedback), feedback)
            session.execute(insert(FeedbackEvent), events)
        rollups.record_predictions(session, rows, verdicts)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return [row["id"] for row in rows]
