"""Alembic's environment: runs on the connection ``store.migrate`` hands over, or opens one."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from store.models import Base

config = context.config
target_metadata = Base.metadata


def run_on(connection: Connection) -> None:
    """Run the migrations inside the caller's transaction (it holds the migration lock)."""
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        # SQLite cannot ALTER most things: autogenerate writes batch_alter_table blocks.
        render_as_batch=True,
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_offline() -> None:
    """``--sql`` mode: print the DDL for a URL's dialect instead of running it."""
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    """Use the given connection, or lock a new one as ``store.migrate.upgrade`` does."""
    connection = config.attributes.get("connection")
    if connection is not None:
        run_on(connection)
        return
    from store.db import make_engine
    from store.migrate import migration_connection

    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no connection and no sqlalchemy.url: use store.migrate.make_config")
    engine = make_engine(url)
    try:
        with migration_connection(engine) as locked:
            run_on(locked)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
