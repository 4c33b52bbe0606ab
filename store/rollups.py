"""Roll-ups kept up to date on write, so every read costs the same at a million rows as at ten.

Each prediction, shadow run and effective verdict updates, in the transaction that writes it
(so the roll-ups are never ahead of or behind the rows), a few counter rows (``store.models``):

- ``rollup_strategies``: per requested strategy, ``arm_outcomes``' request counts over all
  served traffic (the stats page), and how many answers abstained (``/admin``);
- ``rollup_arms``: per experiment arm and scope (``all`` traffic; ``routed``: what the router
  routed, not a pause or a decision), the request counts and the unit-level sums of the ratio
  statistics (``store.units.RATIO_FIELDS``) over randomisation units;
- ``rollup_units``: per (experiment, arm, client) and scope, the client's served, labelled
  (``d``) and correct (``m``) counts, from which each update's change to the arm's sums follows
  exactly (``m -> m + 1`` adds ``2m + 1`` to the sum of squares). An anonymous prediction is its
  own unit: its contribution follows from counts, so it has no row;
- ``rollup_epoch_units``/``rollup_epoch_arms``: the units with a served routed request in the
  experiment's current share epoch (``ExperimentRow.share_epoch``, bumped by every change of
  the shares): what the sample-ratio check counts;
- ``rollup_shadows``: per experiment and shadow model, runs, errors, agreement and accuracy;
- ``rollup_checkpoints``: each arm's sums every ``CHECKPOINT_LABELS`` labels of an experiment,
  downsampled to the lift and accuracy charts' points when read.

Routers that randomise requests (``by_client=False``) make every prediction its own unit:
their statistics are the request counts (``_request_units``). Counters only ever change by
``UPDATE ... SET x = x + delta`` (an upsert), which two workers may run at once on either
backend without losing a count. The functions in ``store.units`` and ``store.queries`` that
compute the same numbers from the rows are the oracle the tests compare these with.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import BigInteger, Connection, Table, bindparam, func, literal, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from store.models import (
    COUNT_FIELDS,
    ROLLUP_SCOPES,
    UNIT_FIELDS,
    UNIT_SUM_FIELDS,
    ExperimentRow,
    Feedback,
    Prediction,
    rollup_arms,
    rollup_checkpoints,
    rollup_epoch_arms,
    rollup_epoch_units,
    rollup_shadows,
    rollup_strategies,
    rollup_units,
)
from store.prepared import Prepared

AB = "ab"
#: ``route_reason`` of requests that no router decided (the experiment was paused or decided).
FIXED_ROUTES = ("paused", "completed", "rolled_back")
#: Events after which the configured shares differ from before (each starts a share epoch).
SHARE_CHANGES = ("weights_changed", "canary_changed", "canary_stepped")
#: An experiment's labels between two checkpoints of its series.
CHECKPOINT_LABELS = 100
#: Below this many labels every label is a checkpoint, so a young experiment's chart shows
#: each step (a chart of two points says nothing).
DENSE_LABELS = 50

Counts = dict[str, float]


def experiment_of(row: Mapping[str, Any]) -> str | None:
    """The experiment whose results a row feeds: its own, or ``ab`` for a first-release ``ab``
    row (``strategy = 'ab'``, no experiment); None for direct traffic."""
    return row.get("experiment") or (AB if row.get("strategy") == AB else None)


def is_routed(route_reason: str | None) -> bool:
    """Routed by the router, not sent to one model by a pause or a decision."""
    return route_reason is None or route_reason not in FIXED_ROUTES


def _dialect(session: Session) -> Any:
    """The dialect module whose INSERT has ``on_conflict_do_update`` (SQLite >= 3.35, Postgres)."""
    return postgresql if session.get_bind().dialect.name == "postgresql" else sqlite


def _counters(session: Session) -> Connection:
    """The session's connection, for the counter statements: they read only counter tables
    (and ``experiments``), never a pending ORM object, so the session's autoflush and ORM
    execution layer, a quarter of each statement's cost on the request path, are skipped."""
    return session.connection()


def _insert(session: Session, table: Table) -> Any:
    return _dialect(session).insert(table)


#: Prepared upserts by (dialect, table, key columns, counters, returning): building one (its
#: ``excluded`` alias above all) costs far more than running it, and the request path runs
#: several per prediction.
_UPSERTS: dict[tuple[str, str, tuple[str, ...], tuple[str, ...], tuple[str, ...]], Prepared] = {}


def _upsert(
    dialect: Any,
    table: Table,
    key: tuple[str, ...],
    counters: tuple[str, ...],
    returning: tuple[str, ...],
) -> Prepared:
    """INSERT the row, or add the counters to the existing one (bound parameters by name)."""
    shape = (dialect.__name__, table.name, key, counters, returning)
    prepared = _UPSERTS.get(shape)
    if prepared is None:
        statement = dialect.insert(table).values({c: bindparam(c) for c in (*key, *counters)})
        statement = statement.on_conflict_do_update(
            index_elements=list(key),
            set_={c: table.c[c] + statement.excluded[c] for c in counters},
        )
        if returning:
            statement = statement.returning(*(table.c[c] for c in returning))
        prepared = _UPSERTS[shape] = Prepared(statement)
    return prepared


def _add(
    session: Session,
    table: Table,
    key: Mapping[str, Any],
    deltas: Mapping[str, float],
) -> None:
    """Upsert: make the row with ``deltas`` or add them to it."""
    counters = tuple(sorted(deltas))
    prepared = _upsert(_dialect(session), table, tuple(key), counters, ())
    prepared.run(_counters(session), {**key, **deltas})


def _request_counts(row: Mapping[str, Any], correct: bool | None) -> Counts:
    """What one request adds to ``COUNT_FIELDS`` (``correct`` None: no verdict yet)."""
    ok = row.get("error") is None
    confidence = row.get("confidence") if ok else None
    labelled = ok and correct is not None
    return {
        "requests": 1,
        "served": int(ok),
        "errors": int(not ok),
        "fallbacks": int(ok and row.get("fallback") is not None),
        "confidences": int(confidence is not None),
        "confidence_sum": float(confidence or 0.0),
        "labelled": int(labelled),
        "correct": int(labelled and bool(correct)),
    }


def _unit_change(before: Sequence[int], after: Sequence[int]) -> Counts:
    """What one unit's move from (served, d, m) ``before`` to ``after`` adds to the arm's sums."""
    (s0, d0, m0), (s1, d1, m1) = before, after
    return {
        "units": int(s1 > 0) - int(s0 > 0),
        "n": int(d1 > 0) - int(d0 > 0),
        "m_sum_squares": m1 * m1 - m0 * m0,
        "d_sum_squares": d1 * d1 - d0 * d0,
        "m_d_sum_of_products": m1 * d1 - m0 * d0,
    }


def _nonzero(counts: Mapping[str, float]) -> dict[str, float]:
    return {k: v for k, v in counts.items() if v}


def _apply_units(
    session: Session,
    units: Mapping[tuple[str, str, str], Mapping[str, int]],
    arms: dict[tuple[str, str], Counts],
) -> None:
    """Upsert each client unit's deltas (in key order, so two writers lock rows in one order)
    and add what each unit's change means to its arm's sums."""
    key = ("experiment", "arm", "unit")
    columns = tuple(f"{scope}_{f}" for scope in ROLLUP_SCOPES for f in UNIT_FIELDS)
    params = [
        {"experiment": e, "arm": a, "unit": u, **{c: int(deltas.get(c, 0)) for c in columns}}
        for (e, a, u), deltas in sorted(units.items())
        if any(deltas.values())  # e.g. a failed request: the unit's counts stay as they are
    ]
    if not params:
        return
    prepared = _upsert(_dialect(session), rollup_units, key, columns, (*key, *columns))
    connection = _counters(session)
    for new in (row for one in params for row in prepared.rows(connection, one)):
        deltas = units[(new.experiment, new.arm, new.unit)]
        sums = arms[(new.experiment, new.arm)]
        for scope in ROLLUP_SCOPES:
            after = [int(getattr(new, f"{scope}_{f}")) for f in UNIT_FIELDS]
            before = [
                v - int(deltas.get(f"{scope}_{f}", 0))
                for v, f in zip(after, UNIT_FIELDS, strict=True)
            ]
            for field, value in _unit_change(before, after).items():
                sums[f"{scope}_{field}"] += value


def _anonymous(counts: Counts) -> Counts:
    """An anonymous request is its own unit: its unit-level sums are its counts (m, d <= 1)."""
    return {
        "units": counts["served"],
        "n": counts["labelled"],
        "m_sum_squares": counts["correct"],
        "d_sum_squares": counts["labelled"],
        "m_d_sum_of_products": counts["correct"],
    }


#: Built once: building (and keying) this select per request cost more than running it.
_SHARE_EPOCH = Prepared(
    select(ExperimentRow.__table__.c.share_epoch).where(
        ExperimentRow.__table__.c.name == bindparam("experiment")
    )
)


def _share_epoch(session: Session, experiment: str) -> int:
    rows = _SHARE_EPOCH.rows(_counters(session), {"experiment": experiment})
    return int(rows[0].share_epoch or 0) if rows else 0


def _apply_epochs(
    session: Session,
    arms: Mapping[tuple[str, str], Counts],
    clients: Mapping[tuple[str, str], set[str]],
) -> None:
    """The SRM counts of the experiments' current share epochs: routed requests, served ones,
    anonymous served ones and the clients new to the epoch (the inserts that did not conflict,
    which are the rows ``RETURNING`` gives back)."""
    epochs: dict[str, int] = {}
    for (experiment, arm), counts in arms.items():
        if experiment not in epochs:
            epochs[experiment] = _share_epoch(session, experiment)
        key = {"experiment": experiment, "epoch": epochs[experiment], "arm": arm}
        new_clients = 0
        units = sorted(clients.get((experiment, arm), ()))
        if units:
            prepared = _new_epoch_units(_dialect(session))
            connection = _counters(session)
            new_clients = sum(
                len(prepared.rows(connection, {**key, "unit": unit})) for unit in units
            )
        deltas = {**counts, "clients": new_clients}
        _add(session, rollup_epoch_arms, key, _nonzero(deltas) or deltas)


_EPOCH_UNITS: dict[str, Prepared] = {}


def _new_epoch_units(dialect: Any) -> Prepared:
    """INSERT an epoch's client unless it is there, RETURNING it when it was new."""
    prepared = _EPOCH_UNITS.get(dialect.__name__)
    if prepared is None:
        c = rollup_epoch_units.c
        prepared = _EPOCH_UNITS[dialect.__name__] = Prepared(
            dialect.insert(rollup_epoch_units)
            .values({name: bindparam(name) for name in ("experiment", "epoch", "arm", "unit")})
            .on_conflict_do_nothing()
            .returning(c.unit)
        )
    return prepared


def _labels_added(session: Session, added: Mapping[str, int]) -> None:
    """Checkpoint an experiment's arms at every label up to ``DENSE_LABELS``, then whenever its
    labels pass a multiple of ``CHECKPOINT_LABELS`` (one checkpoint per call, at the new total)."""
    for experiment, count in added.items():
        if count <= 0:
            continue
        total = int(
            _counters(session).scalar(
                select(func.coalesce(func.sum(rollup_arms.c.all_labelled), 0)).where(
                    rollup_arms.c.experiment == experiment
                )
            )
        )
        crossed = total // CHECKPOINT_LABELS != (total - count) // CHECKPOINT_LABELS
        if not crossed and total > DENSE_LABELS:
            continue
        fields = ["all_labelled", "all_correct", *(f"all_{f}" for f in UNIT_SUM_FIELDS[1:])]
        rows = select(
            rollup_arms.c.experiment,
            literal(total, BigInteger()),
            rollup_arms.c.arm,
            *(rollup_arms.c[f] for f in fields),
        ).where(rollup_arms.c.experiment == experiment)
        _counters(session).execute(
            _insert(session, rollup_checkpoints)
            .from_select(["experiment", "labelled", "arm", *fields], rows)
            .on_conflict_do_nothing()
        )


class _Batch:
    """The deltas of a batch of writes, summed in Python and applied as one upsert per row."""

    def __init__(self) -> None:
        self.strategies: dict[str, Counts] = defaultdict(lambda: defaultdict(float))
        self.arms: dict[tuple[str, str], Counts] = defaultdict(lambda: defaultdict(float))
        self.units: dict[tuple[str, str, str], dict[str, int]] = defaultdict(
            lambda: defaultdict(int)
        )
        self.epochs: dict[tuple[str, str], Counts] = defaultdict(lambda: defaultdict(float))
        self.epoch_clients: dict[tuple[str, str], set[str]] = defaultdict(set)
        self.labels: dict[str, int] = defaultdict(int)

    def request(self, row: Mapping[str, Any], correct: bool | None) -> None:
        """A served (or failed) request, with its first verdict's correctness if it has one."""
        counts = _request_counts(row, correct)
        strategy = self.strategies[row["strategy"]]
        for field, value in counts.items():
            strategy[field] += value
        strategy["abstained"] += int(row.get("error") is None and bool(row.get("abstained")))
        experiment = experiment_of(row)
        if experiment is None:
            return
        arm, client = row["arm"], row.get("client_hash")
        routed = is_routed(row.get("route_reason"))
        scopes = ROLLUP_SCOPES if routed else ROLLUP_SCOPES[:1]
        sums = self.arms[(experiment, arm)]
        for scope in scopes:
            for field, value in counts.items():
                sums[f"{scope}_{field}"] += value
            if client is None:
                for field, value in _anonymous(counts).items():
                    sums[f"{scope}_{field}"] += value
            else:
                unit = self.units[(experiment, arm, client)]
                unit[f"{scope}_served"] += int(counts["served"])
                unit[f"{scope}_d"] += int(counts["labelled"])
                unit[f"{scope}_m"] += int(counts["correct"])
        self.labels[experiment] += int(counts["labelled"])
        if routed:
            epoch = self.epochs[(experiment, arm)]
            epoch["requests"] += 1
            epoch["served"] += counts["served"]
            if client is None:
                epoch["anonymous"] += counts["served"]
            elif counts["served"]:
                self.epoch_clients[(experiment, arm)].add(client)

    def apply(self, session: Session) -> None:
        """Write the batch: units first (their changes feed the arms), arms, strategies, SRM
        epochs, checkpoints; always in this order, so two writers lock rows in one order."""
        _apply_units(session, self.units, self.arms)
        for (experiment, arm), sums in sorted(self.arms.items()):
            deltas = _nonzero(sums)
            if deltas:
                _add(session, rollup_arms, {"experiment": experiment, "arm": arm}, deltas)
        for strategy, counts in sorted(self.strategies.items()):
            deltas = _nonzero(counts)
            if deltas:
                _add(session, rollup_strategies, {"strategy": strategy}, deltas)
        _apply_epochs(session, dict(sorted(self.epochs.items())), self.epoch_clients)
        _labels_added(session, self.labels)


def _shadow_run(session: Session, row: Mapping[str, Any]) -> None:
    """A shadow run's counts, against its served prediction and that one's verdict (if any)."""
    served = session.execute(
        select(Prediction.experiment, Prediction.class_index, Feedback.true_class_index)
        .outerjoin(Feedback, Feedback.prediction_id == Prediction.id)
        .where(Prediction.id == row["shadow_of"])
    ).first()
    if served is None or served.experiment is None:
        return
    ok = row.get("error") is None
    answer = row.get("class_index")
    labelled = ok and served.true_class_index is not None
    deltas = {
        "runs": 1,
        "errors": int(not ok),
        "agreement": int(ok and answer == served.class_index),
        "labelled": int(labelled),
        "correct": int(labelled and answer == served.true_class_index),
    }
    _add(session, rollup_shadows, {"experiment": served.experiment, "arm": row["arm"]}, deltas)


def record_predictions(
    session: Session,
    rows: Sequence[Mapping[str, Any]],
    verdicts: Mapping[int, int] | None = None,
) -> None:
    """Add written prediction rows (``Prediction`` columns; the row at index ``i`` of
    ``verdicts`` has a first verdict of that class) to the roll-ups, in the caller's
    transaction, after the rows themselves were inserted."""
    verdicts = verdicts or {}
    batch = _Batch()
    shadows = []
    for index, row in enumerate(rows):
        if row.get("shadow_of") is not None:
            shadows.append(row)
            continue
        true_class = verdicts.get(index)
        correct = None if true_class is None else row.get("class_index") == true_class
        batch.request(row, correct)
    batch.apply(session)
    for row in shadows:
        _shadow_run(session, row)


def record_verdict(
    session: Session, prediction: Prediction, before: int | None, after: int
) -> None:
    """The effective verdict of ``prediction`` went from true class ``before`` (None: it had
    none) to ``after``: move its counts, its unit's and its shadows', in the caller's
    transaction."""
    if prediction.shadow_of is not None:
        return
    _shadows_relabelled(session, prediction, before, after)
    if prediction.error is not None:
        return  # failed requests are never labelled outcomes
    was = before is not None and prediction.class_index == before
    now = prediction.class_index == after
    dd, dm = int(before is None), int(now) - int(was)
    if not dd and not dm:
        return
    batch = _Batch()
    batch.strategies[prediction.strategy].update(labelled=dd, correct=dm)
    experiment = experiment_of(
        {"experiment": prediction.experiment, "strategy": prediction.strategy}
    )
    if experiment is not None:
        routed = is_routed(prediction.route_reason)
        scopes = ROLLUP_SCOPES if routed else ROLLUP_SCOPES[:1]
        sums = batch.arms[(experiment, prediction.arm)]
        for scope in scopes:
            sums[f"{scope}_labelled"] += dd
            sums[f"{scope}_correct"] += dm
            if prediction.client_hash is None:  # its own unit: (d, m) from (d0, was) to (1, now)
                sums[f"{scope}_n"] += dd
                sums[f"{scope}_m_sum_squares"] += dm
                sums[f"{scope}_d_sum_squares"] += dd
                sums[f"{scope}_m_d_sum_of_products"] += dm
            else:
                unit = batch.units[(experiment, prediction.arm, prediction.client_hash)]
                unit[f"{scope}_d"] += dd
                unit[f"{scope}_m"] += dm
        batch.labels[experiment] += dd
    batch.apply(session)


def _shadows_relabelled(
    session: Session, prediction: Prediction, before: int | None, after: int
) -> None:
    """The successful shadow runs of a prediction whose verdict changed gain a label (or
    change whether they were right)."""
    if prediction.experiment is None:
        return
    runs = session.execute(
        select(Prediction.arm, Prediction.class_index).where(
            Prediction.shadow_of == prediction.id, Prediction.error.is_(None)
        )
    ).all()
    deltas: dict[str, Counts] = defaultdict(lambda: defaultdict(float))
    for arm, answer in runs:
        deltas[arm]["labelled"] += int(before is None)
        deltas[arm]["correct"] += int(answer == after) - int(
            before is not None and answer == before
        )
    for arm, counts in sorted(deltas.items()):
        changed = _nonzero(counts)
        if changed:
            key = {"experiment": prediction.experiment, "arm": arm}
            _add(session, rollup_shadows, key, changed)


# -- reads ---------------------------------------------------------------------------------


def _request_units(counts: Mapping[str, int]) -> dict[str, int]:
    """Unit-level numbers when every request is its own unit: they follow from the counts."""
    labelled, correct = counts["labelled"], counts["correct"]
    return {
        "units": counts["served"],
        "n": labelled,
        "m_sum": correct,
        "m_sum_squares": correct,
        "d_sum": labelled,
        "d_sum_squares": labelled,
        "m_d_sum_of_products": correct,
    }


def _numbers(row: Any, prefix: str, by_client: bool) -> dict[str, Any]:
    """One arm's numbers in one scope, in ``store.units.unit_scopes``' terms."""

    def get(field: str) -> Any:
        return getattr(row, f"{prefix}{field}")

    counts = {f: int(get(f)) for f in COUNT_FIELDS if f != "confidence_sum"}
    if by_client:
        numbers: dict[str, Any] = {f: int(get(f)) for f in UNIT_SUM_FIELDS}
        numbers.update(m_sum=counts["correct"], d_sum=counts["labelled"])
    else:
        numbers = _request_units(counts)
    numbers.update({f: counts[f] for f in ("requests", "served", "errors", "fallbacks")})
    numbers["labelled"], numbers["correct"] = counts["labelled"], counts["correct"]
    total, confidences = float(get("confidence_sum") or 0.0), counts["confidences"]
    numbers["sum_confidence"] = total
    numbers["mean_confidence"] = total / confidences if confidences else None
    return numbers


def arm_scopes(
    session: Session, experiment: str, *, by_client: bool = True
) -> dict[str, dict[str, dict[str, Any]]]:
    """``{scope: {arm: numbers}}`` for ``all`` traffic and the ``routed`` traffic, with the
    keys of ``store.units.unit_scopes`` (an arm appears in a scope when it has a request
    there): one primary-key read of a few rows."""
    rows = session.execute(select(rollup_arms).where(rollup_arms.c.experiment == experiment))
    out: dict[str, dict[str, dict[str, Any]]] = {scope: {} for scope in ROLLUP_SCOPES}
    for row in rows:
        for scope in ROLLUP_SCOPES:
            if getattr(row, f"{scope}_requests"):
                out[scope][row.arm] = _numbers(row, f"{scope}_", by_client)
    return out


def srm_units(session: Session, experiment: str, *, by_client: bool = True) -> dict[str, int]:
    """Units per arm with a served routed request in the current share epoch (an arm with
    routed requests there but none served shows 0)."""
    epoch = _share_epoch(session, experiment)
    rows = session.execute(
        select(rollup_epoch_arms).where(
            rollup_epoch_arms.c.experiment == experiment, rollup_epoch_arms.c.epoch == epoch
        )
    )
    return {
        row.arm: int(row.clients + row.anonymous if by_client else row.served)
        for row in rows
        if row.requests
    }


def strategy_outcomes(session: Session) -> dict[str, dict[str, Any]]:
    """``store.queries.strategy_outcomes``' numbers per requested strategy."""
    out = {}
    for row in session.execute(select(rollup_strategies)):
        counts = {f: int(getattr(row, f)) for f in COUNT_FIELDS if f != "confidence_sum"}
        total = float(row.confidence_sum or 0.0)
        out[row.strategy] = {
            **{f: counts[f] for f in ("requests", "served", "labelled", "correct")},
            "fallbacks": counts["fallbacks"],
            "errors": counts["errors"],
            "sum_confidence": total,
            "mean_confidence": total / counts["confidences"] if counts["confidences"] else None,
        }
    return out


def abstentions_by_strategy(session: Session) -> dict[str, dict[str, int]]:
    """``store.queries.abstentions_by_strategy``: answered and abstained per strategy."""
    rows = session.execute(
        select(
            rollup_strategies.c.strategy, rollup_strategies.c.served, rollup_strategies.c.abstained
        )
        .where(rollup_strategies.c.served > 0)
        .order_by(rollup_strategies.c.strategy)
    )
    return {
        row.strategy: {"answered": int(row.served), "abstained": int(row.abstained)} for row in rows
    }


def total_predictions(session: Session) -> int:
    """Every recorded request, failed ones included (shadow runs are not requests)."""
    return int(session.scalar(select(func.coalesce(func.sum(rollup_strategies.c.requests), 0))))


def shadow_outcomes(session: Session, experiment: str) -> dict[str, dict[str, Any]]:
    """``store.queries.shadow_outcomes``' counts per shadow model (runs, errors, agreement,
    labelled, correct); latencies come from ``store.queries.shadow_latency_percentiles``."""
    rows = session.execute(select(rollup_shadows).where(rollup_shadows.c.experiment == experiment))
    return {
        row.arm: {
            f: int(getattr(row, f)) for f in ("runs", "errors", "agreement", "labelled", "correct")
        }
        for row in rows
    }


def _checkpoint_stats(row: Any, by_client: bool) -> dict[str, int]:
    """``RATIO_FIELDS`` of one arm at a checkpoint (or from its live ``rollup_arms`` row)."""
    counts = {"served": 0, "labelled": int(row.all_labelled), "correct": int(row.all_correct)}
    if not by_client:
        stats = _request_units(counts)
        stats.pop("units")
        return stats
    return {
        "n": int(row.all_n),
        "m_sum": counts["correct"],
        "m_sum_squares": int(row.all_m_sum_squares),
        "d_sum": counts["labelled"],
        "d_sum_squares": int(row.all_d_sum_squares),
        "m_d_sum_of_products": int(row.all_m_d_sum_of_products),
    }


def _evenly(values: Sequence[int], count: int) -> list[int]:
    """At most ``count`` of ``values``, evenly spread, the last always among them."""
    if len(values) <= count:
        return list(values)
    step = len(values) / count
    return [values[min(len(values) - 1, round((i + 1) * step) - 1)] for i in range(count)]


def series(
    session: Session, experiment: str, points: int, *, by_client: bool = True
) -> list[dict[str, Any]]:
    """At most ``points`` cumulative states of each arm's ratio statistics, in order of the
    experiment's labels: ``{"labelled": labels so far, "arms": {arm: RATIO_FIELDS}}``, the last
    one now. Reads the checkpoints' keys down the primary key and ``points`` of them."""
    current = session.execute(
        select(rollup_arms).where(rollup_arms.c.experiment == experiment)
    ).all()
    now = {row.arm: _checkpoint_stats(row, by_client) for row in current if row.all_labelled}
    total = sum(stats["d_sum"] for stats in now.values())
    if not total:
        return []
    c = rollup_checkpoints.c
    marks = session.scalars(
        select(c.labelled)
        .where(c.experiment == experiment, c.labelled < total)
        .distinct()
        .order_by(c.labelled)
    ).all()
    chosen = _evenly([int(m) for m in marks], max(0, points - 1))
    out: list[dict[str, Any]] = []
    if chosen:
        rows = session.execute(
            select(rollup_checkpoints)
            .where(c.experiment == experiment, c.labelled.in_(chosen))
            .order_by(c.labelled, c.arm)
        )
        by_mark: dict[int, dict[str, dict[str, int]]] = defaultdict(dict)
        for row in rows:
            if row.all_labelled:
                by_mark[int(row.labelled)][row.arm] = _checkpoint_stats(row, by_client)
        out = [{"labelled": mark, "arms": by_mark[mark]} for mark in chosen if by_mark[mark]]
    out.append({"labelled": total, "arms": now})
    return out


def experiments_with_rollups(session: Session) -> Iterable[str]:
    """The experiments that have arm roll-ups (for verification tools)."""
    return session.scalars(select(rollup_arms.c.experiment).distinct()).all()
