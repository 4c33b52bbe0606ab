"""The Flask side of the store (flaskr's ``db.py``): ``init_app``, the per-request session, the
``init-db`` command. Only the app and the views import it; ``serving/`` stays Flask-free."""

from __future__ import annotations

import logging

import click
from flask import Flask, current_app
from flask.cli import with_appcontext
from sqlalchemy.orm import Session

from store.db import _EXTENSION, Store, open_store
from store.migrate import drop_everything, upgrade

log = logging.getLogger(__name__)


def init_app(app: Flask) -> None:
    """Open the store (migrating it), register the session teardown and the ``init-db`` command."""
    store = open_store(app.config["DATABASE_URL"])
    engine = store.engine
    sessions = store.sessions
    app.extensions[_EXTENSION] = store

    @app.teardown_appcontext
    def remove_session(_exc: BaseException | None = None) -> None:
        sessions.remove()

    app.cli.add_command(init_db_command)
    log.info("database ready: %s", engine.url.render_as_string(hide_password=True))


def get_store() -> Store:
    """The current app's store (engine and sessions)."""
    store: Store = current_app.extensions[_EXTENSION]
    return store


def get_session() -> Session:
    """The current thread's session for the current app (removed at app-context teardown)."""
    return get_store().sessions()


@click.command("init-db")
@click.option("--reset", is_flag=True, help="Drop every table first (deletes all records).")
@click.option("--yes", is_flag=True, help="Do not ask before --reset.")
@with_appcontext
def init_db_command(reset: bool, yes: bool) -> None:
    """Migrate the schema to head (also done at start-up); --reset empties the database first."""
    store = get_store()
    if reset:
        if not yes:
            click.confirm(
                "Delete every prediction, feedback, ensemble and experiment record?", abort=True
            )
        store.sessions.remove()  # no session may hold a connection into the dropped tables
        drop_everything(store.engine)
    upgrade(store.engine)
    click.echo(f"Initialized the database at {store.engine.url.render_as_string(True)}.")
