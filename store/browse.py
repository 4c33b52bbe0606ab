"""Browsing the stored predictions a page at a time (the admin's list and its CSV export).

Pages are keyset pages over ``(created_at, id)``, newest first: a page asks for the rows just
older (or newer) than a cursor, ``LIMIT`` one more than it shows, so the thousandth page costs
what the first does, at a million rows as at ten. Only served predictions are listed (shadow runs
are never answers). The names a filter may take come from the roll-ups (``store.rollups``),
which hold every stored strategy and experiment arm in a few rows, never from the predictions.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, false, func, or_, select, true
from sqlalchemy.orm import Session

from store.models import Feedback, Prediction, rollup_arms, rollup_strategies

#: What a prediction's effective verdict says: right, wrong, or nothing yet.
OUTCOMES = ("correct", "wrong", "unlabelled")
#: Rows on one page of the admin's list.
PAGE_SIZE = 50
#: Rows one CSV export holds at the most (the newest matching ones).
EXPORT_LIMIT = 100_000
#: Rows fetched from the database at a time while an export streams.
EXPORT_BATCH = 1000

_CURSOR = re.compile(r"^(\d{8}T\d{12})-([0-9a-f]{32})$")
_CURSOR_TIME = "%Y%m%dT%H%M%S%f"


@dataclass(frozen=True)
class Cursor:
    """A row's place in the newest-first order, handed to the next page as ``before``/``after``."""

    created_at: datetime
    id: str

    def token(self) -> str:
        """The cursor as URL-safe text, e.g. ``20261201T120000000000-<id>`` (microseconds)."""
        return f"{self.created_at.astimezone(UTC).strftime(_CURSOR_TIME)}-{self.id}"

    @classmethod
    def parse(cls, token: str) -> Cursor:
        """The cursor ``token`` names; ValueError when it is not one this module made."""
        match = _CURSOR.fullmatch(token)
        if match is None:
            raise ValueError("not a page cursor")
        at = datetime.strptime(match.group(1), _CURSOR_TIME).replace(tzinfo=UTC)
        return cls(at, match.group(2))


@dataclass(frozen=True)
class PredictionFilter:
    """Which predictions to list; None matches any value."""

    strategy: str | None = None
    arm: str | None = None
    #: One of ``OUTCOMES``.
    outcome: str | None = None

    def __post_init__(self) -> None:
        if self.outcome is not None and self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}")


@dataclass(frozen=True)
class ListedPrediction:
    """One row of the list: what was asked, who served, what it said, and its verdict."""

    id: str
    created_at: datetime
    strategy: str
    experiment: str | None
    arm: str
    label: str | None
    confidence: float | None
    abstained: bool
    latency_ms: float
    model_version: str
    error: str | None
    #: The member stacking fell back to, if it did.
    fallback_model: str | None
    #: The effective verdict's true class (None: unlabelled) and whether the answer was it.
    true_class_index: int | None
    correct: bool | None
    #: The true class's name, from the prediction's own class order.
    true_label: str | None

    @property
    def outcome(self) -> str:
        """``correct``, ``wrong`` or ``unlabelled`` (one of ``OUTCOMES``)."""
        if self.correct is None:
            return "unlabelled"
        return "correct" if self.correct else "wrong"

    @property
    def cursor(self) -> Cursor:
        return Cursor(self.created_at, self.id)


@dataclass(frozen=True)
class PredictionPage:
    """One page, newest first, and the cursors of the pages either side (None: no such page)."""

    rows: list[ListedPrediction]
    newer: Cursor | None
    older: Cursor | None


_COLUMNS = (
    Prediction.id,
    Prediction.created_at,
    Prediction.strategy,
    Prediction.experiment,
    Prediction.arm,
    Prediction.label,
    Prediction.confidence,
    Prediction.abstained,
    Prediction.latency_ms,
    Prediction.model_version,
    Prediction.error,
    Prediction.fallback,
    Prediction.probabilities,
    Feedback.true_class_index,
    Feedback.correct,
)


def _served(session: Session) -> ColumnElement[bool]:
    """Served rows, not shadow runs, tested so that each planner pages by time.

    SQLite plans without statistics: it would take the index on ``shadow_of`` (which matches
    nearly every row) and sort the table, so there the test goes through ``coalesce``, which no
    index serves. PostgreSQL knows the column is nearly all NULL, and misjudges the ``coalesce``
    form as rare, so it gets the plain test.
    """
    if session.get_bind().dialect.name == "sqlite":
        return func.coalesce(Prediction.shadow_of, "") == ""
    return Prediction.shadow_of.is_(None)


def _matching(session: Session, filters: PredictionFilter) -> Select[Any]:
    """The served predictions ``filters`` lets through, with their effective verdicts.

    The verdict stays an outer join tested with ``IS``, so that SQLite keeps the predictions as
    the outer loop, read newest first and stopped early by ``LIMIT``, instead of sorting every
    verdict of that kind.
    """
    query = select(*_COLUMNS).outerjoin(Feedback, Feedback.prediction_id == Prediction.id)
    conditions = [_served(session)]
    if filters.strategy is not None:
        conditions.append(Prediction.strategy == filters.strategy)
    if filters.arm is not None:
        conditions.append(Prediction.arm == filters.arm)
    if filters.outcome == "correct":
        conditions.append(Feedback.correct.is_(true()))
    elif filters.outcome == "wrong":
        conditions.append(Feedback.correct.is_(false()))
    elif filters.outcome == "unlabelled":
        conditions.append(Feedback.prediction_id.is_(None))  # an anti-join to PostgreSQL
    return query.where(*conditions)


def _beyond(cursor: Cursor, *, older: bool) -> Any:
    """Rows strictly older (or newer) than ``cursor``, written so the time index bounds the scan
    (a bare ``OR`` of the two cases would make SQLite read from the newest row on)."""
    at, key = Prediction.created_at, Prediction.id
    if older:
        return and_(at <= cursor.created_at, or_(at < cursor.created_at, key < cursor.id))
    return and_(at >= cursor.created_at, or_(at > cursor.created_at, key > cursor.id))


def _listed(row: Any) -> ListedPrediction:
    names = list(row.probabilities or ())
    index = row.true_class_index
    if index is None:
        true_label = None
    else:
        true_label = names[index] if 0 <= index < len(names) else str(index)
    return ListedPrediction(
        id=row.id,
        created_at=row.created_at,
        strategy=row.strategy,
        experiment=row.experiment,
        arm=row.arm,
        label=row.label,
        confidence=row.confidence,
        abstained=bool(row.abstained),
        latency_ms=row.latency_ms,
        model_version=row.model_version,
        error=row.error,
        fallback_model=(row.fallback or {}).get("model"),
        true_class_index=index,
        correct=row.correct,
        true_label=true_label,
    )


def list_predictions(
    session: Session,
    filters: PredictionFilter = PredictionFilter(),
    *,
    before: Cursor | None = None,
    after: Cursor | None = None,
    limit: int = PAGE_SIZE,
) -> PredictionPage:
    """The page of matching predictions just older than ``before`` (or just newer than
    ``after``; neither: the newest), in one indexed query of ``limit + 1`` rows."""
    if before is not None and after is not None:
        raise ValueError("give before or after, not both")
    query = _matching(session, filters)
    at, key = Prediction.created_at, Prediction.id
    if after is not None:
        query = query.where(_beyond(after, older=False)).order_by(at.asc(), key.asc())
    else:
        if before is not None:
            query = query.where(_beyond(before, older=True))
        query = query.order_by(at.desc(), key.desc())
    rows = [_listed(row) for row in session.execute(query.limit(limit + 1))]
    more = len(rows) > limit
    rows = rows[:limit]
    if not rows:
        return PredictionPage([], None, None)
    if after is not None:
        rows.reverse()
        # Going newer: the page this one was reached from is older, so there is an older page.
        return PredictionPage(rows, rows[0].cursor if more else None, rows[-1].cursor)
    # Going older (from a newer page) or the newest page.
    newer = rows[0].cursor if before is not None else None
    return PredictionPage(rows, newer, rows[-1].cursor if more else None)


def export_predictions(
    session: Session, filters: PredictionFilter = PredictionFilter(), limit: int = EXPORT_LIMIT
) -> Iterator[ListedPrediction]:
    """The newest ``limit`` matching predictions, newest first, fetched in batches so an export
    streams without holding every row in memory."""
    query = _matching(session, filters).order_by(Prediction.created_at.desc(), Prediction.id.desc())
    result = session.execute(query.limit(limit).execution_options(yield_per=EXPORT_BATCH))
    for row in result:
        yield _listed(row)


def stored_names(session: Session) -> tuple[list[str], list[str]]:
    """Every requested strategy and every serving arm on record, sorted: what the list's
    filters offer. Direct traffic is served by the strategy it asked for, so the arms are the
    experiments' arms plus the strategies that are not experiments."""
    strategies = set(session.scalars(select(rollup_strategies.c.strategy)))
    arms: set[str] = set()
    experiments: set[str] = set()
    for experiment, arm in session.execute(select(rollup_arms.c.experiment, rollup_arms.c.arm)):
        experiments.add(experiment)
        arms.add(arm)
    return sorted(strategies), sorted(arms | (strategies - experiments))
