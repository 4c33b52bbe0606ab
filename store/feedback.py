"""Verdicts on predictions: every submission kept with its time, one effective verdict each.

The policy that keeps a client from forging results (issue 9's security review):

- ``feedback`` holds the *effective* verdict of a prediction, the one statistics, bandit
  rewards and guardrails read (unique per prediction); ``feedback_events`` keeps every
  submission with its time, whether it counted, and why.
- The first client verdict counts. Later client verdicts are kept in the history but change
  nothing, so a verdict flipped 1 → 0 → 1 leaves the first one effective and three rows behind.
- An admin correction replaces the effective verdict and is recorded with who and when.
- What one client contributes to an experiment's statistics is capped: at most ``cap`` counted
  client verdicts per client (the prediction's ``client_hash``: the client id the API form or
  the signed browser cookie carried, never the network address, which many users share) per
  scope (the prediction's experiment, else its strategy). Beyond it a verdict is kept with
  ``counted = false`` and creates no effective verdict. A prediction made without a client id
  is its own unit: nothing ties it to the caller's other predictions, so no cap is possible
  (the statistics count such a request as one unit too; see ``store.units``).
- At most ``max_submissions`` client submissions are kept per prediction; the next raises
  ``FeedbackLimitReached`` (HTTP 429), so one prediction id cannot grow the history without end.

Each function commits (or rolls back) before it returns; a verdict that changes the effective
one moves the roll-ups (``store.rollups.record_verdict``) in the same transaction. On SQLite
the history row is written first, so the database's write lock is held while the counts are
read and the cap is exact; on Postgres an advisory lock per (scope, client) serialises the
counting.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from store import rollups
from store.errors import StoreError
from store.models import Feedback, FeedbackEvent, Prediction, utcnow
from store.queries import _count_if

log = logging.getLogger(__name__)

#: Client submissions kept per prediction before further ones are refused.
MAX_SUBMISSIONS = 20
#: First key of the Postgres advisory locks on a (scope, client) pair.
_PG_CLIENT_LOCK_SPACE = 0x43484643


class FeedbackLimitReached(StoreError):
    """A prediction already holds ``limit`` client verdicts; no more are kept."""

    def __init__(self, prediction_id: str, limit: int) -> None:
        super().__init__(
            f"prediction {prediction_id} already has {limit} verdicts, the most kept for one "
            "prediction; its first verdict stands (an admin can correct it)"
        )
        self.prediction_id = prediction_id
        self.limit = limit


@dataclass(frozen=True)
class Verdict:
    """What became of one submitted verdict."""

    prediction_id: str
    true_class_index: int
    #: Whether the prediction's answer was the submitted class.
    correct: bool
    #: Whether the submission set the effective verdict (the first, or an admin correction).
    counted: bool
    #: ``first``, ``later`` (an effective verdict existed), ``capped`` or ``corrected``.
    outcome: str
    #: The effective verdict's correctness afterwards (None: the prediction has none).
    effective_correct: bool | None
    at: datetime


def scope_of(prediction: Prediction) -> str:
    """The statistics a verdict feeds: the experiment that routed it, else the strategy asked
    for (a first-release ``ab`` row has ``strategy = 'ab'`` and no experiment)."""
    return prediction.experiment or prediction.strategy


def _lock_client(session: Session, scope: str, client_hash: str) -> None:
    """Postgres: serialise the cap check of one client in one scope (SQLite: the write lock)."""
    if session.get_bind().dialect.name != "postgresql":
        return
    key = zlib.crc32(f"{scope}\0{client_hash}".encode())
    session.execute(
        text("SELECT pg_advisory_xact_lock(CAST(:space AS INTEGER), CAST(:key AS INTEGER))"),
        {"space": _PG_CLIENT_LOCK_SPACE, "key": key - (1 << 32) if key >= 1 << 31 else key},
    )


def _effective(session: Session, prediction_id: str) -> Feedback | None:
    return session.scalars(
        select(Feedback)
        .where(Feedback.prediction_id == prediction_id)
        .execution_options(populate_existing=True)
    ).one_or_none()


def _client_submissions(session: Session, prediction_id: str) -> int:
    query = select(func.count()).where(
        FeedbackEvent.prediction_id == prediction_id, FeedbackEvent.source == "client"
    )
    return int(session.scalar(query) or 0)


def counted_by_client(session: Session, scope: str, client_hash: str) -> int:
    """How many client verdicts of one client counted in one scope (what the cap limits)."""
    query = select(func.count()).where(
        FeedbackEvent.scope == scope,
        FeedbackEvent.client_hash == client_hash,
        FeedbackEvent.source == "client",
        FeedbackEvent.counted.is_(True),
    )
    return int(session.scalar(query) or 0)


def record_feedback(
    session: Session,
    prediction: Prediction,
    true_class_index: int,
    *,
    cap: int | None = None,
    max_submissions: int = MAX_SUBMISSIONS,
) -> Verdict:
    """Keep a client's verdict; it becomes the effective one only if it is the first and the
    prediction's client is under ``cap`` counted verdicts in its scope (None: no cap)."""
    correct = prediction.class_index == true_class_index
    prediction_id, client_hash, scope = prediction.id, prediction.client_hash, scope_of(prediction)

    def write(at: datetime) -> Verdict:
        event = _event(prediction, true_class_index, correct, "client", at, counted=False)
        session.add(event)
        session.flush()  # write first: on SQLite the counts below are read under the lock
        if _client_submissions(session, prediction_id) > max_submissions:
            raise FeedbackLimitReached(prediction_id, max_submissions)
        existing = _effective(session, prediction_id)
        if existing is not None:
            outcome = "later"
            event.note = "a verdict was already recorded; the first one stands"
        elif (
            cap is not None
            and client_hash is not None
            and _over_cap(session, scope, client_hash, cap)
        ):
            outcome = "capped"
            event.note = f"the client already has {cap} counted verdicts in {scope}"
        else:
            outcome = "first"
            event.counted = True
            existing = _set_effective(session, None, prediction_id, true_class_index, correct, at)
            rollups.record_verdict(session, prediction, None, true_class_index)
        effective = None if existing is None else bool(existing.correct)
        return Verdict(
            prediction_id, true_class_index, correct, outcome == "first", outcome, effective, at
        )

    verdict = _commit_retrying(session, write)
    if not verdict.counted:
        log.info("verdict on %s kept, not counted (%s)", prediction_id, verdict.outcome)
    return verdict


def _event(
    prediction: Prediction,
    true_class_index: int,
    correct: bool,
    source: str,
    at: datetime,
    *,
    counted: bool,
    actor: str | None = None,
    note: str | None = None,
) -> FeedbackEvent:
    """One history row for a verdict on ``prediction``."""
    return FeedbackEvent(
        prediction_id=prediction.id,
        true_class_index=true_class_index,
        correct=correct,
        source=source,
        actor=actor,
        client_hash=prediction.client_hash,
        scope=scope_of(prediction),
        at=at,
        counted=counted,
        note=note,
    )


def _set_effective(
    session: Session,
    existing: Feedback | None,
    prediction_id: str,
    true_class_index: int,
    correct: bool,
    at: datetime,
) -> Feedback:
    """Insert the effective verdict, or overwrite ``existing``; flushed so a race shows here."""
    if existing is None:
        existing = Feedback(prediction_id=prediction_id)
        session.add(existing)
    existing.true_class_index = true_class_index
    existing.correct = correct
    existing.created_at = at
    session.flush()
    return existing


def _commit_retrying(session: Session, write: Callable[[datetime], Verdict]) -> Verdict:
    """Run ``write`` and commit; once more if another worker's first verdict won the insert
    of the effective one (ours is then a later verdict). Rolls back on any failure."""
    for attempt in range(2):
        try:
            verdict = write(utcnow())
            session.commit()
            return verdict
        except IntegrityError:
            session.rollback()
            if attempt:
                raise
        except BaseException:
            session.rollback()
            raise
    raise AssertionError("unreachable")


def _over_cap(session: Session, scope: str, client_hash: str, cap: int) -> bool:
    """Whether the client has used its ``cap`` counted verdicts in ``scope`` already."""
    _lock_client(session, scope, client_hash)
    return counted_by_client(session, scope, client_hash) >= cap


def correct_feedback(
    session: Session,
    prediction: Prediction,
    true_class_index: int,
    *,
    actor: str,
    note: str | None = None,
) -> Verdict:
    """An admin's correction: it replaces the effective verdict and is kept with who and when."""
    correct = prediction.class_index == true_class_index

    def write(at: datetime) -> Verdict:
        session.add(
            _event(
                prediction,
                true_class_index,
                correct,
                "admin",
                at,
                counted=True,
                actor=actor[:64],
                note=note,
            )
        )
        session.flush()
        existing = _effective(session, prediction.id)
        before = None if existing is None else existing.true_class_index
        _set_effective(session, existing, prediction.id, true_class_index, correct, at)
        rollups.record_verdict(session, prediction, before, true_class_index)
        return Verdict(prediction.id, true_class_index, correct, True, "corrected", correct, at)

    verdict = _commit_retrying(session, write)
    log.info("verdict on %s corrected by %s: class %d", prediction.id, actor, true_class_index)
    return verdict


def feedback_history(session: Session, prediction_id: str) -> list[FeedbackEvent]:
    """Every verdict submitted on one prediction, in the order they were written (the id, not
    the clock: two workers' clocks and a verdict waiting for the lock can disagree)."""
    query = (
        select(FeedbackEvent)
        .where(FeedbackEvent.prediction_id == prediction_id)
        .order_by(FeedbackEvent.id)
    )
    return list(session.scalars(query))


def feedback_corrections(session: Session, limit: int = 100) -> list[dict[str, Any]]:
    """The newest admin corrections with their predictions, for the console."""
    query = (
        select(FeedbackEvent, Prediction)
        .join(Prediction, Prediction.id == FeedbackEvent.prediction_id)
        .where(FeedbackEvent.source == "admin")
        .order_by(FeedbackEvent.id.desc())
        .limit(limit)
    )
    return [
        {"event": event, "prediction": prediction} for event, prediction in session.execute(query)
    ]


def feedback_conflicts(session: Session, limit: int = 100) -> list[dict[str, Any]]:
    """Predictions whose verdicts disagree (more than one true class submitted), newest first,
    each with its whole history and its effective verdict, for the console."""
    disputed = (
        select(
            FeedbackEvent.prediction_id.label("prediction_id"),
            func.max(FeedbackEvent.id).label("last_id"),
        )
        .group_by(FeedbackEvent.prediction_id)
        .having(func.count(func.distinct(FeedbackEvent.true_class_index)) > 1)
        .order_by(func.max(FeedbackEvent.id).desc())
        .limit(limit)
        .subquery()
    )
    ids = [row.prediction_id for row in session.execute(select(disputed.c.prediction_id))]
    if not ids:
        return []
    predictions = {
        row.id: row for row in session.scalars(select(Prediction).where(Prediction.id.in_(ids)))
    }
    effective = {
        row.prediction_id: row
        for row in session.scalars(select(Feedback).where(Feedback.prediction_id.in_(ids)))
    }
    events: dict[str, list[FeedbackEvent]] = {pid: [] for pid in ids}
    history = (
        select(FeedbackEvent).where(FeedbackEvent.prediction_id.in_(ids)).order_by(FeedbackEvent.id)
    )
    for event in session.scalars(history):
        events[event.prediction_id].append(event)
    order = {pid: index for index, pid in enumerate(ids)}
    return [
        {"prediction": predictions[pid], "effective": effective.get(pid), "events": events[pid]}
        for pid in sorted(predictions, key=order.__getitem__)
    ]


def feedback_counts(session: Session) -> dict[str, int]:
    """Client verdicts counted and kept uncounted, and admin corrections: the console's tally."""
    client = FeedbackEvent.source == "client"
    query = select(
        _count_if(client & FeedbackEvent.counted.is_(True)).label("counted"),
        _count_if(client & FeedbackEvent.counted.is_(False)).label("uncounted"),
        _count_if(FeedbackEvent.source == "admin").label("corrections"),
    ).select_from(FeedbackEvent)
    row = session.execute(query).one()
    return {key: int(value) for key, value in row._mapping.items()}
