"""The recent window monitoring reads: the newest served predictions with their verdicts.

One query down the ``created_at`` index with a LIMIT, so it costs the same at a million rows
as at a thousand; shadow runs and failed requests are not served answers and are left out.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from store.models import Feedback, Prediction


def recent_window(session: Session, limit: int) -> list[dict[str, Any]]:
    """The newest ``limit`` served predictions, newest first, as plain dicts."""
    query = (
        select(
            Prediction.arm,
            Prediction.created_at,
            Prediction.class_index,
            Prediction.confidence,
            Prediction.latency_ms,
            Prediction.members,
            Prediction.fallback,
            Prediction.degraded,
            Prediction.canvas,
            Feedback.true_class_index,
        )
        .outerjoin(Feedback, Feedback.prediction_id == Prediction.id)
        .where(
            Prediction.shadow_of.is_(None),
            Prediction.error.is_(None),
            Prediction.class_index.is_not(None),
        )
        .order_by(Prediction.created_at.desc())
        .limit(limit)
    )
    return [dict(row._mapping) for row in session.execute(query)]
