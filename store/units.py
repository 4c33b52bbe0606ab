"""Per-arm aggregates over randomisation units, computed in SQL (no Python loop over rows).

With sticky assignment every request of one client goes to the same arm, so the client, not
the request, is what was randomised: counting requests as independent overstates the evidence
(a sample-ratio test on requests flags a mismatch on perfectly healthy sticky traffic, and an
accuracy interval over requests is too narrow). A unit is the request's ``client_hash``, or the
prediction itself when the request carried no client id; routers that route every request anew
(``by_client=False``) randomise requests, so there every prediction is its own unit.

Each query is one ``GROUP BY arm, unit`` subquery under a ``GROUP BY arm``, over the same rows as
``store.arm_outcomes`` (the experiment's served predictions, shadow runs excluded), and carries
``arm_outcomes``' request counts too, so the results page reads an experiment once.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Label, Subquery, case, func, select
from sqlalchemy.orm import Session

from store.models import Feedback, Prediction
from store.queries import _count_if, _served_by, routing_scope

#: The sufficient statistics of a ratio metric (``experiments.stats.RatioStats``' fields).
RATIO_FIELDS = ("n", "m_sum", "m_sum_squares", "d_sum", "d_sum_squares", "m_d_sum_of_products")
#: Request counts, as ``store.arm_outcomes`` gives them.
COUNT_FIELDS = ("requests", "served", "labelled", "correct", "fallbacks", "errors")


def _unit(by_client: bool) -> tuple[ColumnElement[Any], ...]:
    """GROUP BY columns of the randomisation unit: the client, else the prediction itself (two
    columns rather than ``COALESCE``, which SQLite groups about a quarter faster)."""
    if by_client:
        return (
            Prediction.client_hash,
            case((Prediction.client_hash.is_(None), Prediction.id)),
        )
    return (Prediction.id,)


def _is_correct() -> ColumnElement[int]:
    """1 for a labelled, successful, correct prediction, else 0."""
    return case((Prediction.error.is_(None) & Feedback.correct.is_(True), 1), else_=0)


def _per_unit(name: str, scope: ColumnElement[bool], units_only: bool) -> list[Label[Any]]:
    """One unit's counts among its rows in ``scope`` (just requests and served ones for a
    ``units_only`` scope: every column costs a CASE per row)."""
    ok = scope & Prediction.error.is_(None)
    labelled = ok & Feedback.id.is_not(None)
    counted = [
        _count_if(scope).label(f"{name}_requests"),
        _count_if(ok).label(f"{name}_served"),
    ]
    if units_only:
        return counted
    return [
        *counted,
        _count_if(scope & Prediction.error.is_not(None)).label(f"{name}_errors"),
        _count_if(ok & Prediction.fallback.is_not(None)).label(f"{name}_fallbacks"),
        func.sum(case((ok, Prediction.confidence))).label(f"{name}_confidence"),
        _count_if(ok & Prediction.confidence.is_not(None)).label(f"{name}_confidences"),
        _count_if(labelled).label(f"{name}_d"),
        _count_if(labelled & Feedback.correct.is_(True)).label(f"{name}_m"),
    ]


def _per_arm(units: Subquery, name: str, units_only: bool) -> list[Label[Any]]:
    """An arm's totals over its units in ``scope``."""

    def column(field: str) -> Any:
        return units.c[f"{name}_{field}"]

    def total(value: Any, label: str) -> Label[Any]:
        return func.coalesce(func.sum(value), 0).label(f"{name}_{label}")

    counted = [
        _count_if(column("served") > 0).label(f"{name}_units"),
        total(column("requests"), "requests"),
    ]
    if units_only:
        return counted
    m, d = column("m"), column("d")
    return [
        *counted,
        _count_if(d > 0).label(f"{name}_n"),
        total(m, "m_sum"),
        total(m * m, "m_sum_squares"),
        total(d, "d_sum"),
        total(d * d, "d_sum_squares"),
        total(m * d, "m_d_sum_of_products"),
        *(total(column(f), f) for f in ("served", "errors", "fallbacks")),
        func.sum(column("confidence")).label(f"{name}_sum_confidence"),
        total(column("confidences"), "confidences"),
    ]


def _numbers(row: Any, name: str, units_only: bool) -> dict[str, Any]:
    """One arm's numbers in one scope: ``arm_outcomes``' keys plus units and ratio statistics."""

    def get(field: str) -> Any:
        return getattr(row, f"{name}_{field}")

    if units_only:
        return {"units": int(get("units")), "requests": int(get("requests"))}
    confidence, confidences = get("sum_confidence"), int(get("confidences"))
    numbers = {key: int(get(key)) for key in ("units", *RATIO_FIELDS)}
    numbers.update({key: int(get(key)) for key in ("requests", "served", "errors", "fallbacks")})
    numbers["labelled"], numbers["correct"] = numbers["d_sum"], numbers["m_sum"]
    numbers["sum_confidence"] = float(confidence or 0.0)
    numbers["mean_confidence"] = float(confidence) / confidences if confidences else None
    return numbers


def unit_scopes(
    session: Session,
    experiment: str,
    scopes: Mapping[str, ColumnElement[bool]],
    *,
    by_client: bool = True,
    units_only: Collection[str] = (),
) -> dict[str, dict[str, dict[str, Any]]]:
    """``{scope: {arm: numbers}}`` for several subsets of the experiment's rows in one pass
    (e.g. all of them, the routed ones, the routed ones since the shares changed); an arm
    appears in a scope when it has a row there. Numbers: ``units`` (distinct units with a
    served request: what SRM counts), the ratio statistics of accuracy over units with labels
    (``RATIO_FIELDS``: ``n`` units, sums and sums of squares of each unit's correct count ``m``
    and labelled count ``d``, the sum of ``m * d``), and ``arm_outcomes``' request counts; for a
    scope named in ``units_only``, just ``units`` and ``requests`` (what SRM needs, cheaply)."""
    columns = [
        c for name, scope in scopes.items() for c in _per_unit(name, scope, name in units_only)
    ]
    per_unit = (
        select(Prediction.arm.label("arm"), *columns)
        .outerjoin(Feedback, Feedback.prediction_id == Prediction.id)
        .where(*_served_by(experiment))
        .group_by(Prediction.arm, *_unit(by_client))
        .subquery()
    )
    query = select(
        per_unit.c.arm,
        *(c for name in scopes for c in _per_arm(per_unit, name, name in units_only)),
    ).group_by(per_unit.c.arm)
    out: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in scopes}
    for row in session.execute(query):
        for name in scopes:
            numbers = _numbers(row, name, name in units_only)
            if numbers["requests"]:
                out[name][row.arm] = numbers
    return out


def unit_outcomes(
    session: Session,
    experiment: str,
    since: datetime | None = None,
    routed_only: bool = False,
    *,
    by_client: bool = True,
) -> dict[str, dict[str, Any]]:
    """``unit_scopes`` for the one scope ``arm_outcomes(since, routed_only)`` counts."""
    scope = routing_scope(since, routed_only)
    return unit_scopes(session, experiment, {"rows": scope}, by_client=by_client)["rows"]


def unit_series(
    session: Session, experiment: str, buckets: int = 50, *, by_client: bool = True
) -> list[dict[str, Any]]:
    """Increments of each arm's unit-level ratio statistics per bucket of labelled outcomes.

    The experiment's labelled, successful served predictions, in the order they were made, are
    cut into at most ``buckets`` equal runs (``NTILE``); one row per (bucket, arm) holds what the
    bucket adds to ``RATIO_FIELDS`` and ``labelled`` (its outcomes). A running sum of the rows
    gives the statistics after every bucket, exactly: a unit with ``M``, ``D`` before a bucket
    that adds ``dm``, ``dd`` adds ``dm (2M + dm)`` to the sum of squares of ``m``, ``dm D + M dd +
    dm dd`` to the sum of products, and 1 to ``n`` when ``D`` was 0. At most ``buckets`` times
    the number of arms rows come back, whatever the traffic.
    """
    labelled = (
        select(
            Prediction.arm.label("arm"),
            (
                func.coalesce(Prediction.client_hash, Prediction.id) if by_client else Prediction.id
            ).label("unit"),
            _is_correct().label("m"),
            func.ntile(buckets)
            .over(order_by=(Prediction.created_at, Prediction.id))
            .label("bucket"),
        )
        .join(Feedback, Feedback.prediction_id == Prediction.id)
        .where(*_served_by(experiment), Prediction.error.is_(None))
        .subquery()
    )
    per_unit = (
        select(
            labelled.c.arm,
            labelled.c.unit,
            labelled.c.bucket,
            func.sum(labelled.c.m).label("dm"),
            func.count().label("dd"),
        )
        .group_by(labelled.c.arm, labelled.c.unit, labelled.c.bucket)
        .subquery()
    )
    unit_window = {
        "partition_by": (per_unit.c.arm, per_unit.c.unit),
        "order_by": per_unit.c.bucket,
    }
    running = select(
        per_unit.c.arm,
        per_unit.c.bucket,
        per_unit.c.dm,
        per_unit.c.dd,
        (func.sum(per_unit.c.dm).over(**unit_window) - per_unit.c.dm).label("m_before"),
        (func.sum(per_unit.c.dd).over(**unit_window) - per_unit.c.dd).label("d_before"),
    ).subquery()
    dm, dd, m0, d0 = running.c.dm, running.c.dd, running.c.m_before, running.c.d_before
    query = (
        select(
            running.c.arm,
            running.c.bucket,
            func.sum(dd).label("labelled"),
            _count_if(d0 == 0).label("n"),
            func.sum(dm).label("m_sum"),
            func.sum(dm * (2 * m0 + dm)).label("m_sum_squares"),
            func.sum(dd).label("d_sum"),
            func.sum(dd * (2 * d0 + dd)).label("d_sum_squares"),
            func.sum(dm * d0 + m0 * dd + dm * dd).label("m_d_sum_of_products"),
        )
        .group_by(running.c.arm, running.c.bucket)
        .order_by(running.c.bucket, running.c.arm)
    )
    return [
        {
            "arm": row.arm,
            "bucket": int(row.bucket),
            "labelled": int(row.labelled),
            **{key: int(getattr(row, key)) for key in RATIO_FIELDS},
        }
        for row in session.execute(query)
    ]


__all__ = ["RATIO_FIELDS", "unit_outcomes", "unit_series"]
