"""``python -m store``: the migrations from a shell, without an ``alembic.ini``."""

from __future__ import annotations

import argparse
import logging
import os

from alembic import command

from store.db import make_engine
from store.migrate import (
    current_revision,
    head_revision,
    make_config,
    migration_connection,
    upgrade,
)

log = logging.getLogger("store")

#: DESIGN.md's default ``DATABASE_URL`` (relative to the working directory).
DEFAULT_DATABASE_URL = "sqlite:///instance/chorus.db"


def main(argv: list[str] | None = None) -> None:
    """``python -m store``: upgrade, show, stamp or write revisions without alembic.ini."""
    parser = argparse.ArgumentParser(prog="python -m store", description=main.__doc__)
    parser.add_argument("--url", default=os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL))
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("upgrade", help="bring the database to head (what start-up does)")
    commands.add_parser("current", help="print the database's revision")
    stamp = commands.add_parser("stamp", help="record a revision without running migrations")
    stamp.add_argument("revision")
    revision = commands.add_parser("revision", help="write a new migration file")
    revision.add_argument("-m", "--message", required=True)
    revision.add_argument("--rev-id", help="e.g. 0003 (default: the next number)")
    revision.add_argument("--autogenerate", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    engine = make_engine(args.url)
    try:
        if args.command == "upgrade":
            upgrade(engine)
        elif args.command == "current":
            log.info("revision: %s (head: %s)", current_revision(engine), head_revision())
        elif args.command == "stamp":
            with migration_connection(engine) as connection:
                command.stamp(make_config(connection=connection), args.revision)
        else:
            rev_id = args.rev_id or f"{int(head_revision()) + 1:04d}"
            with engine.connect() as connection:
                config = make_config(connection=connection)
                command.revision(
                    config, args.message, autogenerate=args.autogenerate, rev_id=rev_id
                )
    finally:
        engine.dispose()


if __name__ == "__main__":
    main()
