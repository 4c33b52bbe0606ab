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


def test_concurrent_writers_lose_no_records(tmp_path):
    """Separate engines, like separate gunicorn workers, writing into one SQLite file."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
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


def test_feedback_that_loses_the_insert_race_updates_the_winner(tmp_path):
    """Two workers give feedback on one prediction at once: one row, the later answer in it."""
    url = f"sqlite:///{tmp_path / 'race.db'}"
    ours, theirs = make_engine(url), make_engine(url)
    create_tables(ours)
    try:
        with Session(ours, expire_on_commit=False) as session, Session(theirs) as other:
            row = store.add_prediction(session, **ROW)
            raced: list[bool] = []

            @event.listens_for(session, "before_flush")
            def other_worker_inserts_first(*_args: object) -> None:
                if not raced:  # between our "no feedback yet" and our INSERT
                    raced.append(True)
                    other.add(store.Feedback(prediction_id=row.id, true_class_index=1,
                                             correct=False))
                    other.commit()

            feedback = store.record_feedback(session, row, 8)
            assert raced and (feedback.true_class_index, feedback.correct) == (8, True)
            stored = other.scalars(select(store.Feedback)).all()
            assert [(f.true_class_index, f.correct) for f in stored] == [(8, True)]
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
