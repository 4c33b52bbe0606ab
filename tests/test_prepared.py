"""``store.prepared`` against SQLAlchemy's own execution, on SQLite and Postgres: the same
stored values, the same defaults, and the same errors (an outage is an ``OperationalError``,
which the views answer with 503; a dropped connection is invalidated)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, bindparam, insert, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from store.db import make_engine
from store.migrate import upgrade
from store.models import Prediction, rollup_strategies
from store.prepared import Prepared, full_insert

pytestmark = pytest.mark.postgres

ROW: dict[str, Any] = {
    "strategy": "ab",
    "experiment": "ab",
    "arm": "boosting",
    "route_reason": "sticky",
    "model_version": "v1",
    "client_hash": "c" * 64,
    "image_sha256": "d" * 64,
    "features": {"width": 28, "background": "dark", "brightness": 0.2041},
    "canvas": bytes(range(256)) * 3 + bytes(16),
    "label": "Trouser",
    "class_index": 1,
    "confidence": 0.9950335008248256,
    "probabilities": {"T-shirt/top": 0.001175764018499766, "Trouser": 0.9950335008248256},
    "members": [{"name": "boosting-0", "weight": 1.5060326979415404}],
    "fallback": None,
    "degraded": ["stacking-1"],
    "latency_ms": 4.964,
    "members_used": None,
    "abstained": True,
    "uncertainty": 0.002679,
    "created_at": datetime(2026, 12, 3, 17, 35, 25, 123456, tzinfo=UTC),
}


def _stored(session: Session, prediction_id: str) -> dict[str, Any]:
    row = session.get(Prediction, prediction_id)
    assert row is not None
    return {c.name: getattr(row, c.key) for c in Prediction.__table__.columns if c.name != "id"}


def test_a_prepared_insert_stores_what_a_core_insert_stores(engine: Engine) -> None:
    with Session(engine) as session:
        session.execute(insert(Prediction.__table__), {**ROW, "id": "core"})
        full_insert(Prediction.__table__).run(session.connection(), {**ROW, "id": "prepared"})
        session.commit()
    with Session(engine) as session:
        core, prepared = _stored(session, "core"), _stored(session, "prepared")
    assert prepared == core
    assert prepared["created_at"] == ROW["created_at"]  # UTC kept, microseconds too
    assert prepared["features"] == ROW["features"] and prepared["canvas"] == ROW["canvas"]


def test_left_out_columns_take_the_columns_python_defaults(engine: Engine) -> None:
    minimal = {"strategy": "bagging", "arm": "bagging", "latency_ms": 1.0, "model_version": "v1"}
    minimal["image_sha256"] = "d" * 64
    with Session(engine) as session:
        session.execute(insert(Prediction.__table__), {**minimal, "id": "core"})
        full_insert(Prediction.__table__).run(session.connection(), minimal)
        session.commit()
    with Session(engine) as session:
        rows = session.scalars(select(Prediction).order_by(Prediction.id != "core")).all()
    core, prepared = rows
    assert len(prepared.id) == 32 and prepared.id != core.id
    assert (prepared.members, prepared.degraded, prepared.abstained) == ([], [], False)
    assert (core.members, core.degraded, core.abstained) == ([], [], False)
    assert abs((prepared.created_at - core.created_at).total_seconds()) < 60
    assert prepared.label is None and prepared.features is None


def test_rows_come_back_by_column_name(engine: Engine) -> None:
    counts = Prepared(
        select(rollup_strategies.c.strategy, rollup_strategies.c.requests).where(
            rollup_strategies.c.strategy == bindparam("strategy")
        )
    )
    with Session(engine) as session:
        session.execute(insert(rollup_strategies), {"strategy": "bagging", "requests": 7})
        rows = counts.rows(session.connection(), {"strategy": "bagging"})
        assert counts.rows(session.connection(), {"strategy": "boosting"}) == []
    assert [(row.strategy, row.requests) for row in rows] == [("bagging", 7)]


def test_a_constraint_violation_is_sqlalchemys_integrity_error(engine: Engine) -> None:
    prepared = full_insert(Prediction.__table__)
    with Session(engine) as session:
        prepared.run(session.connection(), {**ROW, "id": "twice"})
        with pytest.raises(IntegrityError) as raised:
            prepared.run(session.connection(), {**ROW, "id": "twice"})
        session.rollback()
    assert isinstance(raised.value.orig, sqlite3.IntegrityError | psycopg.IntegrityError)


def test_a_locked_sqlite_database_is_an_operational_error(tmp_path) -> None:
    """Another writer holding the database past the busy timeout: the outage the API
    answers with 503 (``views/errors.py``)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'locked.db'}")
    upgrade(engine)
    holder = sqlite3.connect(tmp_path / "locked.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with Session(engine) as session:
            session.connection().exec_driver_sql("PRAGMA busy_timeout = 0")
            with pytest.raises(OperationalError, match="locked"):
                full_insert(Prediction.__table__).run(session.connection(), ROW)
            session.rollback()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        engine.dispose()


def test_a_dropped_postgres_connection_is_invalidated(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no server to drop the connection")
    with Session(engine) as session:
        connection = session.connection()
        pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        with engine.connect() as other:  # another pooled connection: the session holds its own
            other.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")
            other.commit()
        with pytest.raises(OperationalError) as raised:
            full_insert(Prediction.__table__).run(connection, ROW)
        assert raised.value.connection_invalidated
        session.rollback()
        # The pool hands out a working connection again.
        assert session.connection().exec_driver_sql("SELECT 1").scalar_one() == 1
