"""The recorder: one short transaction per prediction, shadow run or verdict."""

from __future__ import annotations

import logging
from typing import Any

import store
from store.db import Store
from store.queries import record_prediction, record_predictions

log = logging.getLogger(__name__)


class Recorder:
    """Writes predictions and feedback through the store, never holding a lock for long."""

    def __init__(self, db: Store, client_label_cap: int | None = None) -> None:
        self.db = db
        #: Counted verdicts one client may contribute per experiment (None: no cap).
        self.client_label_cap = client_label_cap

    def prediction(self, **fields: Any) -> None:
        """Store one served (or failed) prediction in the caller's thread session, committed
        before the answer leaves (``record_prediction``: the request path's lean insert)."""
        record_prediction(self.db.sessions(), **fields)

    def predictions(self, rows: list[dict[str, Any]]) -> None:
        """Store a batch's predictions in one transaction, committed before the answer leaves:
        one commit instead of one per image, and never part of a batch."""
        record_predictions(self.db.sessions(), rows)

    def shadow(self, **fields: Any) -> None:
        """Store a shadow run in a session of its own: it runs after the response was sent."""
        with self.db.sessions.session_factory() as session:
            record_prediction(session, **fields)

    def get(self, prediction_id: str) -> store.Prediction | None:
        """A stored prediction with its feedback, or None."""
        return store.get_prediction(self.db.sessions(), prediction_id)

    def feedback(self, prediction: store.Prediction, true_class_index: int) -> store.Verdict:
        """Keep a client's verdict; it counts if it is the first and its client is under the cap."""
        return store.record_feedback(
            self.db.sessions(), prediction, true_class_index, cap=self.client_label_cap
        )

    def correction(
        self, prediction: store.Prediction, true_class_index: int, actor: str, note: str | None
    ) -> store.Verdict:
        """Replace the effective verdict with an admin's, kept with who and when."""
        return store.correct_feedback(
            self.db.sessions(), prediction, true_class_index, actor=actor, note=note
        )
