"""The recorder: one short transaction per prediction, shadow run or verdict."""

from __future__ import annotations

import logging
from typing import Any

import store
from store.db import Store

log = logging.getLogger(__name__)


class Recorder:
    """Writes predictions and feedback through the store, never holding a lock for long."""

    def __init__(self, db: Store) -> None:
        self.db = db

    def prediction(self, **fields: Any) -> None:
        """Store one served (or failed) prediction in the caller's thread session."""
        store.add_prediction(self.db.sessions(), **fields)

    def shadow(self, **fields: Any) -> None:
        """Store a shadow run in a session of its own: it runs after the response was sent."""
        with self.db.sessions.session_factory() as session:
            store.add_prediction(session, **fields)

    def get(self, prediction_id: str) -> store.Prediction | None:
        """A stored prediction with its feedback, or None."""
        return store.get_prediction(self.db.sessions(), prediction_id)

    def feedback(self, prediction: store.Prediction, true_class_index: int) -> bool:
        """Store the true class; True when the prediction was right."""
        return store.record_feedback(self.db.sessions(), prediction, true_class_index).correct
