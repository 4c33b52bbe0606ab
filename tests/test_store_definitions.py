"""Ensembles, experiments and their events in the store, and the statistics inputs from SQL."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, delete, func, select
from sqlalchemy.orm import Session

import store
from store.db import make_engine
from store.migrate import drop_everything, upgrade
from store.models import EnsembleRow, ExperimentEvent, ExperimentRow, Prediction
from tests.postgres import Database

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
LIGHT_VOTE = {
    "name": "light-vote",
    "strategy": "ensemble",
    "aggregation": "weighted_average",
    "models": [{"model_id": "bagging-0", "weight": 0.6}, {"model_id": "boosting-1", "weight": 0.4}],
}
SPLIT = {
    "name": "split",
    "strategy": "weighted",
    "models": [{"model_id": "bagging", "weight": 0.5}, {"model_id": "boosting", "weight": 0.5}],
}


#: Every test here runs on SQLite and on a fresh PostgreSQL database (conftest's ``database``).
pytestmark = pytest.mark.postgres


@pytest.fixture
def engines(database: Database) -> Iterator[Callable[[], Engine]]:
    """Engines on one migrated database, like one per gunicorn worker."""
    url = database.url()
    made: list[Engine] = []

    def make() -> Engine:
        made.append(make_engine(url))
        if len(made) == 1:
            upgrade(made[0])
        return made[-1]

    yield make
    for engine in made:
        engine.dispose()


@pytest.fixture
def session(engines: Callable[[], Engine]) -> Iterator[Session]:
    with Session(engines(), expire_on_commit=False) as session:
        yield session


def _experiment(session: Session, name: str = "split", **overrides: Any) -> ExperimentRow:
    fields: dict[str, Any] = {
        "kind": "experiment",
        "name": name,
        "definition": {**SPLIT, "name": name},
        "actor": "admin",
        "router": "weighted",
        "state": {"weights": {"bagging": 0.5, "boosting": 0.5}},
        "control": "bagging",
    }
    fields.update(overrides)
    row = store.create_definition(session, **fields)
    assert isinstance(row, ExperimentRow)
    return row


def _predict(session: Session, seconds: float, arm: str, **fields: Any) -> Prediction:
    """A served (or, with shadow_of, a shadow) prediction at T0 + seconds."""
    row: dict[str, Any] = {
        "strategy": "split",
        "experiment": "split",
        "arm": arm,
        "label": "x",
        "class_index": 1,
        "confidence": 0.5,
        "latency_ms": 10.0,
        "model_version": "v1",
        "image_sha256": "0" * 64,
        "created_at": T0 + timedelta(seconds=seconds),
    }
    row.update(fields)
    return store.add_prediction(session, **row)


def _run_together(count: int, work: Callable[[int], None]) -> list[BaseException]:
    """Run ``work(i)`` in ``count`` threads at once; the exceptions they raised."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def run(index: int) -> None:
        try:
            barrier.wait()
            work(index)
        except BaseException as exc:  # surfaced by the caller
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


# --- definitions -------------------------------------------------------------------------------


def test_create_and_read_back_both_kinds(session):
    ensemble = store.create_definition(
        session,
        kind="ensemble",
        name="light-vote",
        definition=LIGHT_VOTE,
        actor="admin",
        model_version="v1",
    )
    experiment = _experiment(session)
    assert (ensemble.kind, ensemble.status, ensemble.model_version) == ("ensemble", "active", "v1")
    assert (experiment.kind, experiment.status, experiment.revision) == ("experiment", "running", 1)
    assert (experiment.rr_counter, experiment.builtin, experiment.ended_at) == (0, False, None)
    assert experiment.started_at == experiment.created_at
    session.expire_all()
    assert store.get_ensemble(session, "light-vote").definition == LIGHT_VOTE
    assert store.get_experiment(session, "split").state == {
        "weights": {"bagging": 0.5, "boosting": 0.5}
    }
    assert store.get_ensemble(session, "split") is None
    assert store.get_experiment(session, "nope") is None
    ensembles, experiments = store.list_definitions(session)
    assert [row.name for row in ensembles] == ["light-vote"]
    assert [row.name for row in experiments] == ["split"]
    created = store.experiment_events(session, "split")
    assert [(event.kind, event.actor, event.before) for event in created] == [
        ("created", "admin", None)
    ]
    assert created[0].after["router"] == "weighted"
    assert store.experiment_events(session, "light-vote")[0].after["kind"] == "ensemble"


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("ensemble", "experiment"),
        ("experiment", "ensemble"),
        ("ensemble", "ensemble"),
        ("experiment", "experiment"),
    ],
)
def test_a_name_is_unique_across_ensembles_and_experiments(session, first, second):
    def create(kind: str) -> None:
        if kind == "ensemble":
            store.create_definition(
                session, kind="ensemble", name="taken", definition=LIGHT_VOTE, actor="a"
            )
        else:
            _experiment(session, "taken")

    create(first)
    with pytest.raises(store.NameTakenError) as caught:
        create(second)
    assert caught.value.name == "taken"
    count = session.scalar(select(func.count()).select_from(EnsembleRow)) + session.scalar(
        select(func.count()).select_from(ExperimentRow)
    )
    assert count == 1
    assert len(store.experiment_events(session, "taken")) == 1  # no event for the refused one


def test_a_name_this_session_has_loaded_is_taken_too(engines):
    ours, theirs = engines(), engines()
    with Session(ours, expire_on_commit=False) as session, Session(theirs) as other:
        _experiment(session, "x")
        assert store.get_experiment(session, "x") is not None
        with pytest.raises(store.NameTakenError):
            _experiment(session, "x")
        store.delete_definition(other, "x", "admin")  # our session still holds its copy
        assert _experiment(session, "x").revision == 1


def test_creators_racing_for_one_name_in_both_tables_leave_exactly_one(engines):
    """Workers create 'x' at once, half as ensembles and half as experiments: one wins."""
    workers = [engines() for _ in range(6)]
    won: list[str] = []

    def create(index: int) -> None:
        with Session(workers[index]) as session:
            try:
                if index % 2:
                    _experiment(session, "x")
                else:
                    store.create_definition(
                        session, kind="ensemble", name="x", definition=LIGHT_VOTE, actor="a"
                    )
                won.append("experiment" if index % 2 else "ensemble")
            except store.NameTakenError:
                pass

    assert _run_together(len(workers), create) == []
    assert len(won) == 1
    with Session(workers[0]) as session:
        ensembles, experiments = store.list_definitions(session)
        assert len(ensembles) + len(experiments) == 1
        assert [event.kind for event in store.experiment_events(session, "x")] == ["created"]


def test_invalid_creations_are_refused_before_the_database(session):
    with pytest.raises(ValueError, match="router and a control"):
        store.create_definition(session, kind="experiment", name="e", definition={}, actor="a")
    with pytest.raises(ValueError, match="status is one of"):
        store.create_definition(
            session, kind="ensemble", name="e", definition={}, actor="a", status="running"
        )
    with pytest.raises(ValueError, match="at most 64 characters"):
        store.create_definition(session, kind="ensemble", name="e" * 65, definition={}, actor="a")
    with pytest.raises(ValueError, match="kind is one of"):
        store.create_definition(session, kind="member", name="e", definition={}, actor="a")
    assert store.list_definitions(session) == ([], [])


def test_update_experiment_records_the_change_and_bumps_the_revision(session):
    _experiment(session)
    ended = T0 + timedelta(hours=1)
    row = store.update_experiment(
        session,
        "split",
        actor="alice",
        kind="weights_changed",
        reason="more boosting",
        state={"weights": {"bagging": 0.2, "boosting": 0.8}},
    )
    assert row.revision == 2 and row.state["weights"]["boosting"] == 0.8
    row = store.update_experiment(
        session,
        "split",
        actor="bob",
        kind="promoted",
        expected_revision=2,
        status="completed",
        decision={"status": "promoted", "model": "boosting"},
        ended_at=ended,
    )
    assert (row.revision, row.status, row.ended_at) == (3, "completed", ended)
    newest, weights, created = store.experiment_events(session, "split")
    assert (weights.kind, weights.actor, weights.reason) == (
        "weights_changed",
        "alice",
        "more boosting",
    )
    assert weights.before == {"state": {"weights": {"bagging": 0.5, "boosting": 0.5}}}
    assert weights.after == {"state": {"weights": {"bagging": 0.2, "boosting": 0.8}}}
    assert newest.kind == "promoted" and created.kind == "created"
    assert newest.before == {"status": "running", "decision": None, "ended_at": None}
    assert newest.after == {
        "status": "completed",
        "decision": {"status": "promoted", "model": "boosting"},
        "ended_at": ended.isoformat(),
    }
    session.expire_all()
    again = store.get_experiment(session, "split")
    assert (again.revision, again.decision["model"], again.ended_at) == (3, "boosting", ended)


def test_a_stale_expected_revision_is_a_concurrent_change(session):
    _experiment(session)
    store.update_experiment(
        session, "split", actor="a", kind="paused", expected_revision=1, status="paused"
    )
    with pytest.raises(store.ConcurrentChangeError) as caught:
        store.update_experiment(
            session, "split", actor="b", kind="resumed", expected_revision=1, status="running"
        )
    assert (caught.value.expected, caught.value.actual) == (1, 2)
    row = store.get_experiment(session, "split")
    assert (row.status, row.revision) == ("paused", 2)  # the refused change left no trace
    assert [event.kind for event in store.experiment_events(session, "split")] == [
        "paused",
        "created",
    ]


def test_update_experiment_refuses_unknown_names_fields_and_statuses(session):
    with pytest.raises(store.DefinitionNotFound):
        store.update_experiment(session, "nope", actor="a", kind="paused", status="paused")
    _experiment(session)
    with pytest.raises(TypeError, match="cannot change router"):
        store.update_experiment(session, "split", actor="a", kind="x", router="random")
    with pytest.raises(ValueError, match="status is one of"):
        store.update_experiment(session, "split", actor="a", kind="x", status="done")
    assert store.get_experiment(session, "split").revision == 1


def test_concurrent_updates_each_get_their_own_revision(engines):
    """Workers changing one experiment at once: no lost update, one event per change."""
    workers = [engines() for _ in range(4)]
    with Session(workers[0]) as session:
        _experiment(session)

    def change(index: int) -> None:
        with Session(workers[index]) as session:
            for step in range(5):
                store.update_experiment(
                    session,
                    "split",
                    actor=f"w{index}",
                    kind="weights_changed",
                    state={"weights": {"bagging": index, "boosting": step}},
                )

    assert _run_together(len(workers), change) == []
    with Session(workers[0]) as session:
        assert store.get_experiment(session, "split").revision == 21
        events = store.experiment_events(session, "split")
        assert len(events) == 21
        # Each event's "before" is the previous event's "after": every change saw the last one.
        changes = list(reversed(events[:-1]))
        for earlier, later in zip(changes, changes[1:], strict=False):
            assert later.before == earlier.after


def test_reads_see_other_workers_changes_not_the_session_cache(engines):
    ours, theirs = engines(), engines()
    with Session(ours, expire_on_commit=False) as reader, Session(theirs) as writer:
        _experiment(writer)
        assert store.get_experiment(reader, "split").revision == 1
        store.update_experiment(writer, "split", actor="a", kind="paused", status="paused")
        assert store.get_experiment(reader, "split").status == "paused"
        assert store.list_definitions(reader)[1][0].revision == 2


def test_delete_definition_keeps_the_events_and_frees_the_name(session):
    store.create_definition(
        session, kind="ensemble", name="light-vote", definition=LIGHT_VOTE, actor="admin"
    )
    _experiment(session)
    assert store.delete_definition(session, "light-vote", "admin") is True
    assert store.delete_definition(session, "split", "admin") is True
    assert store.delete_definition(session, "split", "admin") is False
    assert store.list_definitions(session) == ([], [])
    deleted, created = store.experiment_events(session, "split")
    assert (deleted.kind, deleted.actor) == ("deleted", "admin")
    assert deleted.before["control"] == "bagging" and deleted.after is None
    store.create_definition(session, kind="ensemble", name="split", definition={}, actor="a")


def test_update_ensemble_status(session):
    store.create_definition(
        session, kind="ensemble", name="light-vote", definition=LIGHT_VOTE, actor="admin"
    )
    row = store.update_ensemble_status(session, "light-vote", "paused", "system")
    assert row.status == "paused"
    store.update_ensemble_status(session, "light-vote", "active", "admin")
    resumed, paused, _created = store.experiment_events(session, "light-vote")
    assert (paused.kind, paused.before, paused.after) == (
        "paused",
        {"status": "active"},
        {"status": "paused"},
    )
    assert (resumed.kind, resumed.actor) == ("resumed", "admin")
    with pytest.raises(ValueError, match="status is one of"):
        store.update_ensemble_status(session, "light-vote", "running", "admin")
    with pytest.raises(store.DefinitionNotFound):
        store.update_ensemble_status(session, "nope", "paused", "admin")


def test_events_are_newest_first_and_limited(session):
    _experiment(session)
    for step in range(5):
        store.update_experiment(session, "split", actor="a", kind=f"step-{step}", state={})
    kinds = [event.kind for event in store.experiment_events(session, "split", limit=3)]
    assert kinds == ["step-4", "step-3", "step-2"]


@pytest.mark.parametrize("returning", [True, False], ids=["returning", "update-then-select"])
def test_next_ticket_under_concurrent_workers(engines, returning):
    """Four workers taking 25 tickets each get 0..99: no ticket twice, none skipped."""
    workers = [engines() for _ in range(4)]
    for engine in workers:
        engine.dialect.update_returning = returning  # the fallback for SQLite < 3.35
    with Session(workers[0]) as session:
        _experiment(session, "rr", router="round_robin")
    tickets: list[int] = []

    def take(index: int) -> None:
        with Session(workers[index]) as session:
            for _ in range(25):
                tickets.append(store.next_ticket(session, "rr"))

    assert _run_together(len(workers), take) == []
    assert sorted(tickets) == list(range(100))
    with Session(workers[0]) as session:
        assert store.get_experiment(session, "rr").rr_counter == 100
        with pytest.raises(store.DefinitionNotFound):
            store.next_ticket(session, "nope")


def test_ensure_builtin_experiment_is_idempotent(session):
    args = (
        "ab",
        {"name": "ab", "strategy": "random"},
        "random",
        {"weights": {"bagging": 0.5, "boosting": 0.5}},
        "bagging",
    )
    row = store.ensure_builtin_experiment(session, *args)
    assert row.builtin is True and row.created_by == "system"
    store.update_experiment(
        session,
        "ab",
        actor="admin",
        kind="weights_changed",
        state={"weights": {"bagging": 0.1, "boosting": 0.9}},
    )
    again = store.ensure_builtin_experiment(session, *args)
    assert again.state["weights"]["boosting"] == 0.9  # left untouched
    assert again.revision == 2
    assert [event.kind for event in store.experiment_events(session, "ab")] == [
        "weights_changed",
        "created",
    ]


def test_ensure_builtin_experiment_from_workers_starting_together(engines):
    workers = [engines() for _ in range(4)]
    rows: list[ExperimentRow] = []

    def ensure(index: int) -> None:
        with Session(workers[index], expire_on_commit=False) as session:
            rows.append(
                store.ensure_builtin_experiment(
                    session, "ab", {"name": "ab"}, "random", {}, "bagging"
                )
            )

    assert _run_together(len(workers), ensure) == []
    assert [row.name for row in rows] == ["ab"] * 4
    with Session(workers[0]) as session:
        assert len(store.list_definitions(session)[1]) == 1
        assert len(store.experiment_events(session, "ab")) == 1


def test_ensure_builtin_experiment_when_an_ensemble_holds_the_name(session):
    store.create_definition(session, kind="ensemble", name="ab", definition={}, actor="a")
    with pytest.raises(store.NameTakenError):
        store.ensure_builtin_experiment(session, "ab", {}, "random", {}, "bagging")


# --- predictions and statistics inputs ---------------------------------------------------------


def test_add_prediction_stores_the_routing_columns(session):
    name = "e" * 63
    served = _predict(
        session,
        0,
        name,
        strategy=name,
        experiment=name,
        members_used=2,
        route_reason="sticky",
        features={"width": 28, "segment": "enterprise"},
    )
    shadow = _predict(session, 1, "boosting", shadow_of=served.id, route_reason="shadow")
    session.expire_all()
    again = store.get_prediction(session, served.id)
    assert (again.strategy, again.arm, again.experiment) == (name, name, name)
    assert (again.members_used, again.route_reason, again.shadow_of) == (2, "sticky", None)
    assert again.features == {"width": 28, "segment": "enterprise"}
    assert [row.id for row in store.shadows_of(session, served.id)] == [shadow.id]
    assert store.shadows_of(session, shadow.id) == []


def test_record_prediction_stores_what_add_prediction_stores(session):
    """The request path's Core insert: every column as the ORM writes it (defaults included),
    the same roll-ups, committed."""
    from sqlalchemy import inspect as sa_inspect

    from store.queries import record_prediction

    fields = {
        "strategy": "ab",
        "experiment": "ab",
        "arm": "bagging",
        "label": "x",
        "class_index": 1,
        "confidence": 0.5,
        "probabilities": {"x": 0.5, "y": 0.5},
        "members": [{"name": "bagging-0", "label": "x", "weight": 1.0}],
        "fallback": None,
        "latency_ms": 10.0,
        "model_version": "v1",
        "client_hash": "c" * 64,
        "image_sha256": "0" * 64,
        "route_reason": "sticky",
        "features": {"width": 28},
        "canvas": bytes(range(28)) * 28,
        "uncertainty": 0.25,
    }
    orm = store.add_prediction(session, id="a" * 32, **fields)
    record_prediction(session, id="b" * 32, **fields)
    session.rollback()  # nothing pending: both were committed
    session.expire_all()
    columns = [c.key for c in sa_inspect(store.Prediction).columns if c.key != "id"]
    a, b = (store.get_prediction(session, i) for i in ("a" * 32, "b" * 32))
    assert orm.id == a.id
    differ = [c for c in columns if getattr(a, c) != getattr(b, c) and c != "created_at"]
    assert differ == []
    assert (b.degraded, b.abstained, b.created_at.tzinfo is not None) == ([], False, True)
    outcomes = store.arm_outcomes(session, "ab")
    assert outcomes["bagging"]["requests"] == 2


def test_shadow_runs_are_not_served_requests(session):
    served = _predict(session, 0, "bagging", strategy="ab", experiment="ab")
    _predict(session, 1, "boosting", strategy="ab", experiment="ab", shadow_of=served.id)
    assert store.total_predictions(session) == 1
    assert list(store.records_by(session, ab=True)) == ["bagging"]
    assert [row.id for row in store.recent_predictions(session)] == [served.id]


def test_deleting_a_served_prediction_deletes_its_shadows(session):
    served = _predict(session, 0, "bagging")
    _predict(session, 1, "boosting", shadow_of=served.id)
    session.execute(delete(Prediction).where(Prediction.id == served.id))
    session.commit()
    assert session.scalar(select(func.count()).select_from(Prediction)) == 0


def test_arm_outcomes_count_in_sql(session):
    rows = [
        _predict(session, 0, "bagging", class_index=1, confidence=0.8),
        _predict(
            session,
            1,
            "bagging",
            class_index=2,
            confidence=0.6,
            fallback={"reason": "r", "model": "m"},
        ),
        _predict(
            session,
            2,
            "bagging",
            class_index=None,
            confidence=None,
            label=None,
            error="NoMembersLeftError: dead",
        ),
        _predict(session, 3, "boosting", class_index=1, confidence=0.9),
    ]
    store.record_feedback(session, rows[0], 1)  # correct
    store.record_feedback(session, rows[1], 1)  # wrong
    store.record_feedback(session, rows[3], 1)  # correct
    _predict(session, 4, "boosting", shadow_of=rows[0].id, confidence=0.1)  # a shadow run
    _predict(session, 5, "bagging", experiment="other")
    _predict(session, 6, "bagging", experiment=None, strategy="bagging")
    outcomes = store.arm_outcomes(session, "split")
    assert outcomes["bagging"] == {
        "requests": 3,
        "served": 2,
        "labelled": 2,
        "correct": 1,
        "fallbacks": 1,
        "errors": 1,
        "sum_confidence": pytest.approx(1.4),
        "mean_confidence": pytest.approx(0.7),
    }
    assert outcomes["boosting"] == {
        "requests": 1,
        "served": 1,
        "labelled": 1,
        "correct": 1,
        "fallbacks": 0,
        "errors": 0,
        "sum_confidence": pytest.approx(0.9),
        "mean_confidence": pytest.approx(0.9),
    }
    assert store.arm_outcomes(session, "nope") == {}


def test_reward_window_takes_each_arms_last_labelled_predictions(session):
    # bagging: 5 labelled, the 2 oldest wrong and the 3 newest right, then 2 unlabelled newer.
    for second in range(5):
        row = _predict(session, second, "bagging", class_index=1)
        store.record_feedback(session, row, 1 if second >= 2 else 0)
    _predict(session, 10, "bagging")
    _predict(session, 11, "bagging")
    # boosting: 3 labelled, all wrong; a newer labelled-right shadow run must not count.
    for second in range(3):
        row = _predict(session, 20 + second, "boosting", class_index=1)
        store.record_feedback(session, row, 0)
    shadow = _predict(session, 30, "boosting", shadow_of=row.id)
    store.record_feedback(session, shadow, 1)
    failed = _predict(session, 31, "boosting", error="boom", class_index=None)
    store.record_feedback(session, failed, 1)

    assert store.reward_window(session, "split", 3) == {"bagging": (3, 3), "boosting": (3, 0)}
    assert store.reward_window(session, "split", 4) == {"bagging": (4, 3), "boosting": (3, 0)}
    assert store.reward_window(session, "split", 1000) == {"bagging": (5, 3), "boosting": (3, 0)}
    assert store.reward_window(session, "split", 1) == {"bagging": (1, 1), "boosting": (1, 0)}


def test_latency_window_and_arm_latencies_newest_first(session):
    for second in range(6):
        _predict(session, second, "bagging", latency_ms=float(second))
    _predict(session, 6, "bagging", latency_ms=99.0, error="boom", class_index=None)
    served = _predict(session, 7, "boosting", latency_ms=20.0)
    _predict(session, 8, "boosting", latency_ms=500.0, shadow_of=served.id)
    _predict(session, 9, "bagging", latency_ms=77.0, experiment="other")

    assert store.latency_window(session, "split", 3) == {
        "bagging": [5.0, 4.0, 3.0],
        "boosting": [20.0],
    }
    assert store.arm_latencies(session, "split") == {
        "bagging": [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],
        "boosting": [20.0],
    }
    assert store.arm_latencies(session, "split", limit=2)["bagging"] == [5.0, 4.0]


def test_shadow_outcomes_agreement_and_accuracy(session):
    # Four served predictions answering class 1; the true classes: 1, 2, (none), 1.
    served = [_predict(session, second, "bagging", class_index=1) for second in range(4)]
    store.record_feedback(session, served[0], 1)
    store.record_feedback(session, served[1], 2)
    store.record_feedback(session, served[3], 1)
    # "cand" shadows them all: agrees on 0 and 2, says 2 on 1 (right there), fails on 3.
    _predict(session, 10, "cand", class_index=1, latency_ms=5.0, shadow_of=served[0].id)
    _predict(session, 11, "cand", class_index=2, latency_ms=6.0, shadow_of=served[1].id)
    _predict(session, 12, "cand", class_index=1, latency_ms=7.0, shadow_of=served[2].id)
    _predict(
        session,
        13,
        "cand",
        class_index=None,
        label=None,
        latency_ms=8.0,
        error="boom",
        shadow_of=served[3].id,
    )
    # "other" shadows one prediction, agreeing and right.
    _predict(session, 14, "other", class_index=1, latency_ms=9.0, shadow_of=served[0].id)
    # A shadow of another experiment's prediction is not this experiment's.
    elsewhere = _predict(session, 15, "bagging", experiment="else")
    _predict(session, 16, "cand", shadow_of=elsewhere.id)

    outcomes = store.shadow_outcomes(session, "split")
    assert outcomes == {
        "cand": {
            "runs": 4,
            "errors": 1,
            "agreement": 2,
            "labelled": 2,
            "correct": 2,
            "latencies": [7.0, 6.0, 5.0],
        },
        "other": {
            "runs": 1,
            "errors": 0,
            "agreement": 1,
            "labelled": 1,
            "correct": 1,
            "latencies": [9.0],
        },
    }
    assert store.shadow_outcomes(session, "nope") == {}
    # Shadows never count as the experiment's served traffic.
    assert set(store.arm_outcomes(session, "split")) == {"bagging"}


def test_first_release_ab_rows_stay_part_of_ab(session):
    """Rows recorded before experiments existed (strategy ab, no experiment) count for ab."""
    legacy = _predict(session, 0, "bagging", strategy="ab", experiment=None, latency_ms=3.0)
    store.record_feedback(session, legacy, 1)
    routed = _predict(session, 1, "boosting", strategy="ab", experiment="ab", latency_ms=4.0)
    store.record_feedback(session, routed, 2)
    _predict(session, 2, "bagging", strategy="bagging", experiment=None)  # direct traffic
    _predict(session, 3, "old", strategy="split", experiment=None)  # not ab: not adopted
    outcomes = store.arm_outcomes(session, "ab")
    assert {arm: (o["served"], o["correct"]) for arm, o in outcomes.items()} == {
        "bagging": (1, 1),
        "boosting": (1, 0),
    }
    assert store.arm_latencies(session, "ab") == {"bagging": [3.0], "boosting": [4.0]}
    assert store.reward_window(session, "ab", 10) == {"bagging": (1, 1), "boosting": (1, 0)}
    points = store.accuracy_points(session)
    assert {arm: [ok for _at, ok in series] for arm, series in points.items()} == {
        "bagging": [True],
        "boosting": [False],
    }
    assert store.accuracy_points(session, "split") == {}
    assert set(store.arm_outcomes(session, "split")) == set()


def test_strategy_outcomes_and_latencies_cover_all_served_traffic(session):
    served = _predict(session, 0, "bagging", strategy="ab", experiment="ab", latency_ms=2.0)
    store.record_feedback(session, served, 1)
    _predict(session, 1, "boosting", strategy="ab", experiment="ab", latency_ms=5.0)
    _predict(session, 2, "bagging", strategy="bagging", experiment=None, latency_ms=1.0)
    _predict(
        session, 3, "bagging", strategy="bagging", experiment=None, error="boom", class_index=None
    )
    _predict(session, 4, "cand", strategy="ab", experiment="ab", shadow_of=served.id)
    outcomes = store.strategy_outcomes(session)
    assert {
        name: (o["requests"], o["served"], o["labelled"], o["errors"])
        for name, o in outcomes.items()
    } == {"ab": (2, 2, 1, 0), "bagging": (2, 1, 0, 1)}
    assert store.strategy_latencies(session) == {"ab": [5.0, 2.0], "bagging": [1.0]}
    assert store.strategy_latencies(session, limit=1) == {"ab": [5.0], "bagging": [1.0]}


def test_experiment_events_table_has_no_foreign_key(session):
    """Events outlive their experiment, and can be written for any name."""
    session.add(ExperimentEvent(experiment="gone", kind="deleted", actor="a"))
    session.commit()
    assert [event.kind for event in store.experiment_events(session, "gone")] == ["deleted"]


# --- verdicts: first counts, history kept, per-client cap, admin corrections --------------------


def _events(session: Session, prediction: Prediction) -> list[tuple[int, str, bool]]:
    return [
        (e.true_class_index, e.source, e.counted)
        for e in store.feedback_history(session, prediction.id)
    ]


def test_first_client_verdict_counts_and_later_ones_are_only_kept(session):
    row = _predict(session, 0, "bagging", client_hash="h" * 64)
    first = store.record_feedback(session, row, 1)
    later = store.record_feedback(session, row, 0)
    assert (first.correct, first.counted, first.outcome) == (True, True, "first")
    assert (later.correct, later.counted, later.outcome) == (False, False, "later")
    assert later.effective_correct is True
    assert _events(session, row) == [(1, "client", True), (0, "client", False)]
    history = store.feedback_history(session, row.id)
    assert {(e.scope, e.client_hash) for e in history} == {("split", "h" * 64)}
    assert store.arm_outcomes(session, "split")["bagging"]["correct"] == 1
    assert store.feedback_counts(session) == {"counted": 1, "uncounted": 1, "corrections": 0}


def test_a_client_counts_for_at_most_its_cap_per_experiment(session):
    mine = [_predict(session, i, "bagging", client_hash="a" * 64) for i in range(4)]
    other = _predict(session, 5, "boosting", client_hash="b" * 64)
    anonymous = [_predict(session, 6 + i, "boosting") for i in range(3)]
    elsewhere = _predict(session, 9, "bagging", client_hash="a" * 64, experiment="other")
    counted = [store.record_feedback(session, r, 1, cap=2).counted for r in mine]
    assert counted == [True, True, False, False]
    assert store.record_feedback(session, mine[3], 1, cap=2).outcome == "capped"
    assert store.record_feedback(session, other, 1, cap=2).counted
    assert all(store.record_feedback(session, r, 1, cap=2).counted for r in anonymous)
    assert store.record_feedback(session, elsewhere, 1, cap=2).counted
    outcomes = store.arm_outcomes(session, "split")
    assert (outcomes["bagging"]["labelled"], outcomes["boosting"]["labelled"]) == (2, 4)


def test_the_cap_is_exact_under_concurrent_writers(engines):
    workers = [engines() for _ in range(4)]
    with Session(workers[0], expire_on_commit=False) as session:
        rows = [_predict(session, i, "bagging", client_hash="c" * 64) for i in range(12)]

    def label(index: int) -> None:
        with Session(workers[index], expire_on_commit=False) as session:
            for row in rows[index::4]:
                store.record_feedback(session, session.get_one(Prediction, row.id), 1, cap=5)

    assert _run_together(len(workers), label) == []
    with Session(workers[0]) as session:
        assert session.scalar(select(func.count()).select_from(store.Feedback)) == 5
        assert store.feedback_counts(session)["uncounted"] == 7


def test_concurrent_verdicts_on_one_prediction_leave_one_effective_verdict(engines):
    workers = [engines() for _ in range(4)]
    with Session(workers[0], expire_on_commit=False) as session:
        row = _predict(session, 0, "bagging")

    def label(index: int) -> None:
        with Session(workers[index], expire_on_commit=False) as session:
            store.record_feedback(session, session.get_one(Prediction, row.id), index)

    assert _run_together(len(workers), label) == []
    with Session(workers[0]) as session:
        effective = session.scalars(select(store.Feedback)).all()
        history = store.feedback_history(session, row.id)
        assert len(effective) == 1 and len(history) == 4
        assert [e.counted for e in history].count(True) == 1
        (winner,) = [e for e in history if e.counted]
        assert effective[0].true_class_index == winner.true_class_index


def test_history_per_prediction_is_limited(session):
    row = _predict(session, 0, "bagging")
    for index in range(3):
        store.record_feedback(session, row, index, max_submissions=3)
    with pytest.raises(store.FeedbackLimitReached, match="3 verdicts"):
        store.record_feedback(session, row, 1, max_submissions=3)
    assert len(store.feedback_history(session, row.id)) == 3
    # An admin can still correct it.
    store.correct_feedback(session, row, 2, actor="admin")
    assert len(store.feedback_history(session, row.id)) == 4


def test_admin_corrections_replace_the_effective_verdict_and_are_listed(session):
    labelled = _predict(session, 0, "bagging", client_hash="d" * 64)
    unlabelled = _predict(session, 1, "boosting")
    store.record_feedback(session, labelled, 1)
    store.record_feedback(session, labelled, 0)
    fixed = store.correct_feedback(session, labelled, 0, actor="admin", note="looked again")
    assert (fixed.correct, fixed.counted, fixed.outcome) == (False, True, "corrected")
    store.correct_feedback(session, unlabelled, 1, actor="ops")
    session.expire_all()
    assert store.get_prediction(session, labelled.id).feedback.true_class_index == 0
    assert store.get_prediction(session, unlabelled.id).feedback.correct is True
    assert _events(session, labelled) == [
        (1, "client", True),
        (0, "client", False),
        (0, "admin", True),
    ]
    corrections = store.feedback_corrections(session)
    assert [(c["event"].actor, c["prediction"].id) for c in corrections] == [
        ("ops", unlabelled.id),
        ("admin", labelled.id),
    ]
    assert corrections[1]["event"].note == "looked again"
    conflicts = store.feedback_conflicts(session)
    assert [c["prediction"].id for c in conflicts] == [labelled.id]
    assert conflicts[0]["effective"].true_class_index == 0
    assert len(conflicts[0]["events"]) == 3
    assert store.feedback_counts(session) == {"counted": 1, "uncounted": 1, "corrections": 2}
    assert store.arm_outcomes(session, "split")["bagging"]["correct"] == 0


def test_verdicts_go_with_their_prediction(session):
    row = _predict(session, 0, "bagging")
    store.record_feedback(session, row, 1)
    session.execute(delete(Prediction).where(Prediction.id == row.id))
    session.commit()
    assert session.scalar(select(func.count()).select_from(store.FeedbackEvent)) == 0


def test_experiments_get_a_random_secret_key_the_events_never_record(session):
    first = _experiment(session, "one")
    second = _experiment(session, "two")
    chosen = _experiment(session, "three", assignment_key=b"k" * 32)
    assert len(first.assignment_key) == 32 and first.assignment_key != second.assignment_key
    assert chosen.assignment_key == b"k" * 32
    with pytest.raises(ValueError, match="assignment_key"):
        _experiment(session, "four", assignment_key=b"short")
    events = repr([(e.before, e.after) for e in store.experiment_events(session, "one")])
    assert first.assignment_key.hex() not in events and repr(first.assignment_key) not in events
    kept = store.ensure_builtin_experiment(
        session,
        "one",
        definition={},
        router="weighted",
        state={},
        control="bagging",
        assignment_key=b"n" * 32,
    )
    assert kept.assignment_key == first.assignment_key  # an existing experiment keeps its key


def test_migration_0003_keys_and_history_on_this_backend(engines):
    """0002 with data -> 0003 on SQLite and (when configured) Postgres."""
    from sqlalchemy import text

    engine = engines()
    drop_everything(engine)
    upgrade(engine, "0002")
    with engine.begin() as connection:
        for name in ("ab", "split"):
            connection.execute(
                text(
                    "INSERT INTO experiments (name, router, definition, state, status, control,"
                    " rr_counter, revision, builtin, created_by, created_at, updated_at,"
                    " started_at) VALUES (:name, 'weighted', '{}', '{}', 'running', 'bagging',"
                    " 0, 1, :builtin, 'system', :t, :t, :t)"
                ),
                {"name": name, "builtin": name == "ab", "t": T0},
            )
        connection.execute(
            text(
                "INSERT INTO predictions (id, created_at, strategy, arm, class_index, members,"
                " degraded, latency_ms, model_version, client_hash, image_sha256, experiment)"
                " VALUES (:id, :t, 'split', 'bagging', 1, '[]', '[]', 1.0, 'v', :h, :s, 'split')"
            ),
            {"id": "p" * 32, "t": T0, "h": "h" * 64, "s": "0" * 64},
        )
        connection.execute(
            text(
                "INSERT INTO feedback (prediction_id, true_class_index, correct, created_at)"
                " VALUES (:id, 1, :ok, :t)"
            ),
            {"id": "p" * 32, "ok": True, "t": T0},
        )
    upgrade(engine)
    with Session(engine) as session:
        keys = [row.assignment_key for row in store.list_definitions(session)[1]]
        assert len(keys) == 2 and len(set(keys)) == 2 and all(len(k) == 32 for k in keys)
        (event,) = store.feedback_history(session, "p" * 32)
        assert (event.source, event.counted, event.scope, event.client_hash) == (
            "client",
            True,
            "split",
            "h" * 64,
        )
        assert event.at == T0
