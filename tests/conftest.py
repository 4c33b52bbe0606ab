"""App fixtures in flaskr style: ``app``, ``client``, ``runner``, plus the model bundles.

Web tests get ``app_bundle``: the served ensembles over ``tests.fakes.FakeBank`` (MLServer's
fake runtimes), so they never run the nine-member CNN; ``shipped_bundle`` is the committed
artifact, loaded once, for the tests that must see the real models. Each test gets its own
SQLite file under ``tmp_path``; a module marked ``postgres`` also runs each test on a fresh
database of a throwaway PostgreSQL cluster (``tests/postgres.py``, one per session;
``CHORUS_TEST_POSTGRES_URL`` names a server of your own instead).
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from sqlalchemy import Engine

from app import create_app
from bench.scale import trouser_png
from ensembles.base import NoMembersLeftError
from ensembles.bundle import EnsembleBundle, load_bundle
from models.data import FASHION_MNIST_CLASSES
from models.registry import ARTIFACT_ROOT, ArtifactError
from store.db import make_engine
from store.migrate import upgrade
from tests.fakes import fake_bundle
from tests.postgres import (
    TEMPLATE,
    Database,
    Databases,
    PostgresCluster,
    PostgresUnavailable,
    external,
)

ADMIN_PASSWORD = "s3cret-admin"


@pytest.fixture
def app_bundle() -> EnsembleBundle:
    """The served ensembles over a fresh fake bank (a test may break its members)."""
    return fake_bundle(FASHION_MNIST_CLASSES)


@pytest.fixture(scope="session")
def shipped_bundle() -> EnsembleBundle:
    """The committed artifact's ensembles, loaded once: loading costs about a second."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    root = Path(os.environ.get("CHORUS_TEST_ARTIFACT_ROOT", ARTIFACT_ROOT))
    try:
        bundle = load_bundle(root=root)
    except ArtifactError as exc:
        pytest.fail(f"{exc}. Set CHORUS_TEST_ARTIFACT_ROOT to a folder of artifacts.")
    bundle.warm_up()
    return bundle


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "postgres: run each test on SQLite and on PostgreSQL (the `database` fixture)"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked ``postgres`` that use ``database`` (``make_app`` does) run on both stores."""
    if "database" in metafunc.fixturenames and metafunc.definition.get_closest_marker("postgres"):
        metafunc.parametrize("database", ["sqlite", "postgres"], indirect=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Databases]:
    """A PostgreSQL server for the session, with a migrated template; skips saying why not."""
    override = os.environ.get("CHORUS_TEST_POSTGRES_URL")
    cluster: PostgresCluster | None = None
    try:
        if override:
            databases = external(override)
        else:
            cluster = PostgresCluster()
            databases = cluster.start()
        databases.prepare_template()
    except PostgresUnavailable as exc:
        if cluster is not None:
            cluster.stop()
        pytest.skip(f"PostgreSQL cannot be had: {exc}")
    try:
        yield databases
    finally:
        if cluster is not None:
            cluster.stop()
        else:
            databases.drop_made()
            databases.drop(TEMPLATE)


@pytest.fixture
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """SQLite unless parametrised (``postgres`` marker); Postgres databases dropped at the end."""
    backend = getattr(request, "param", "sqlite")
    if backend == "sqlite":
        yield Database(backend, tmp_path)
        return
    made = Database(backend, tmp_path, request.getfixturevalue("postgres"))
    try:
        yield made
    finally:
        made.drop()


@pytest.fixture
def engine(database: Database) -> Iterator[Engine]:
    """An engine on the test's database, migrated to head, disposed at the end."""
    engine = make_engine(database.url())
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def make_app(app_bundle: EnsembleBundle, database: Database) -> Iterator[Callable[..., Flask]]:
    """Build an app with test defaults overridden by keyword arguments."""
    apps: list[Flask] = []

    def make(**overrides: Any) -> Flask:
        config = {
            "TESTING": True,
            "SECRET_KEY": "test",
            "BUNDLE": app_bundle,
            "WTF_CSRF_ENABLED": False,
            "ADMIN_PASSWORD": ADMIN_PASSWORD,
        }
        config.update(overrides)
        if "DATABASE_URL" not in config:
            config["DATABASE_URL"] = database.url(len(apps))
        app = create_app(config)
        apps.append(app)
        return app

    yield make
    for app in apps:  # close the SQLite files (ResourceWarnings are errors here)
        app.extensions["chorus_store"].close()


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    return app.test_cli_runner()


def _basic_auth(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
def basic_auth() -> Callable[[str, str], dict[str, str]]:
    """Build an HTTP Basic ``Authorization`` header."""
    return _basic_auth


@pytest.fixture
def admin_headers() -> dict[str, str]:
    return _basic_auth("admin", ADMIN_PASSWORD)


@pytest.fixture
def admin_credentials() -> dict[str, str]:
    """The admin login as a browser's HTTP credentials (Playwright's ``http_credentials``)."""
    return {"username": "admin", "password": ADMIN_PASSWORD}


@pytest.fixture
def break_ensemble(
    app_bundle: EnsembleBundle, monkeypatch: pytest.MonkeyPatch
) -> Callable[[str], str]:
    """Make one strategy's ensemble fail as if every member had died; returns the message."""

    def apply(strategy: str) -> str:
        message = f"{strategy}: all members failed or produced non-finite output"

        def fail(x: Any) -> None:
            raise NoMembersLeftError(message)

        monkeypatch.setattr(app_bundle.ensembles[strategy], "predict", fail)
        return message

    return apply


@pytest.fixture
def create_experiment(
    client: FlaskClient, admin_headers: dict[str, str]
) -> Callable[[str, str], None]:
    """``create_experiment(name, strategy)``: bagging against boosting, created as the admin."""

    def create(name: str, strategy: str) -> None:
        made = client.post(
            "/api/v1/inference/ensemble",
            json={
                "name": name,
                "strategy": strategy,
                "models": [{"model_id": "bagging"}, {"model_id": "boosting"}],
            },
            headers=admin_headers,
        )
        assert made.status_code == 201, made.get_json()

    return create


@pytest.fixture(scope="session")
def image_png() -> bytes:
    """A Fashion-MNIST-like 28x28 PNG: a light trouser shape on black (the benchmarks' too)."""
    return trouser_png()


@pytest.fixture
def upload(image_png: bytes) -> Callable[..., tuple[io.BytesIO, str]]:
    """A fresh multipart file tuple (the test client consumes its stream)."""

    def make(data: bytes | None = None, name: str = "item.png") -> tuple[io.BytesIO, str]:
        return io.BytesIO(image_png if data is None else data), name

    return make
