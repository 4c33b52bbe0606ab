"""Alembic without an ``alembic.ini``: the schema is brought to head at start-up, safely.

``upgrade(engine)`` is what every process runs before serving. It creates a fresh database from
the migrations, adopts a first-release database (its tables, made by ``create_all``, and no
``alembic_version``) by stamping it ``0001`` and upgrading it in place, and does nothing when the
database is already at head. Processes starting together are serialised by a lock taken in the
migration's own transaction (SQLite: ``BEGIN IMMEDIATE``; Postgres: an advisory lock), so the
second one waits and then finds nothing left to do.

From a shell (no ``alembic.ini`` needed; see ``store/__main__.py``)::

    python -m store upgrade                      # DATABASE_URL, or the default SQLite
    python -m store current
    python -m store revision -m "add x" --autogenerate
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, MetaData, inspect, text
from sqlalchemy.exc import OperationalError

from store.models import Base

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: The revision that creates exactly the first release's tables.
FIRST_RELEASE = "0001"
#: What the first release's ``create_all`` made; a database holding them and no version is one.
FIRST_RELEASE_TABLES = frozenset({"predictions", "feedback"})
VERSION_TABLE = "alembic_version"
#: Arbitrary, fixed key of the Postgres advisory lock that serialises upgrades cluster-wide.
PG_MIGRATION_LOCK = 0x43484F52  # "CHOR"
#: How long a SQLite upgrader waits in all for another process's upgrade (busy_timeout each try).
SQLITE_LOCK_WAIT_S = 120.0

#: Alembic's ``context`` is process-global: one upgrade at a time per process.
_LOCAL_LOCK = threading.Lock()


class MigrationError(RuntimeError):
    """The database is in a state the migrations cannot bring to head; the message says why."""


def make_config(url: str | None = None, connection: Connection | None = None) -> Config:
    """An Alembic config built in code: the script location, and a URL or an open connection."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision in ``store/migrations/versions``."""
    head = ScriptDirectory.from_config(make_config()).get_current_head()
    if head is None:  # pragma: no cover - the package ships its migrations
        raise MigrationError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at; None when it has none (empty, or first release)."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


@contextmanager
def migration_connection(engine: Engine) -> Iterator[Connection]:
    """A connection in one transaction that holds the cluster-wide migration lock; commits."""
    with engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            with _sqlite_locked(connection):
                yield connection
            return
        try:
            if connection.dialect.name == "postgresql":
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(CAST(:key AS BIGINT))"),
                    {"key": PG_MIGRATION_LOCK},
                )
            yield connection
            connection.commit()
        except BaseException:
            connection.rollback()
            raise


@contextmanager
def _sqlite_locked(connection: Connection) -> Iterator[None]:
    """Foreign keys off (batch copies tables) and ``BEGIN IMMEDIATE``: DDL in one transaction."""
    raw = connection.connection.dbapi_connection
    assert raw is not None
    connection.commit()  # nothing may be open while the driver's transaction handling changes
    previous = raw.isolation_level
    # Driver autocommit: pysqlite would otherwise commit before each DDL statement on its own.
    raw.isolation_level = None
    try:
        # A no-op inside a transaction, so before BEGIN. With foreign keys on, batch's DROP TABLE
        # of predictions would cascade into feedback and delete every row of it.
        connection.exec_driver_sql("PRAGMA foreign_keys = OFF")
        _begin_immediate(connection)
        try:
            yield
            violations = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if violations:
                raise MigrationError(f"the upgrade broke foreign keys: {violations[:5]}")
            connection.commit()
        except BaseException:
            connection.rollback()
            raise
    finally:
        connection.exec_driver_sql("PRAGMA foreign_keys = ON")
        connection.commit()
        raw.isolation_level = previous


def _begin_immediate(connection: Connection) -> None:
    """Take SQLite's write lock, waiting for another process's upgrade to finish."""
    deadline = time.monotonic() + SQLITE_LOCK_WAIT_S
    while True:
        try:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
            return
        except OperationalError as exc:
            connection.rollback()
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            log.info("another process is upgrading the database; waiting")


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Bring the schema to ``revision``, adopting a first-release database; returns the revision."""
    target = head_revision() if revision == "head" else revision
    if current_revision(engine) == target:  # the usual start-up: no write lock at all
        return target
    with _LOCAL_LOCK, migration_connection(engine) as connection:
        config = make_config(connection=connection)
        current = MigrationContext.configure(connection).get_current_revision()
        if current is not None and not _known(config, current):
            raise MigrationError(
                f"the database is at revision {current}, which this code does not know: a newer "
                "release migrated it. Run that release, or restore a backup made before it."
            )
        if current is None:
            tables = set(inspect(connection).get_table_names()) - {VERSION_TABLE}
            if tables & FIRST_RELEASE_TABLES:
                _adopt_first_release(config, tables)
        command.upgrade(config, revision)
        reached = MigrationContext.configure(connection).get_current_revision()
    log.info("database schema at revision %s (was %s)", reached, current)
    return reached


def _known(config: Config, revision: str) -> bool:
    """Whether ``revision`` is one of this code's migrations."""
    try:
        return ScriptDirectory.from_config(config).get_revision(revision) is not None
    except CommandError:
        return False


def _adopt_first_release(config: Config, tables: set[str]) -> None:
    """Stamp a first-release database ``0001`` so the migrations after it upgrade it in place."""
    missing = FIRST_RELEASE_TABLES - tables
    later = tables & (set(Base.metadata.tables) - FIRST_RELEASE_TABLES)
    if missing or later:
        raise MigrationError(
            f"the database has tables {sorted(tables & set(Base.metadata.tables))} but no "
            f"{VERSION_TABLE} table: it is not a first-release database (that has exactly "
            f"{sorted(FIRST_RELEASE_TABLES)}). Restore it from a backup, or stamp it by hand "
            "(python -m store stamp <revision>)."
        )
    log.warning("first-release database found: stamping %s and upgrading in place", FIRST_RELEASE)
    command.stamp(config, FIRST_RELEASE)


def drop_everything(engine: Engine) -> None:
    """Drop every Chorus table, ``alembic_version`` included (``init-db --reset``).

    Tables the database holds as they are (reflected, so older schemas drop too); other
    applications' tables in the same database are left alone.
    """
    ours = set(Base.metadata.tables) | {VERSION_TABLE}
    with _LOCAL_LOCK, migration_connection(engine) as connection:
        metadata = MetaData()
        present = ours & set(inspect(connection).get_table_names())
        metadata.reflect(connection, only=sorted(present))
        metadata.drop_all(connection)
    log.warning("dropped the tables %s", sorted(metadata.tables))
