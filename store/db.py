"""Engine and sessions: ``open_store`` for any process, ``init_app`` wires one into a Flask app.

The schema comes from the migrations (``store.migrate.upgrade``), never from ``create_all``.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.orm import Session, scoped_session, sessionmaker
from sqlalchemy.pool import StaticPool

from store.migrate import upgrade

log = logging.getLogger(__name__)

#: How long a SQLite writer waits for another worker's write lock before failing.
SQLITE_BUSY_TIMEOUT_MS = 5000
_EXTENSION = "chorus_store"
#: The Postgres driver DESIGN.md names; ``postgres://`` and a bare ``postgresql://`` mean it.
POSTGRES_DRIVER = "postgresql+psycopg"


class DatabaseUrlError(ValueError):
    """``DATABASE_URL`` cannot be used; the message says why and how to fix it."""


@dataclass
class Store:
    """An engine and a thread-scoped session registry: what ``init_app`` attaches to an app."""

    engine: Engine
    sessions: scoped_session[Session]

    def session(self) -> Session:
        """A session of its own, for code outside a request (use it in ``with``)."""
        return Session(self.engine, expire_on_commit=False)

    def close(self) -> None:
        """Release every connection (tests, and anything that outlives its app)."""
        self.sessions.remove()
        self.engine.dispose()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets readers and one writer overlap; busy_timeout makes other writers wait, not fail."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        _set_wal(cursor)
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _set_wal(cursor: Any) -> None:
    """Switch to WAL, retrying: the switch needs a moment alone and ignores busy_timeout."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            # Another process starting at the same moment holds a lock (e.g. switching too).
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def parse_database_url(url: str) -> URL:
    """Parse ``DATABASE_URL``, naming psycopg 3 when a Postgres URL names no driver."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise DatabaseUrlError(
            f"DATABASE_URL is not a database URL ({exc}). Use e.g. sqlite:///instance/chorus.db "
            "or postgresql+psycopg://user:password@host/dbname."
        ) from exc
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername=POSTGRES_DRIVER)
    return parsed


def make_engine(url: str) -> Engine:
    """An engine for ``DATABASE_URL``; SQLite gets the pragmas several gunicorn workers need."""
    parsed = parse_database_url(url)
    if parsed.get_backend_name() != "sqlite":
        try:
            return create_engine(parsed, pool_pre_ping=True)
        except (ImportError, NoSuchModuleError) as exc:
            raise DatabaseUrlError(
                f"DATABASE_URL needs the {parsed.drivername!r} driver, which is not available "
                f"({exc}). For Postgres install psycopg (pip install 'psycopg[binary]') and use "
                "postgresql+psycopg://user:password@host/dbname."
            ) from exc
    database = parsed.database
    if not database or database == ":memory:":
        # One shared connection, or every thread would see its own empty in-memory database.
        engine = create_engine(
            parsed, poolclass=StaticPool, connect_args={"check_same_thread": False}
        )
    else:
        Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def create_tables(engine: Engine) -> None:
    """Bring the schema to head (the first release's name for it; see ``store.migrate``)."""
    upgrade(engine)


def open_store(url: str, *, migrate: bool = True) -> Store:
    """Engine, schema at head and sessions for ``DATABASE_URL``, with or without Flask."""
    engine = make_engine(url)
    if migrate:
        upgrade(engine)
    if not isinstance(engine.pool, StaticPool):  # disposing would drop an in-memory database
        # No pooled connection may survive into gunicorn's forked workers (preload_app).
        engine.dispose()
    sessions = scoped_session(sessionmaker(bind=engine, expire_on_commit=False))
    return Store(engine=engine, sessions=sessions)


def ping(session: Session) -> None:
    """Raise unless the database answers ``SELECT 1`` (used by ``/readyz``)."""
    session.execute(text("SELECT 1"))
    session.rollback()
