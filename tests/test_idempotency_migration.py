"""Migration 0006: the idempotency and failed-sign-in tables arrive on a 0005 database with data,
match the models, and leave again on downgrade without touching anything else."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text

from store.db import make_engine
from store.migrate import current_revision, head_revision, make_config, migration_connection
from store.migrate import upgrade as upgrade_to
from store.models import AuthFailure, Base, IdempotentAnswer

REVISION, PREVIOUS = "0006", "0005"
NEW_TABLES = {AuthFailure.__tablename__, IdempotentAnswer.__tablename__}


@pytest.fixture
def engine(tmp_path: Path):
    made = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    yield made
    made.dispose()


def _diff_of_new_tables(engine: Engine) -> list:
    """What autogenerate would change in the two new tables (empty: they match the models)."""
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    return [d for d in diff if any(table in repr(d) for table in NEW_TABLES)]


def _downgrade(engine: Engine, revision: str) -> None:
    with migration_connection(engine) as connection:
        command.downgrade(make_config(connection=connection), revision)


def test_0006_follows_0005_and_the_chain_has_one_head() -> None:
    scripts = ScriptDirectory.from_config(make_config())
    assert scripts.get_revision(REVISION).down_revision == PREVIOUS
    assert len(scripts.get_heads()) == 1 and head_revision() == scripts.get_heads()[0]


def test_upgrade_from_0005_adds_the_tables_and_keeps_the_rows(engine: Engine) -> None:
    assert upgrade_to(engine, PREVIOUS) == PREVIOUS
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO experiment_events (experiment, kind, actor, at) "
                "VALUES ('ab', 'created', 'system', '2026-12-01 10:00:00.000000')"
            )
        )
    before = set(inspect(engine).get_table_names())
    assert not NEW_TABLES & before

    assert upgrade_to(engine, REVISION) == REVISION

    inspector = inspect(engine)
    assert set(inspector.get_table_names()) == before | NEW_TABLES
    assert inspector.get_pk_constraint("idempotent_answers")["constrained_columns"] == [
        "scope",
        "key",
    ]
    assert {i["name"] for i in inspector.get_indexes("auth_failures")} == {
        "ix_auth_failures_at",
        "ix_auth_failures_client_at",
    }
    with engine.connect() as connection:
        kinds = connection.execute(text("SELECT kind FROM experiment_events")).scalars().all()
    assert kinds == ["created"]
    assert _diff_of_new_tables(engine) == []


def test_downgrade_to_0005_drops_only_the_new_tables(engine: Engine) -> None:
    upgrade_to(engine, PREVIOUS)
    at_0005 = set(inspect(engine).get_table_names())
    upgrade_to(engine)
    _downgrade(engine, PREVIOUS)
    assert current_revision(engine) == PREVIOUS
    assert set(inspect(engine).get_table_names()) == at_0005
    assert upgrade_to(engine) == head_revision()
    assert NEW_TABLES <= set(inspect(engine).get_table_names())
