"""Predictions, feedback and the statistics inputs, in portable SQLAlchemy (SQLite and Postgres).

Shadow runs (``shadow_of`` set) are never served: the first release's readers below and the
per-arm aggregates skip them; ``shadow_outcomes`` and ``shadows_of`` read them. Verdicts are
written by ``store.feedback`` (``record_feedback``, ``correct_feedback``); the aggregates here
read the effective verdict (``feedback``), never the history.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    case,
    func,
    or_,
    select,
    text,
    true,
    union_all,
)
from sqlalchemy.orm import InstrumentedAttribute, Session, aliased, selectinload

from store import rollups
from store.models import Feedback, Prediction, rollup_strategies
from store.prepared import full_insert
from store.rollups import AB, FIXED_ROUTES

#: The first release's successful ab rows (``store.models.LEGACY_AB_OK``), columns qualified
#: (the window's union names its table).
LEGACY_AB_WHERE = (
    "predictions.experiment IS NULL AND predictions.strategy = 'ab' "
    "AND predictions.error IS NULL AND predictions.shadow_of IS NULL"
)


def add_prediction(session: Session, **fields: Any) -> Prediction:
    """Insert one prediction row and its roll-ups (``store.rollups``) in its own short
    transaction, so a worker holds no lock long and the roll-ups never drift from the rows.

    ``fields`` are ``Prediction``'s columns, including the routing ones: ``experiment``, ``arm``,
    ``members_used``, ``shadow_of`` (a shadow run's served prediction), ``route_reason`` and
    ``features``.
    """
    row = Prediction(**fields)
    session.add(row)
    _commit_with_rollups(session, [fields], session.flush)
    return row


def record_prediction(session: Session, **fields: Any) -> None:
    """``add_prediction`` for the request path: the same row, roll-ups and commit, the row
    inserted by one prepared ``INSERT`` (``store.prepared``: the ORM's unit of work, and then
    Core's execution layer, each cost more than SQLite's own work) and no object returned."""
    record_predictions(session, [fields])


def record_predictions(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """A batch's predictions as ``record_prediction`` stores one, in one transaction: all of
    them are committed before the answer, or none is (no half-recorded batch)."""
    connection = session.connection()

    def write() -> None:
        for fields in rows:
            _INSERT_PREDICTION.run(connection, fields)

    _commit_with_rollups(session, rows, write)


#: Compiled once per dialect, with every column's Python default.
_INSERT_PREDICTION = full_insert(Prediction.__table__)


def _commit_with_rollups(
    session: Session, rows: Sequence[dict[str, Any]], write: Callable[[], object]
) -> None:
    """Run ``write`` (the rows' inserts), then their roll-ups, and commit; roll back on failure."""
    try:
        write()
        rollups.record_predictions(session, rows)
        session.commit()
    except BaseException:
        session.rollback()
        raise


def get_prediction(session: Session, prediction_id: str) -> Prediction | None:
    """One prediction with its feedback loaded, or None."""
    query = (
        select(Prediction)
        .where(Prediction.id == prediction_id)
        .options(selectinload(Prediction.feedback))
    )
    return session.scalars(query).one_or_none()


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
        .where(condition, Prediction.shadow_of.is_(None))
    )
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in session.execute(query):
        grouped[row.key].append(_record(row))
    return dict(grouped)


def total_predictions(session: Session) -> int:
    """Every recorded prediction request, failed ones included (shadow runs are not requests)."""
    query = select(func.count()).select_from(Prediction).where(Prediction.shadow_of.is_(None))
    return int(session.scalar(query) or 0)


def accuracy_points(
    session: Session, experiment: str = AB
) -> dict[str, list[tuple[datetime, bool]]]:
    """Labelled outcomes per arm of an experiment (the first release's: ab) in time order."""
    query = (
        select(Prediction.arm, Prediction.created_at, Feedback.correct)
        .join(Feedback, Feedback.prediction_id == Prediction.id)
        .where(*_served_by(experiment), Prediction.error.is_(None))
        .order_by(Prediction.created_at, Prediction.id)
    )
    points: dict[str, list[tuple[datetime, bool]]] = defaultdict(list)
    for arm, created_at, correct in session.execute(query):
        points[arm].append((created_at, bool(correct)))
    return dict(points)


def recent_predictions(session: Session, limit: int = 25) -> list[Prediction]:
    """The newest served predictions with their feedback, for the admin table."""
    query = (
        select(Prediction)
        .where(Prediction.shadow_of.is_(None))
        .options(selectinload(Prediction.feedback))
        .order_by(Prediction.created_at.desc(), Prediction.id)
        .limit(limit)
    )
    return list(session.scalars(query))


def abstentions_by_strategy(session: Session) -> dict[str, dict[str, int]]:
    """Per requested strategy: answered predictions and how many of them abstained."""
    answered = (Prediction.shadow_of.is_(None)) & (Prediction.error.is_(None))
    query = (
        select(Prediction.strategy, func.count(), _count_if(Prediction.abstained == true()))
        .where(answered)
        .group_by(Prediction.strategy)
        .order_by(Prediction.strategy)
    )
    return {
        strategy: {"answered": int(total), "abstained": int(abstained)}
        for strategy, total, abstained in session.execute(query)
    }


def _count_if(condition: ColumnElement[bool]) -> ColumnElement[int]:
    """COUNT of the rows where ``condition`` holds (portable: no FILTER, no SUM of booleans)."""
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _served_by(experiment: str) -> list[ColumnElement[bool]]:
    """The rows an experiment routed and served (its shadow runs excluded).

    The first release recorded its one experiment, ``ab``, with ``strategy = 'ab'`` and no
    ``experiment`` column: those rows stay part of ab's results.
    """
    routed: ColumnElement[bool] = Prediction.experiment == experiment
    if experiment == AB:
        routed = or_(routed, and_(Prediction.experiment.is_(None), Prediction.strategy == AB))
    return [routed, Prediction.shadow_of.is_(None)]


#: Every served request, direct or routed (shadow runs excluded).
_ALL_SERVED: list[ColumnElement[bool]] = [Prediction.shadow_of.is_(None)]


def _outcomes(
    session: Session, key: InstrumentedAttribute[str], conditions: list[ColumnElement[bool]]
) -> dict[str, dict[str, Any]]:
    """Per-``key`` counts in one aggregate query (see ``arm_outcomes``)."""
    ok = Prediction.error.is_(None)
    confidence = case((ok, Prediction.confidence))
    query = (
        select(
            key.label("key"),
            func.count().label("requests"),
            _count_if(ok).label("served"),
            _count_if(ok & Feedback.id.is_not(None)).label("labelled"),
            _count_if(ok & Feedback.correct.is_(True)).label("correct"),
            func.sum(confidence).label("sum_confidence"),
            func.avg(confidence).label("mean_confidence"),
            _count_if(ok & Prediction.fallback.is_not(None)).label("fallbacks"),
            _count_if(Prediction.error.is_not(None)).label("errors"),
        )
        .outerjoin(Feedback, Feedback.prediction_id == Prediction.id)
        .where(*conditions)
        .group_by(key)
    )
    outcomes: dict[str, dict[str, Any]] = {}
    for row in session.execute(query):
        counts = {
            name: int(getattr(row, name))
            for name in ("requests", "served", "labelled", "correct", "fallbacks", "errors")
        }
        outcomes[row.key] = {
            **counts,
            "sum_confidence": float(row.sum_confidence or 0.0),
            "mean_confidence": (
                float(row.mean_confidence) if row.mean_confidence is not None else None
            ),
        }
    return outcomes


def arm_outcomes(
    session: Session,
    experiment: str,
    since: datetime | None = None,
    routed_only: bool = False,
) -> dict[str, dict[str, Any]]:
    """Per-arm counts of an experiment in one aggregate query, in ``arm_summary``'s terms.

    ``requests`` counts every routed request, ``errors`` the failed ones; ``served`` the
    successful ones, over which ``labelled``, ``correct``, ``fallbacks``, ``sum_confidence`` and
    ``mean_confidence`` (None without any) are taken. ``since`` keeps only requests made at or
    after it (the sample-ratio check counts traffic since the shares last changed);
    ``routed_only`` leaves out requests a paused or decided experiment sent to one model.
    """
    return _outcomes(
        session, Prediction.arm, [*_served_by(experiment), routing_scope(since, routed_only)]
    )


def routing_scope(since: datetime | None = None, routed_only: bool = False) -> ColumnElement[bool]:
    """Which of an experiment's rows ``arm_outcomes`` counts (shared with ``store.units``):
    made at or after ``since``; with ``routed_only``, routed by the router, not by a pause or a
    decision."""
    conditions: list[ColumnElement[bool]] = []
    if since is not None:
        conditions.append(Prediction.created_at >= since)
    if routed_only:
        conditions.append(
            or_(Prediction.route_reason.is_(None), Prediction.route_reason.not_in(FIXED_ROUTES))
        )
    return and_(true(), *conditions)


def strategy_outcomes(session: Session) -> dict[str, dict[str, Any]]:
    """``arm_outcomes``' counts per requested strategy over all served traffic (the stats page)."""
    return _outcomes(session, Prediction.strategy, _ALL_SERVED)


def _newest_first(key: InstrumentedAttribute[str]) -> ColumnElement[int]:
    """ROW_NUMBER() per key, 1 for its newest prediction (SQLite >= 3.25 and Postgres)."""
    return func.row_number().over(
        partition_by=key,
        order_by=(Prediction.created_at.desc(), Prediction.id.desc()),
    )


def _latencies(
    session: Session,
    key: InstrumentedAttribute[str],
    conditions: list[ColumnElement[bool]],
    limit: int | None,
) -> dict[str, list[float]]:
    """Successful rows' latencies per key, newest first, at most ``limit`` per key."""
    where = [*conditions, Prediction.error.is_(None)]
    if limit is None:
        query = (
            select(key, Prediction.latency_ms)
            .where(*where)
            .order_by(key, Prediction.created_at.desc(), Prediction.id.desc())
        )
    else:
        ranked = (
            select(
                key.label("key"),
                Prediction.latency_ms.label("latency_ms"),
                _newest_first(key).label("rank"),
            )
            .where(*where)
            .subquery()
        )
        query = (
            select(ranked.c.key, ranked.c.latency_ms)
            .where(ranked.c.rank <= limit)
            .order_by(ranked.c.key, ranked.c.rank)
        )
    latencies: dict[str, list[float]] = defaultdict(list)
    for name, latency_ms in session.execute(query):
        latencies[name].append(float(latency_ms))
    return dict(latencies)


def arm_latencies(
    session: Session, experiment: str, limit: int | None = None
) -> dict[str, list[float]]:
    """Latencies (ms) of each arm's successful served predictions, newest first, for percentiles."""
    return _latencies(session, Prediction.arm, _served_by(experiment), limit)


def strategy_latencies(session: Session, limit: int | None = None) -> dict[str, list[float]]:
    """Successful served latencies (ms) per requested strategy, newest first (every one: the
    oracle of ``recent_strategy_latencies``)."""
    return _latencies(session, Prediction.strategy, _ALL_SERVED, limit)


#: Latency percentiles a summary carries: the median and the p95.
PERCENTILES = (50, 95)


def _window_percentiles(
    session: Session, window: Select[Any], qs: tuple[int, ...]
) -> dict[str, Any]:
    """``{"samples": n, q: value}`` of a window of latencies (a bounded select of one column
    ``v``), linear like ``experiments.stats.percentile``, ordered inside the database: a
    count and two order statistics per percentile, never the window's rows in Python."""
    w = window.subquery()
    samples = int(session.scalar(select(func.count()).select_from(w)) or 0)
    out: dict[str, Any] = {"samples": samples}
    for q in qs:
        if not samples:
            out[q] = None
            continue
        position = (samples - 1) * q / 100.0
        lower = math.floor(position)
        pair = [
            float(v) for v in session.scalars(select(w.c.v).order_by(w.c.v).offset(lower).limit(2))
        ]
        upper = pair[1] if len(pair) > 1 else pair[0]
        out[q] = pair[0] + (upper - pair[0]) * (position - lower)
    return out


def _newest(conditions: list[ColumnElement[bool]], limit: int) -> Select[Any]:
    """The newest ``limit`` successful served latencies among ``conditions``' rows, down one of
    the covering latency indexes (their WHERE is ``SERVED_OK``, repeated here)."""
    return (
        select(Prediction.latency_ms.label("v"))
        .where(*conditions, Prediction.error.is_(None), Prediction.shadow_of.is_(None))
        .order_by(Prediction.created_at.desc())
        .limit(limit)
    )


def strategy_latency_percentiles(
    session: Session, limit: int, qs: tuple[int, ...] = PERCENTILES
) -> dict[str, dict[str, Any]]:
    """Per requested strategy (``rollup_strategies`` names them), the percentiles of its newest
    ``limit`` successful served latencies: a bounded read at any history size."""
    return {
        strategy: _window_percentiles(
            session, _newest([Prediction.strategy == strategy], limit), qs
        )
        for strategy in session.scalars(select(rollup_strategies.c.strategy))
    }


def _arm_window(experiment: str, arm: str, limit: int) -> Select[Any]:
    """An arm's newest ``limit`` successful served latencies; for ``ab`` the first release's
    rows (``strategy = 'ab'``, no experiment) too, each part down the index, then merged."""
    routed = _newest([Prediction.experiment == experiment, Prediction.arm == arm], limit)
    if experiment != AB:
        return routed
    # The first release's rows, down their own partial index (its WHERE as literal SQL, so
    # SQLite can match it: a bound 'ab' would not).
    legacy = _newest([Prediction.arm == arm, text(LEGACY_AB_WHERE)], limit)
    parts = [q.add_columns(Prediction.created_at.label("at")).subquery() for q in (routed, legacy)]
    both = union_all(*(select(p.c.v, p.c.at) for p in parts)).subquery()
    return select(both.c.v).order_by(both.c.at.desc()).limit(limit)


def arm_latency_percentiles(
    session: Session,
    experiment: str,
    arms: list[str],
    limit: int,
    qs: tuple[int, ...] = PERCENTILES,
) -> dict[str, dict[str, Any]]:
    """Per arm, the percentiles of its newest ``limit`` successful served latencies."""
    return {
        arm: _window_percentiles(session, _arm_window(experiment, arm, limit), qs) for arm in arms
    }


def shadow_latency_percentiles(
    session: Session, experiment: str, arms: list[str], limit: int, qs: tuple[int, ...] = (50,)
) -> dict[str, dict[str, Any]]:
    """Per shadow model, the percentiles of its newest ``limit`` successful runs' latencies
    (down the (experiment, arm, created_at) index)."""
    out = {}
    for arm in arms:
        window = (
            select(Prediction.latency_ms.label("v"))
            .where(
                Prediction.experiment == experiment,
                Prediction.arm == arm,
                Prediction.shadow_of.is_not(None),
                Prediction.error.is_(None),
            )
            .order_by(Prediction.created_at.desc())
            .limit(limit)
        )
        out[arm] = _window_percentiles(session, window, qs)
    return out


def latency_window(session: Session, experiment: str, window: int) -> dict[str, list[float]]:
    """Each arm's last ``window`` successful served latencies: what latency_based routes by."""
    return _latencies(session, Prediction.arm, _served_by(experiment), window)


def recent_latencies(
    session: Session, experiment: str, arms: list[str], limit: int
) -> dict[str, list[float]]:
    """Each arm's newest ``limit`` successful served latencies (ms), newest first: one LIMIT
    query per arm down the (experiment, arm, created_at) index, so it costs the same at a
    million rows as at a thousand."""
    latencies = {}
    for arm in arms:
        query = (
            select(Prediction.latency_ms)
            .where(*_served_by(experiment), Prediction.arm == arm, Prediction.error.is_(None))
            .order_by(Prediction.created_at.desc(), Prediction.id.desc())
            .limit(limit)
        )
        latencies[arm] = [float(v) for v in session.scalars(query)]
    return latencies


def reward_window(session: Session, experiment: str, window: int) -> dict[str, tuple[int, int]]:
    """(labelled, correct) over each arm's last ``window`` labelled served predictions: bandits."""
    ranked = (
        select(
            Prediction.arm.label("arm"),
            Feedback.correct.label("correct"),
            _newest_first(Prediction.arm).label("rank"),
        )
        .join(Feedback, Feedback.prediction_id == Prediction.id)
        .where(*_served_by(experiment), Prediction.error.is_(None))
        .subquery()
    )
    query = (
        select(ranked.c.arm, func.count(), _count_if(ranked.c.correct.is_(True)))
        .where(ranked.c.rank <= window)
        .group_by(ranked.c.arm)
    )
    return {arm: (int(labelled), int(correct)) for arm, labelled, correct in session.execute(query)}


def shadow_outcomes(session: Session, experiment: str) -> dict[str, dict[str, Any]]:
    """Per shadow model: runs, errors, agreement with the served answer, accuracy inputs, latencies.

    Over the shadow runs of predictions the experiment served: ``runs`` counts them all and
    ``errors`` the failed ones; ``agreement`` counts successful runs that answered the served
    class; ``labelled`` counts successful runs whose served prediction has feedback, ``correct``
    those among them that answered its true class; ``latencies`` are the successful runs' (ms),
    newest first.
    """
    shadow = aliased(Prediction, name="shadow")
    served = aliased(Prediction, name="served")
    ok = shadow.error.is_(None)
    query = (
        select(
            shadow.arm,
            func.count().label("runs"),
            _count_if(shadow.error.is_not(None)).label("errors"),
            _count_if(ok & (shadow.class_index == served.class_index)).label("agreement"),
            _count_if(ok & Feedback.id.is_not(None)).label("labelled"),
            _count_if(ok & (shadow.class_index == Feedback.true_class_index)).label("correct"),
        )
        .join(served, shadow.shadow_of == served.id)
        .outerjoin(Feedback, Feedback.prediction_id == served.id)
        .where(served.experiment == experiment)
        .group_by(shadow.arm)
    )
    outcomes: dict[str, dict[str, Any]] = {
        row.arm: {
            key: int(getattr(row, key))
            for key in ("runs", "errors", "agreement", "labelled", "correct")
        }
        for row in session.execute(query)
    }
    latencies = (
        select(shadow.arm, shadow.latency_ms)
        .join(served, shadow.shadow_of == served.id)
        .where(served.experiment == experiment, ok)
        .order_by(shadow.arm, shadow.created_at.desc(), shadow.id.desc())
    )
    for outcome in outcomes.values():
        outcome["latencies"] = []
    for arm, latency_ms in session.execute(latencies):
        outcomes[arm]["latencies"].append(float(latency_ms))
    return outcomes


def shadows_of(session: Session, prediction_id: str) -> list[Prediction]:
    """The shadow runs recorded for one served prediction, oldest first."""
    query = (
        select(Prediction)
        .where(Prediction.shadow_of == prediction_id)
        .order_by(Prediction.created_at, Prediction.id)
    )
    return list(session.scalars(query))
