"""Roll-ups kept on write (``store.rollups``) against the SQL aggregates over the rows
(``store.units``, ``store.queries``: the oracle) after a randomized history, through the real
write paths, the bulk path and the migration's backfill, on SQLite and Postgres."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import store
from experiments.stats import percentile
from store import queries, rollups
from store.bulk import add_predictions
from store.migrate import make_config, migration_connection, upgrade
from store.models import ExperimentEvent, rollup_checkpoints, utcnow
from store.units import RATIO_FIELDS
from tests.test_store_definitions import _experiment

pytestmark = pytest.mark.postgres

ARMS = ("bagging", "boosting", "stacking")
EXPERIMENTS = ("split", "other")
SHADOW = "cascade"
PAST = utcnow() - timedelta(days=1)


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as session:
        yield session


def _row(rng: random.Random, i: int, experiment: str | None, **fields: Any) -> dict[str, Any]:
    """A prediction as the recorder writes it."""
    failed = rng.random() < 0.06
    row = {
        "strategy": experiment or rng.choice([*ARMS, "ab"]),
        "experiment": experiment,
        "arm": rng.choice(ARMS),
        "label": None if failed else "x",
        "class_index": None if failed else rng.randrange(3),
        "confidence": None if failed else rng.random(),
        "fallback": {"reason": "meta"} if not failed and rng.random() < 0.1 else None,
        "latency_ms": 5 + rng.random() * 10,
        "model_version": "v1",
        "image_sha256": f"{i:064x}",
        "client_hash": rng.choice([None, None, *[f"c{k}" for k in range(12)]]),
        "error": "boom" if failed else None,
        "route_reason": rng.choice(["sticky", "sticky", "sticky", "paused", "completed", None]),
        # A failed row never abstains on the request path; one that says so must not count.
        "abstained": rng.random() < 0.2,
    }
    if row["strategy"] != experiment and experiment is None:
        row["arm"] = row["strategy"] if row["strategy"] != "ab" else row["arm"]
        row["route_reason"] = None
    row.update(fields)
    return row


def _past(i: int) -> datetime:
    """A distinct time in the past for bulk row ``i`` (the request path's rows are made now)."""
    return PAST + timedelta(milliseconds=i)


def _history(
    session: Session, rng: random.Random, requests: int = 250, create: tuple[str, ...] = EXPERIMENTS
) -> None:
    """Clients and anonymous requests, errors, fallbacks, pauses and decisions, share changes,
    first, later and capped verdicts, admin corrections, shadow runs and their verdicts, and
    first-release ``ab`` rows (strategy ``ab``, no experiment)."""
    for name in create:
        _experiment(session, name)
    for i in range(requests):
        experiment = rng.choice([*EXPERIMENTS, None])
        row = store.add_prediction(session, **_row(rng, i, experiment))
        if experiment and row.error is None and rng.random() < 0.15:
            shadow = _row(rng, i, experiment, arm=SHADOW, shadow_of=row.id, route_reason="shadow")
            store.add_prediction(session, **{**shadow, "client_hash": row.client_hash})
        if rng.random() < 0.6:
            store.record_feedback(session, row, rng.randrange(3), cap=8)
        if rng.random() < 0.1:  # a later verdict: kept, not counted
            store.record_feedback(session, row, rng.randrange(3), cap=8)
        if rng.random() < 0.08:
            store.correct_feedback(session, row, rng.randrange(3), actor="admin")
        if experiment and rng.random() < 0.02:
            kind = rng.choice([*rollups.SHARE_CHANGES, "paused"])
            store.update_experiment(session, experiment, actor="admin", kind=kind)


def _changed(session: Session, name: str) -> Any:
    """When the experiment's shares last changed (None: never)."""
    return session.scalar(
        select(func.max(ExperimentEvent.at)).where(
            ExperimentEvent.experiment == name, ExperimentEvent.kind.in_(rollups.SHARE_CHANGES)
        )
    )


def _close(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Equal numbers, the float sums to rounding."""
    assert a.keys() == b.keys()
    for arm in a:
        for key in ("sum_confidence", "mean_confidence"):
            x, y = a[arm].pop(key), b[arm].pop(key)
            assert (x is None) == (y is None) and (x is None or x == pytest.approx(y)), (arm, key)
        assert a[arm] == b[arm], arm


def assert_rollups_match_the_rows(session: Session) -> None:
    """Every roll-up read equals the same number aggregated over the rows."""
    session.rollback()
    for name in (*EXPERIMENTS, "ab"):
        for by_client in (True, False):
            oracle = store.unit_scopes(
                session,
                name,
                {"all": store.routing_scope(), "routed": store.routing_scope(routed_only=True)},
                by_client=by_client,
            )
            kept = store.arm_scopes(session, name, by_client=by_client)
            for scope in ("all", "routed"):
                _close(kept[scope], oracle[scope])
            srm = store.unit_scopes(
                session,
                name,
                {"srm": store.routing_scope(_changed(session, name), routed_only=True)},
                by_client=by_client,
                units_only=("srm",),
            )["srm"]
            assert store.srm_units(session, name, by_client=by_client) == {
                arm: o["units"] for arm, o in srm.items()
            }
            points = store.series(session, name, 50, by_client=by_client)
            if points:
                last = points[-1]["arms"]
                assert last == {
                    arm: {k: o[k] for k in RATIO_FIELDS}
                    for arm, o in kept["all"].items()
                    if o["labelled"]
                }
                assert len(points) <= 50
                marks = [p["labelled"] for p in points]
                assert marks == sorted(set(marks))
        shadows = queries.shadow_outcomes(session, name)
        latencies = {arm: shadows[arm].pop("latencies") for arm in shadows}
        assert rollups.shadow_outcomes(session, name) == shadows
        kept_latencies = queries.shadow_latency_percentiles(session, name, list(shadows), 9)
        assert kept_latencies == {arm: _window(v[:9], (50,)) for arm, v in latencies.items()}
        arms = [*ARMS, "nobody"]
        newest = queries.recent_latencies(session, name, arms, 9)
        assert queries.arm_latency_percentiles(session, name, arms, 9) == {
            arm: _window(v, (50, 95)) for arm, v in newest.items()
        }
    _close(rollups.strategy_outcomes(session), queries.strategy_outcomes(session))
    assert rollups.abstentions_by_strategy(session) == queries.abstentions_by_strategy(session)
    assert rollups.total_predictions(session) == queries.total_predictions(session)
    newest = queries.strategy_latencies(session)
    assert queries.strategy_latency_percentiles(session, 7) == {
        k: _window(v[:7], (50, 95)) for k, v in newest.items()
    }
    session.rollback()


def _window(latencies: list[float], qs: tuple[int, ...]) -> dict[Any, Any]:
    """What a latency window's summary must say, from its rows in Python."""
    return {"samples": len(latencies), **{q: percentile(latencies, q) for q in qs}}


@pytest.mark.parametrize("seed", [1, 2])
def test_rollups_kept_on_write_equal_the_row_aggregates(session, seed):
    _history(session, random.Random(seed))
    assert_rollups_match_the_rows(session)
    _checkpoints(session)
    assert store.series(session, "split", 50)  # the history was labelled


def test_series_checkpoints_every_hundred_labels_and_downsample_to_the_points(session):
    _experiment(session, "split")
    rng = random.Random(5)
    rows = [_row(rng, i, "split", route_reason="sticky", created_at=_past(i)) for i in range(2500)]
    verdicts = {i: rng.randrange(3) for i in range(len(rows)) if rng.random() < 0.5}
    for start in range(0, len(rows), 500):
        chunk = rows[start : start + 500]
        add_predictions(
            session, chunk, {i - start: c for i, c in verdicts.items() if start <= i < start + 500}
        )
    marks = session.scalars(select(rollup_checkpoints.c.labelled).distinct()).all()
    assert len(marks) == 5  # one per chunk: each adds more than CHECKPOINT_LABELS labels
    points = store.series(session, "split", 4)
    assert len(points) == 4 and points[-1]["labelled"] == sum(
        o["labelled"] for o in store.arm_scopes(session, "split")["all"].values()
    )
    assert_rollups_match_the_rows(session)


def test_the_bulk_path_keeps_the_rollups_exact(session):
    _experiment(session, "split")
    _experiment(session, "other")
    rng = random.Random(3)
    for chunk in range(4):
        rows = [
            _row(
                rng,
                chunk * 300 + i,
                rng.choice([*EXPERIMENTS, None]),
                created_at=_past(chunk * 300 + i),
            )
            for i in range(300)
        ]
        verdicts = {i: rng.randrange(3) for i in range(len(rows)) if rng.random() < 0.4}
        add_predictions(session, rows, verdicts)
    # and the request path on top of the bulk rows: units seen in bulk gain requests and labels
    for i in range(100):
        row = store.add_prediction(session, **_row(rng, 5000 + i, rng.choice(EXPERIMENTS)))
        store.record_feedback(session, row, rng.randrange(3))
    assert_rollups_match_the_rows(session)


def _checkpoints(session: Session) -> dict[str, list[int]]:
    """Each experiment's checkpoint marks: one per label up to ``DENSE_LABELS``, then one per
    ``CHECKPOINT_LABELS`` labels."""
    c = rollup_checkpoints.c
    out = {}
    for name in (*EXPERIMENTS, "ab"):
        marks = session.scalars(
            select(c.labelled).where(c.experiment == name).distinct().order_by(c.labelled)
        ).all()
        labelled = sum(o["labelled"] for o in store.arm_scopes(session, name)["all"].values())
        step = rollups.CHECKPOINT_LABELS
        dense = range(1, min(rollups.DENSE_LABELS, labelled) + 1)
        assert list(marks) == sorted({*dense, *range(step, labelled + 1, step)}), name
        out[name] = list(marks)
    return out


#: The migration that creates and backfills the roll-ups.
ROLLUPS = "0007"


def _before_rollups(engine: Engine) -> None:
    """Downgrade to the revision before the roll-ups' (their tables dropped, rows kept)."""
    previous = ScriptDirectory.from_config(make_config()).get_revision(ROLLUPS).down_revision
    assert isinstance(previous, str)
    with migration_connection(engine) as connection:
        command.downgrade(make_config(connection=connection), previous)


def test_the_migration_backfills_the_rollups_from_the_rows(engine, session):
    _experiment(session, "split")
    rng = random.Random(11)
    bulk = [
        _row(rng, i, rng.choice(["split", "other", None]), created_at=_past(i)) for i in range(1500)
    ]
    add_predictions(session, bulk, {i: rng.randrange(3) for i in range(0, 1500, 2)})
    _history(session, rng, requests=150, create=("other",))
    session.close()
    _before_rollups(engine)
    upgrade(engine)
    with Session(engine) as fresh:
        assert_rollups_match_the_rows(fresh)
        # replayed in the order the predictions were made: one checkpoint per 100 labels
        assert any(_checkpoints(fresh).values())


def test_a_failed_write_leaves_the_rollups_untouched(session):
    """The roll-ups are in the prediction's transaction: a row that fails to insert (here a
    duplicate id) adds nothing to them."""
    _experiment(session, "split")
    rng = random.Random(9)
    row = store.add_prediction(session, **_row(rng, 0, "split", error=None, class_index=1))
    taken = row.id
    before = store.arm_scopes(session, "split")
    session.rollback()
    session.expunge_all()  # so the duplicate reaches the database
    with pytest.raises(IntegrityError):
        store.add_prediction(session, **_row(rng, 1, "split", id=taken))
    assert store.arm_scopes(session, "split") == before
    assert_rollups_match_the_rows(session)


def test_lost_rollups_are_rebuilt_by_the_migration(engine, session):
    """A database whose roll-ups were lost (e.g. restored from rows alone) is rebuilt by
    downgrading and upgrading the one migration."""
    _history(session, random.Random(12), requests=150)
    for table in store.Base.metadata.sorted_tables:
        if table.name.startswith("rollup_"):
            session.execute(delete(table))
    session.commit()
    session.close()
    _before_rollups(engine)
    upgrade(engine)
    with Session(engine) as fresh:
        assert_rollups_match_the_rows(fresh)


def test_concurrent_writers_keep_the_rollups_exact(engine, session):
    """Four writers at once (each its own connection, as workers are), predictions and verdicts
    of shared clients interleaved: every upsert adds to the row, none is lost."""
    _experiment(session, "split")
    session.close()
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def work(seed: int) -> None:
        rng = random.Random(seed)
        with Session(engine, expire_on_commit=False) as mine:
            try:
                barrier.wait()
                for i in range(40):
                    row = store.add_prediction(mine, **_row(rng, seed * 1000 + i, "split"))
                    if rng.random() < 0.7:
                        store.record_feedback(mine, row, rng.randrange(3))
            except BaseException as exc:  # surfaced below
                errors.append(exc)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    with Session(engine) as fresh:
        assert sum(o["requests"] for o in store.arm_scopes(fresh, "split")["all"].values()) == 160
        assert_rollups_match_the_rows(fresh)
