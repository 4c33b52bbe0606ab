"""The store under concurrent writers: several workers' records must all arrive."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import event, select
from sqlalchemy.orm import Session

import store
from store.db import DatabaseUrlError, create_tables, make_engine, parse_database_url

ROW = {
    "strategy": "ab",
    "arm": "bagging",
    "label": "Bag",
    "class_index": 8,
    "confidence": 0.9,
    "probabilities": {"Bag": 0.9},
    "members": [],
    "fallback": None,
    "degraded": [],
    "latency_ms": 1.0,
    "model_version": "test",
    "image_sha256": "0" * 64,
}
#: The tests that take ``database`` (or an app) run on SQLite and on PostgreSQL.
pytestmark = pytest.mark.postgres


def test_concurrent_writers_lose_no_records(database):
    """Separate engines, like separate gunicorn workers, writing into one database."""
    url = database.url()
    engines = [make_engine(url) for _ in range(4)]
    create_tables(engines[0])
    errors: list[BaseException] = []

    def worker(engine) -> None:
        try:
            with Session(engine) as session:
                for _ in range(25):
                    row = store.add_prediction(session, **ROW)
                    store.record_feedback(session, row, 8)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        with Session(engines[0]) as session:
            assert store.total_predictions(session) == 100
            assert len(store.records_by(session, ab=True)["bagging"]) == 100
    finally:
        for engine in engines:
            engine.dispose()


def test_in_memory_sqlite_is_shared_between_threads(make_app):
    app = make_app(DATABASE_URL="sqlite://")
    results = []

    def count() -> None:
        with app.app_context():
            results.append(store.total_predictions(store.get_session()))

    with app.app_context():
        store.add_prediction(store.get_session(), **ROW)
    thread = threading.Thread(target=count)
    thread.start()
    thread.join()
    assert results == [1]


def test_timestamps_come_back_in_utc(app):
    with app.app_context():
        row = store.add_prediction(store.get_session(), **ROW)
        store.get_session().expire_all()
        again = store.get_prediction(store.get_session(), row.id)
        assert again.created_at.utcoffset().total_seconds() == 0


def test_a_verdict_that_arrives_second_is_kept_and_the_first_counts(database):
    """Two workers give feedback on one prediction at once: one effective verdict, the first
    one; the second is in the history, not counted."""
    url = database.url()
    ours, theirs = make_engine(url), make_engine(url)
    create_tables(ours)
    try:
        with Session(ours, expire_on_commit=False) as session, Session(theirs) as other:
            row = store.add_prediction(session, **ROW)
            raced: list[bool] = []

            @event.listens_for(session, "before_flush")
            def other_worker_answers_first(*_args: object) -> None:
                if not raced:  # just before our first write
                    raced.append(True)
                    store.record_feedback(other, other.get(store.Prediction, row.id), 1)

            verdict = store.record_feedback(session, row, 8)
            assert raced and (verdict.true_class_index, verdict.correct) == (8, True)
            assert (verdict.counted, verdict.outcome, verdict.effective_correct) == (
                False,
                "later",
                False,
            )
            stored = other.scalars(select(store.Feedback)).all()
            assert [(f.true_class_index, f.correct) for f in stored] == [(1, False)]
            history = store.feedback_history(other, row.id)
            assert [(e.true_class_index, e.counted) for e in history] == [(1, True), (8, False)]
    finally:
        ours.dispose()
        theirs.dispose()


def test_feedback_that_loses_the_insert_race_is_kept_uncounted(database, monkeypatch):
    """The other worker's first verdict commits after ours looked: our INSERT of an effective
    verdict fails on the unique prediction id, and the retry keeps ours as a later one."""
    import store.feedback as feedback

    url = database.url()
    ours, theirs = make_engine(url), make_engine(url)
    create_tables(ours)
    real = feedback._effective
    looks: list[bool] = []

    def stale_first_look(session, prediction_id):
        looks.append(True)
        return None if len(looks) == 1 else real(session, prediction_id)

    try:
        with Session(ours, expire_on_commit=False) as session, Session(theirs) as other:
            row = store.add_prediction(session, **ROW)
            other.add(store.Feedback(prediction_id=row.id, true_class_index=1, correct=False))
            other.commit()
            monkeypatch.setattr(feedback, "_effective", stale_first_look)
            verdict = store.record_feedback(session, row, 8)
            assert len(looks) == 2 and (verdict.counted, verdict.outcome) == (False, "later")
            stored = other.scalars(select(store.Feedback)).all()
            assert [(f.true_class_index, f.correct) for f in stored] == [(1, False)]
            assert [e.counted for e in store.feedback_history(other, row.id)] == [False]
    finally:
        ours.dispose()
        theirs.dispose()


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("postgres://u:p@db/chorus", "postgresql+psycopg"),
        ("postgresql://u@db/chorus", "postgresql+psycopg"),
        ("postgresql+psycopg://u@db/chorus", "postgresql+psycopg"),
        ("postgresql+psycopg2://u@db/chorus", "postgresql+psycopg2"),
        ("sqlite:///instance/chorus.db", "sqlite"),
    ],
)
def test_postgres_urls_without_a_driver_mean_psycopg(url, driver):
    assert parse_database_url(url).drivername == driver


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "DATABASE_URL is not a database URL"),
        ("postgresql+nosuchdriver://u@db/chorus", "DATABASE_URL needs the"),
    ],
)
def test_unusable_database_urls_are_explained(url, message):
    with pytest.raises(DatabaseUrlError, match=message) as caught:
        make_engine(url)
    assert "postgresql+psycopg://" in str(caught.value)
