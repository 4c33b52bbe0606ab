"""Migrations: a first-release database upgrades in place, a fresh one matches the models."""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from flask import Flask
from sqlalchemy import Engine, delete, inspect
from sqlalchemy.orm import Session

import store
from experiments.routers import RoutingContext, build_router, initial_state
from experiments.spec import ab_definition
from store.db import make_engine
from store.migrate import (
    FIRST_RELEASE,
    MigrationError,
    current_revision,
    drop_everything,
    head_revision,
    make_config,
    migration_connection,
    upgrade,
)
from store.models import Base

#: The first release's schema exactly as its ``Base.metadata.create_all`` made it on SQLite
#: (``CreateTable``/``CreateIndex`` of its models compiled for the sqlite dialect; whitespace only
#: tidied). Frozen here so the upgrade is always tested against what is really deployed.
FIRST_RELEASE_DDL = """
CREATE TABLE predictions (
    id VARCHAR(32) NOT NULL,
    created_at DATETIME NOT NULL,
    strategy VARCHAR(16) NOT NULL,
    arm VARCHAR(16) NOT NULL,
    label VARCHAR(64),
    class_index INTEGER,
    confidence DOUBLE,
    probabilities JSON,
    members JSON NOT NULL,
    fallback JSON,
    degraded JSON NOT NULL,
    latency_ms DOUBLE NOT NULL,
    model_version VARCHAR(64) NOT NULL,
    client_hash VARCHAR(64),
    image_sha256 VARCHAR(64) NOT NULL,
    error TEXT,
    PRIMARY KEY (id)
);
CREATE INDEX ix_predictions_created_at ON predictions (created_at);
CREATE INDEX ix_predictions_strategy_arm ON predictions (strategy, arm);
CREATE TABLE feedback (
    id INTEGER NOT NULL,
    prediction_id VARCHAR(32) NOT NULL,
    true_class_index INTEGER NOT NULL,
    correct BOOLEAN NOT NULL,
    created_at DATETIME NOT NULL,
    PRIMARY KEY (id),
    UNIQUE (prediction_id),
    FOREIGN KEY(prediction_id) REFERENCES predictions (id) ON DELETE CASCADE
);
"""

ROOT = Path(__file__).resolve().parent.parent
#: The newest revision (what every upgrade below must end at).
HEAD = "0010"
#: Columns later revisions added to predictions, with what an upgraded first-release row holds.
NEW_PREDICTION_COLUMNS = {
    "experiment": None,
    "members_used": None,
    "shadow_of": None,
    "route_reason": None,
    "features": None,
    "canvas": None,
    "abstained": 0,
    "uncertainty": None,
}

#: First-release rows as its app wrote them (SQLite text timestamps, JSON as text), every kind:
#: labelled and not, an A/B arm, a fallback, a failed request, a client hash.
PREDICTIONS = [
    (
        "a" * 32,
        "2026-11-01 09:00:00.000001",
        "ab",
        "bagging",
        "Bag",
        8,
        0.91,
        json.dumps({"Bag": 0.91, "Coat": 0.09}),
        json.dumps([{"name": "bagging-0", "weight": 1}]),
        None,
        "[]",
        3.25,
        "fmnist-1",
        "c" * 64,
        "1" * 64,
        None,
    ),
    (
        "b" * 32,
        "2026-11-01 09:00:01.500000",
        "ab",
        "boosting",
        "Coat",
        4,
        0.5,
        json.dumps({"Bag": 0.5, "Coat": 0.5}),
        "[]",
        None,
        json.dumps(["boosting-2"]),
        4.0,
        "fmnist-1",
        None,
        "2" * 64,
        None,
    ),
    (
        "c" * 32,
        "2026-11-01 09:00:02.000000",
        "stacking",
        "stacking",
        "Shirt",
        6,
        0.4,
        json.dumps({"Shirt": 0.4}),
        "[]",
        json.dumps({"reason": "meta failed", "model": "bagging-1"}),
        "[]",
        7.5,
        "fmnist-1",
        None,
        "3" * 64,
        None,
    ),
    (
        "d" * 32,
        "2026-11-01 09:00:03.000000",
        "bagging",
        "bagging",
        None,
        None,
        None,
        None,
        "[]",
        None,
        "[]",
        1.0,
        "fmnist-1",
        None,
        "4" * 64,
        "NoMembersLeftError: all members failed",
    ),
]
FEEDBACK = [
    (1, "a" * 32, 8, 1, "2026-11-01 09:05:00.000000"),
    (2, "b" * 32, 8, 0, "2026-11-01 09:06:00.000000"),
]


def _sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def _first_release_database(path: Path) -> None:
    """A database exactly as the first release left it: its DDL, its rows, no alembic_version."""
    with sqlite3.connect(path) as connection:
        connection.executescript(FIRST_RELEASE_DDL)
        connection.executemany(
            f"INSERT INTO predictions VALUES ({','.join('?' * 16)})", PREDICTIONS
        )
        connection.executemany("INSERT INTO feedback VALUES (?, ?, ?, ?, ?)", FEEDBACK)
    connection.close()


def _rows(path: Path, table: str, columns: str = "*") -> list[tuple]:
    with sqlite3.connect(path) as connection:
        rows = connection.execute(f"SELECT {columns} FROM {table} ORDER BY 1").fetchall()
    connection.close()
    return rows


def _structure(path: Path) -> dict[str, object]:
    """Tables, columns, indexes and foreign keys as SQLite reports them (not the DDL's text)."""
    with sqlite3.connect(path) as connection:
        tables = [
            name
            for (name,) in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
            )
        ]
        structure: dict[str, object] = {}
        for table in tables:
            indexes = {
                name: (
                    unique,
                    origin,
                    [row[2] for row in connection.execute(f"PRAGMA index_info('{name}')")],
                )
                for _seq, name, unique, origin, _partial in connection.execute(
                    f"PRAGMA index_list('{table}')"
                )
            }
            # Auto-named indexes (sqlite_autoindex_*) are named by table order, keep them too.
            structure[table] = {
                "columns": connection.execute(f"PRAGMA table_info('{table}')").fetchall(),
                "indexes": dict(sorted(indexes.items())),
                "foreign_keys": [
                    row[2:] for row in connection.execute(f"PRAGMA foreign_key_list('{table}')")
                ],
            }
    connection.close()
    return structure


def _schema_diff(engine: Engine) -> list:
    """What autogenerate would write to bring the database to the models (empty: they agree)."""
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, Base.metadata)


@pytest.fixture
def engines():
    """Engines made by a test, disposed at its end (open SQLite files are ResourceWarnings)."""
    made: list[Engine] = []

    def make(path: Path) -> Engine:
        made.append(make_engine(_sqlite_url(path)))
        return made[-1]

    yield make
    for engine in made:
        engine.dispose()


def test_first_release_database_is_upgraded_in_place_keeping_every_row(tmp_path, engines):
    path = tmp_path / "first.db"
    _first_release_database(path)
    old_predictions, old_feedback = _rows(path, "predictions"), _rows(path, "feedback")
    engine = engines(path)
    assert current_revision(engine) is None

    assert upgrade(engine) == head_revision() == HEAD

    assert current_revision(engine) == HEAD
    assert _rows(path, "predictions") == [
        row + tuple(NEW_PREDICTION_COLUMNS.values()) for row in old_predictions
    ]
    assert _rows(path, "feedback") == old_feedback
    # Each first-release verdict is now also the counted first entry of its history.
    assert _rows(
        path,
        "feedback_events",
        "prediction_id, true_class_index, correct, source, client_hash, scope, at, counted",
    ) == [
        ("a" * 32, 8, 1, "client", "c" * 64, "ab", "2026-11-01 09:05:00.000000", 1),
        ("b" * 32, 8, 0, "client", None, "ab", "2026-11-01 09:06:00.000000", 1),
    ]
    assert _schema_diff(engine) == []
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA foreign_key_check").fetchall() == []
    connection.close()

    # The ORM reads the old rows as the first release wrote them.
    with Session(engine) as session:
        first = store.get_prediction(session, "a" * 32)
        assert first.probabilities == {"Bag": 0.91, "Coat": 0.09}
        assert first.created_at.isoformat() == "2026-11-01T09:00:00.000001+00:00"
        assert first.feedback.correct is True and first.experiment is None
        assert store.total_predictions(session) == 4
        records = store.records_by(session, ab=True)
        assert {arm: [r["correct"] for r in rows] for arm, rows in records.items()} == {
            "bagging": [True],
            "boosting": [False],
        }
        # Feedback still cascades with its prediction after predictions was rebuilt.
        session.execute(delete(store.Prediction).where(store.Prediction.id == "a" * 32))
        session.commit()
    assert [row[1] for row in _rows(path, "feedback")] == ["b" * 32]


def _old_ab_arm(client_id: str) -> str:
    """The first release's public formula for ``ab`` at AB_SPLIT 0.5 (sha256, known namespace)."""
    digest = hashlib.sha256(("chorus-ab-v1:" + client_id).encode("utf-8")).digest()
    return "boosting" if (int.from_bytes(digest[:8], "big") >> 11) / 2**53 < 0.5 else "bagging"


def _second_release_database(path: Path, engine: Engine) -> None:
    """A database at 0002 with data: the first release's rows, the built-in ``ab``, a created
    experiment with routed, labelled traffic, written with 0002's columns only."""
    _first_release_database(path)
    assert upgrade(engine, "0002") == "0002"
    ab = ab_definition(0.5)
    weighted = {**ab, "name": "split-two", "strategy": "weighted"}
    rows = [
        ("ab", "random", ab, 1, "system"),
        ("split-two", "weighted", weighted, 0, "admin"),
    ]
    with sqlite3.connect(path) as connection:
        for name, router, definition, builtin, actor in rows:
            connection.execute(
                "INSERT INTO experiments (name, router, definition, state, status, control, "
                "rr_counter, revision, builtin, created_by, created_at, updated_at, started_at) "
                "VALUES (?, ?, ?, ?, 'running', 'bagging', 0, 1, ?, ?, ?, ?, ?)",
                (
                    name,
                    router,
                    json.dumps(definition),
                    json.dumps(initial_state(definition)),
                    builtin,
                    actor,
                    *["2026-12-01 10:00:00.000000"] * 3,
                ),
            )
        routed = list(PREDICTIONS[0])
        routed[0], routed[2], routed[13] = "e" * 32, "split-two", "f" * 64
        connection.execute(
            f"INSERT INTO predictions VALUES ({','.join('?' * 16)}, 'split-two', NULL, NULL, "
            "'sticky', NULL)",
            routed,
        )
        connection.execute(
            "INSERT INTO feedback VALUES (3, ?, 3, 0, '2026-12-01 10:01:00.000000')", ("e" * 32,)
        )
    connection.close()


def test_a_0002_database_with_data_gets_secret_keys_and_a_verdict_history(tmp_path, engines):
    path = tmp_path / "second.db"
    engine = engines(path)
    _second_release_database(path, engine)
    columns = "name, router, definition, state, status, control, revision, builtin"
    with sqlite3.connect(path) as connection:  # 0002's columns: later revisions add more
        at_0002 = ", ".join(r[1] for r in connection.execute("PRAGMA table_info(predictions)"))
    before = (
        _rows(path, "experiments", columns),
        _rows(path, "predictions", at_0002),
        _rows(path, "feedback"),
    )

    assert upgrade(engine) == HEAD

    assert (
        _rows(path, "experiments", columns),
        _rows(path, "predictions", at_0002),
        _rows(path, "feedback"),
    ) == before
    keys = dict(_rows(path, "experiments", "name, assignment_key"))
    assert set(keys) == {"ab", "split-two"}
    assert all(isinstance(k, bytes) and len(k) == 32 for k in keys.values())
    assert keys["ab"] != keys["split-two"]  # drawn per row, not one default for all
    history = _rows(path, "feedback_events", "prediction_id, true_class_index, source, scope")
    assert history == [
        ("a" * 32, 8, "client", "ab"),
        ("b" * 32, 8, "client", "ab"),
        ("e" * 32, 3, "client", "split-two"),
    ]
    assert _schema_diff(engine) == []

    # Upgrading again draws no new keys: a restart never reassigns clients.
    assert upgrade(engine) == HEAD
    assert dict(_rows(path, "experiments", "name, assignment_key")) == keys

    # ab now routes by its key: the arm is no longer the first release's public function.
    with Session(engine) as session:
        row = store.get_experiment(session, "ab")
        router = build_router(row.definition, row.state, key=row.assignment_key)
    ids = [f"client-{i}" for i in range(4000)]
    rng = random.Random(0)
    agree = sum(router.route(RoutingContext(i, {}, rng)).arm == _old_ab_arm(i) for i in ids)
    assert abs(agree - 2000) <= 4 * (4000 * 0.25) ** 0.5


def test_downgrade_from_0003_keeps_the_effective_verdicts(tmp_path, engines):
    path = tmp_path / "second.db"
    engine = engines(path)
    _second_release_database(path, engine)
    upgrade(engine)
    feedback = _rows(path, "feedback")
    with migration_connection(engine) as connection:
        command.downgrade(make_config(connection=connection), "0002")
    assert current_revision(engine) == "0002"
    assert _rows(path, "feedback") == feedback
    assert "feedback_events" not in inspect(engine).get_table_names()
    upgrade(engine)
    assert _schema_diff(engine) == []


def test_upgrade_is_idempotent(tmp_path, engines):
    path = tmp_path / "first.db"
    _first_release_database(path)
    engine = engines(path)
    upgrade(engine)
    before = (_rows(path, "predictions"), _rows(path, "feedback"), _structure(path))
    assert upgrade(engine) == HEAD
    assert upgrade(engine) == HEAD
    assert (_rows(path, "predictions"), _rows(path, "feedback"), _structure(path)) == before
    assert _rows(path, "alembic_version") == [(HEAD,)]


def test_fresh_database_from_the_migrations_matches_the_models(tmp_path, engines):
    engine = engines(tmp_path / "fresh.db")
    assert upgrade(engine) == HEAD
    assert set(inspect(engine).get_table_names()) == set(Base.metadata.tables) | {"alembic_version"}
    assert _schema_diff(engine) == []


def test_a_fresh_and_an_upgraded_database_have_the_same_schema(tmp_path, engines):
    fresh, old = tmp_path / "fresh.db", tmp_path / "first.db"
    _first_release_database(old)
    upgrade(engines(fresh))
    upgrade(engines(old))
    assert _structure(fresh) == _structure(old)


def test_first_revision_creates_exactly_the_first_release_schema(tmp_path, engines):
    made, captured = tmp_path / "made.db", tmp_path / "captured.db"
    engine = engines(made)
    assert upgrade(engine, FIRST_RELEASE) == FIRST_RELEASE
    with sqlite3.connect(captured) as connection:
        connection.executescript(FIRST_RELEASE_DDL)
    connection.close()
    structure = _structure(made)
    assert structure.pop("alembic_version")
    assert structure == _structure(captured)
    assert _schema_diff(engine) != []  # the comparison does see a schema behind the models


def test_downgrade_to_the_first_release_and_back_keeps_the_rows(tmp_path, engines):
    path = tmp_path / "first.db"
    _first_release_database(path)
    engine = engines(path)
    rows = (_rows(path, "predictions"), _rows(path, "feedback"))
    upgrade(engine)
    with migration_connection(engine) as connection:
        command.downgrade(make_config(connection=connection), FIRST_RELEASE)
    assert (_rows(path, "predictions"), _rows(path, "feedback")) == rows
    upgrade(engine)
    assert _schema_diff(engine) == []
    assert len(_rows(path, "feedback")) == len(FEEDBACK)


def test_other_applications_tables_are_left_alone(tmp_path, engines):
    path = tmp_path / "shared.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
        connection.execute("INSERT INTO users VALUES (7)")
    connection.close()
    engine = engines(path)
    assert upgrade(engine) == HEAD and _schema_diff(engine) != []  # diff: users is not ours
    drop_everything(engine)
    assert inspect(engine).get_table_names() == ["users"]
    assert _rows(path, "users") == [(7,)]


def test_tables_without_a_version_that_are_not_the_first_release_are_refused(tmp_path, engines):
    path = tmp_path / "odd.db"
    with sqlite3.connect(path) as connection:
        connection.executescript(FIRST_RELEASE_DDL.split("CREATE TABLE feedback")[0])
    connection.close()
    engine = engines(path)
    with pytest.raises(MigrationError, match="not a first-release database"):
        upgrade(engine)
    assert inspect(engine).get_table_names() == ["predictions"]  # left as it was


UPGRADE_AT = """
import sys, time
from store.db import make_engine
from store.migrate import upgrade
engine = make_engine(sys.argv[1])
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
print(upgrade(engine))
engine.dispose()
"""


def _upgrade_together(url: str) -> list[tuple[str, str]]:
    """Two processes run ``upgrade`` on one database at the same instant; (stdout, stderr) each."""
    start = time.time() + 2  # both processes are imported and waiting by then
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", UPGRADE_AT, url, str(start)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=120) for process in processes]
    for process, (stdout, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr
        assert stdout.strip() == HEAD
    return outputs


@pytest.mark.parametrize("first_release", [False, True], ids=["fresh", "first-release"])
def test_two_processes_upgrading_one_file_at_once(tmp_path, engines, first_release):
    """Workers starting together: one migrates, the other waits for its lock and finds head."""
    path = tmp_path / "shared.db"
    if first_release:
        _first_release_database(path)
    outputs = _upgrade_together(_sqlite_url(path))
    engine = engines(path)
    assert _rows(path, "alembic_version") == [(HEAD,)]
    assert _schema_diff(engine) == []
    if first_release:
        stamped = ["first-release database found" in stderr for _stdout, stderr in outputs]
        assert sorted(stamped) == [False, True]  # the second one found it done
        assert len(_rows(path, "predictions")) == len(PREDICTIONS)
        assert len(_rows(path, "feedback")) == len(FEEDBACK)


def test_drop_everything_then_upgrade_starts_over(tmp_path, engines):
    path = tmp_path / "first.db"
    _first_release_database(path)
    engine = engines(path)
    upgrade(engine)
    drop_everything(engine)
    assert inspect(engine).get_table_names() == []
    assert current_revision(engine) is None
    upgrade(engine)
    assert _rows(path, "predictions") == [] and _schema_diff(engine) == []


def test_init_db_reset_drops_the_version_table_too(tmp_path):
    """The CLI on a bare Flask app (no models needed): --reset then migrate from scratch."""
    path = tmp_path / "first.db"
    _first_release_database(path)
    app = Flask(__name__)
    app.config["DATABASE_URL"] = _sqlite_url(path)
    store.init_app(app)
    try:
        runner = app.test_cli_runner()
        assert len(_rows(path, "predictions")) == len(PREDICTIONS)  # adopted at start-up
        result = runner.invoke(args=["init-db"])
        assert result.exit_code == 0, result.output
        assert len(_rows(path, "predictions")) == len(PREDICTIONS)
        result = runner.invoke(args=["init-db", "--reset", "--yes"])
        assert result.exit_code == 0, result.output
        assert _rows(path, "predictions") == [] and _rows(path, "feedback") == []
        assert _rows(path, "alembic_version") == [(HEAD,)]
    finally:
        app.extensions["chorus_store"].close()


def test_open_store_serves_sessions_without_flask(tmp_path):
    opened = store.open_store(_sqlite_url(tmp_path / "service.db"))
    try:
        assert current_revision(opened.engine) == head_revision()
        with opened.session() as session:
            row = store.add_prediction(
                session,
                strategy="light-vote",
                arm="light-vote",
                latency_ms=1.0,
                model_version="v",
                image_sha256="0" * 64,
                features={"width": 28},
            )
        with opened.session() as session:
            assert store.get_prediction(session, row.id).features == {"width": 28}
    finally:
        opened.close()


def test_a_database_from_a_newer_release_is_refused(tmp_path, engines):
    path = tmp_path / "newer.db"
    engine = engines(path)
    upgrade(engine)
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE alembic_version SET version_num = '9999'")
    connection.close()
    with pytest.raises(MigrationError, match="revision 9999, which this code does not know"):
        upgrade(engine)


def test_0004_gives_predictions_an_empty_canvas_and_its_downgrade_keeps_them(tmp_path, engines):
    path = tmp_path / "third.db"
    engine = engines(path)
    _second_release_database(path, engine)
    assert upgrade(engine, "0003") == "0003"
    before = _rows(path, "predictions")

    assert upgrade(engine, "0004") == "0004"
    assert _rows(path, "predictions", "canvas") == [(None,)] * len(before)  # older rows: none
    columns = [c[1] for c in _structure(path)["predictions"]["columns"] if c[1] != "canvas"]
    assert _rows(path, "predictions", ", ".join(columns)) == before

    with migration_connection(engine) as connection:
        command.downgrade(make_config(connection=connection), "0003")
    assert current_revision(engine) == "0003"
    assert _rows(path, "predictions") == before
    assert "canvas" not in {c["name"] for c in inspect(engine).get_columns("predictions")}
    upgrade(engine)
    assert _schema_diff(engine) == []


# PostgreSQL (the session's throwaway cluster, conftest's ``postgres``): from empty and from the
# first release, with two processes racing for the advisory lock.


def _first_release_postgres(url: str) -> None:
    """A Postgres database as the first release left it: 0001's tables (what its create_all made
    there), its rows, no alembic_version."""
    engine = make_engine(url)
    try:
        assert upgrade(engine, FIRST_RELEASE) == FIRST_RELEASE
        with engine.begin() as connection:
            connection.exec_driver_sql("SET TIME ZONE 'UTC'")
            connection.exec_driver_sql("DROP TABLE alembic_version")
            placeholders = ", ".join(["%s"] * len(PREDICTIONS[0]))
            connection.exec_driver_sql(
                f"INSERT INTO predictions VALUES ({placeholders})", PREDICTIONS
            )
            connection.exec_driver_sql(
                "INSERT INTO feedback VALUES (%s, %s, %s, %s, %s)",
                [(n, p, c, bool(ok), at) for n, p, c, ok, at in FEEDBACK],
            )
            connection.exec_driver_sql(
                "SELECT setval(pg_get_serial_sequence('feedback', 'id'), %s)", (len(FEEDBACK),)
            )
    finally:
        engine.dispose()


@pytest.mark.parametrize("first_release", [False, True], ids=["fresh", "first-release"])
def test_two_processes_upgrading_one_postgres_database_at_once(postgres, first_release):
    url = postgres.create(migrated=False)
    if first_release:
        _first_release_postgres(url)
    outputs = _upgrade_together(url)
    engine = make_engine(url)
    try:
        assert current_revision(engine) == HEAD
        assert _schema_diff(engine) == []
        if first_release:
            stamped = ["first-release database found" in stderr for _stdout, stderr in outputs]
            assert sorted(stamped) == [False, True]
            with Session(engine) as session:
                first = store.get_prediction(session, "a" * 32)
                assert first.probabilities == {"Bag": 0.91, "Coat": 0.09}
                assert first.created_at.isoformat() == "2026-11-01T09:00:00.000001+00:00"
                assert first.feedback.correct is True and first.experiment is None
                assert store.total_predictions(session) == len(PREDICTIONS)
                records = store.records_by(session, ab=True)
                assert {arm: [r["correct"] for r in rows] for arm, rows in records.items()} == {
                    "bagging": [True],
                    "boosting": [False],
                }
        else:
            assert set(inspect(engine).get_table_names()) == set(Base.metadata.tables) | {
                "alembic_version"
            }
        # Dropping everything and upgrading again starts over on Postgres too.
        drop_everything(engine)
        assert inspect(engine).get_table_names() == []
        assert upgrade(engine) == HEAD and _schema_diff(engine) == []
    finally:
        engine.dispose()
        postgres.drop_url(url)
