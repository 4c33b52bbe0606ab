"""A throwaway PostgreSQL cluster for the suite: Debian's server binaries, a temp dir, a free port.

``PostgresCluster`` runs ``initdb`` into a fresh directory and starts ``postgres`` on 127.0.0.1
(its unix socket in the same directory, durability off: nothing here must survive a crash), as the
unprivileged ``postgres`` user when the suite runs as root (the server refuses root). Tests get
databases cloned from a migrated template (``CREATE DATABASE ... TEMPLATE``, a file copy), so each
starts from an empty schema at head in about 0.1 s; ``external`` does the same on a server named
by ``CHORUS_TEST_POSTGRES_URL``.
"""

from __future__ import annotations

import glob
import logging
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy.engine import URL

from bench.load import free_port
from store.db import make_engine, parse_database_url
from store.migrate import upgrade

log = logging.getLogger(__name__)

#: Debian's layout: /usr/lib/postgresql/<major>/bin/{initdb,pg_ctl,postgres}.
BINARY_GLOB = "/usr/lib/postgresql/*/bin"
#: The unprivileged account the Debian package creates; the server refuses to run as root.
SYSTEM_USER = "postgres"
SUPERUSER = "chorus"
#: The template every test database is cloned from: migrated to head once per session.
TEMPLATE = "chorus_template"
#: Speed over durability (a crash loses a throwaway cluster), and room for two gunicorn
#: instances' pools next to the tests' own connections.
SETTINGS = {
    "fsync": "off",
    "timezone": "UTC",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "32MB",
    "listen_addresses": "127.0.0.1",
}


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL can be had here; the message says why (the tests skip with it)."""


def find_binaries(pattern: str = BINARY_GLOB) -> Path:
    """The newest installed server's bin directory (Debian's ``postgresql`` package)."""
    found = sorted(
        (Path(p) for p in glob.glob(pattern) if (Path(p) / "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not found:
        raise PostgresUnavailable(
            f"no PostgreSQL server binaries under {pattern} (apt-get install postgresql, or "
            "`make postgresql`; or set CHORUS_TEST_POSTGRES_URL to a server of your own)"
        )
    return found[-1]


class Databases:
    """Fresh databases cloned from a migrated template, on a server this process may administer."""

    def __init__(self, admin_url: URL) -> None:
        self.admin_url = admin_url
        self.made: list[str] = []

    def _admin(self) -> psycopg.Connection:
        url = self.admin_url
        return psycopg.connect(
            host=url.host,
            port=url.port,
            user=url.username,
            password=url.password,
            dbname=url.database or "postgres",
            autocommit=True,
            connect_timeout=10,
        )

    def url(self, database: str) -> str:
        """A ``DATABASE_URL`` for one database of this server."""
        return self.admin_url.set(database=database).render_as_string(hide_password=False)

    def prepare_template(self) -> None:
        """(Re)create the template and migrate it to head: done once, cloned by every test."""
        self.drop(TEMPLATE)
        with self._admin() as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE)))
        engine = make_engine(self.url(TEMPLATE))
        try:
            upgrade(engine)
        finally:
            engine.dispose()  # a template may have no open connection while it is cloned

    def create(self, *, migrated: bool = True) -> str:
        """A new database (at head, or empty) and its URL; dropped again by ``drop_made``."""
        name = f"chorus_{uuid.uuid4().hex[:12]}"
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if migrated:
            query += sql.SQL(" TEMPLATE {} STRATEGY FILE_COPY").format(sql.Identifier(TEMPLATE))
        with self._admin() as connection:
            connection.execute(query)
        self.made.append(name)
        return self.url(name)

    def drop_url(self, url: str) -> None:
        """Drop the database a ``create`` URL names (its connections are terminated)."""
        name = parse_database_url(url).database
        assert name is not None
        self.drop(name)
        if name in self.made:
            self.made.remove(name)

    def drop(self, name: str) -> None:
        with self._admin() as connection:
            connection.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def drop_made(self) -> None:
        """Drop every database ``create`` made (FORCE: connections a test leaked go too)."""
        while self.made:
            self.drop(self.made.pop())


class PostgresCluster(Databases):
    """``initdb`` and ``postgres`` (a child process) in a temp dir; ``stop`` ends both."""

    def __init__(self, binaries: Path | None = None) -> None:
        self.binaries = binaries or find_binaries()
        self.root = Path(tempfile.mkdtemp(prefix="chorus-pg-"))
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.port = free_port()
        #: setpriv execs the server with PR_SET_PDEATHSIG, and drops root to the system user.
        self.runas = ["setpriv", "--pdeathsig=KILL"]
        self.process: subprocess.Popen[bytes] | None = None
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam(SYSTEM_USER)
            except KeyError as exc:
                raise PostgresUnavailable(
                    f"running as root and there is no {SYSTEM_USER!r} user to run the server as"
                ) from exc
            os.chown(self.root, account.pw_uid, account.pw_gid)
            self.runas += [
                f"--reuid={account.pw_uid}",
                f"--regid={account.pw_gid}",
                "--init-groups",
            ]
        self.runas.append("--")
        super().__init__(
            URL.create(
                "postgresql+psycopg",
                username=SUPERUSER,
                host="127.0.0.1",
                port=self.port,
                database="postgres",
            )
        )

    def _run(self, *args: str) -> None:
        done = subprocess.run(
            [*self.runas, *args],
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            tail = (
                self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
            )
            raise PostgresUnavailable(
                f"{Path(args[0]).name} failed ({done.returncode}): {done.stderr.strip()[-2000:]}"
                f"\n{tail}"
            )

    def start(self) -> PostgresCluster:
        """Make the cluster and start its server; raise ``PostgresUnavailable`` if it cannot."""
        self._run(
            str(self.binaries / "initdb"),
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "--auth=trust",  # only 127.0.0.1 and a socket in a 0700 directory
            "--no-sync",
            "--encoding=UTF8",
            "--locale=C",
        )
        settings = {**SETTINGS, "port": str(self.port), "unix_socket_directories": str(self.root)}
        options = [arg for k, v in settings.items() for arg in ("-c", f"{k}={v}")]
        # In the foreground, as this process's child: setpriv's --pdeathsig kills it if the test
        # process dies without its teardown (SIGTERM, SIGKILL), so no cluster outlives a run.
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                [*self.runas, str(self.binaries / "postgres"), "-D", str(self.data), *options],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self.root,
            )
        self._wait_ready()
        log.info(
            "PostgreSQL %s on 127.0.0.1:%d (%s)", self.binaries.parent.name, self.port, self.root
        )
        return self

    def _wait_ready(self, timeout: float = 60.0) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise PostgresUnavailable(
                    f"postgres exited with {self.process.returncode}: "
                    f"{self.log_path.read_text(errors='replace')[-2000:]}"
                )
            try:
                self._admin().close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise PostgresUnavailable(f"postgres not ready after {timeout:.0f} s") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server at once (SIGQUIT: immediate, nothing to keep) and delete the cluster."""
        try:
            if self.process is not None and self.process.poll() is None:
                self.process.send_signal(signal.SIGQUIT)
                try:
                    self.process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def external(url: str) -> Databases:
    """Databases on a server of the user's (``CHORUS_TEST_POSTGRES_URL``); it must be reachable."""
    parsed = parse_database_url(url)
    databases = Databases(parsed)
    try:
        databases._admin().close()
    except psycopg.Error as exc:
        raise PostgresUnavailable(
            f"CHORUS_TEST_POSTGRES_URL={url!r} is unreachable: {exc}"
        ) from exc
    return databases


@dataclass
class Database:
    """Where one test's databases live: SQLite files in ``tmp_path`` or fresh Postgres ones."""

    backend: str
    tmp_path: Path
    server: Databases | None = None
    urls: list[str] = field(default_factory=list)

    def url(self, n: int = 0, *, migrated: bool = True) -> str:
        """The URL of database ``n`` (Postgres: a new one, at head unless ``migrated=False``)."""
        if self.server is None:
            return f"sqlite:///{self.tmp_path / f'chorus{n}.db'}"
        self.urls.append(self.server.create(migrated=migrated))
        return self.urls[-1]

    def drop(self) -> None:
        """Drop the Postgres databases this test made (SQLite files go with ``tmp_path``)."""
        while self.server is not None and self.urls:
            self.server.drop_url(self.urls.pop())
