"""Model versions through the API: list, activate, refuse, 409/force/resume, follow, restart.

Three real tiny versions trained by the project's CLI: ``tiny`` (3+3 members), ``tiny-refit``
(the same members, refitted) and ``tiny-small`` (2+2 members, so it lacks ``bagging-2``). Two
apps on one database stand for two workers or instances; the follower polls inline here.
"""

from __future__ import annotations

import io
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy.exc import OperationalError

import store
from ensembles.train import parse_args, train
from models.registry import MEMBERS_FILE
from tests.ml.conftest import TINY_ARGS

pytestmark = pytest.mark.postgres


def _small_args(root: Path) -> list[str]:
    args = list(TINY_ARGS)
    for flag, value in (
        ("--bagging-members", "2"),
        ("--boosting-members", "2"),
        ("--stages", "4"),
        ("--version", "tiny-small"),
    ):
        args[args.index(flag) + 1] = value
    return args + ["--out", str(root)]


@pytest.fixture(scope="session")
def versions_source(tiny_refit_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny, tiny-refit and tiny-small (the newest) in one root, and nothing else (other
    tests may have added versions to the shared tiny roots)."""
    root = tmp_path_factory.mktemp("versions") / "artifacts"
    for version in ("tiny", "tiny-refit"):
        shutil.copytree(tiny_refit_root / version, root / version)
    train(parse_args(_small_args(root)))
    return root


@pytest.fixture
def versions_root(versions_source: Path, tmp_path: Path) -> Path:
    """A private copy a test may corrupt."""
    root = tmp_path / "artifacts"
    shutil.copytree(versions_source, root)
    return root


@pytest.fixture
def version_app(
    make_app: Callable[..., Flask], versions_root: Path, database: Any
) -> Callable[..., Flask]:
    """An app over the three versions on the test's one database (call it twice: two workers)."""
    url = database.url(0)  # Postgres: each call makes a new database

    def make(**overrides: Any) -> Flask:
        app = make_app(
            BUNDLE=None,
            ARTIFACT_ROOT=versions_root,
            DATABASE_URL=url,
            RUNTIME="torch",
            **overrides,
        )
        app.extensions["chorus"].versions.interval = 0.0  # poll before every request
        return app

    return make


def predict(client: Any, image_png: bytes, strategy: str = "bagging") -> Any:
    return client.post(
        "/api/v1/predict", data={"image": (io.BytesIO(image_png), "x.png"), "strategy": strategy}
    )


def activate(client: Any, headers: dict, version: str, **body: Any) -> Any:
    return client.post(f"/api/v1/models/{version}/activate", json=body or None, headers=headers)


def create_trio(client: Any, headers: dict, aggregation: str) -> None:
    """A created ensemble over bagging-0..2: tiny has them, tiny-small lacks bagging-2."""
    created = client.post(
        "/api/v1/inference/ensemble",
        json={
            "name": "trio",
            "strategy": "ensemble",
            "aggregation": aggregation,
            "models": [{"model_id": f"bagging-{i}"} for i in range(3)],
        },
        headers=headers,
    )
    assert created.status_code == 201, created.get_json()


def test_models_lists_every_version_with_its_manifest_facts(version_app, admin_headers):
    client = version_app(MODEL_VERSION="tiny").test_client()
    assert client.get("/api/v1/models").status_code == 401
    body = client.get("/api/v1/models", headers=admin_headers).get_json()
    assert body["active"] == "tiny"
    assert [v["version"] for v in body["versions"]] == ["tiny-small", "tiny-refit", "tiny"]
    assert [v["active"] for v in body["versions"]] == [False, False, True]
    card = body["versions"][2]
    assert set(card["metrics"]) >= {"bagging", "boosting", "stacking"}
    assert 0 < card["metrics"]["bagging"]["accuracy"] <= 1 and card["metrics"]["bagging"]["nll"]
    assert card["created_at"] and card["code"]["commit"] and card["command"]
    assert card["size_bytes"] == sum(card["files"].values()) > 0
    assert card["cnn"] == {"stages": [4, 8], "members": 6}
    assert body["versions"][0]["cnn"] == {"stages": [4], "members": 4}
    assert body["activations"] == []


def test_activate_switches_this_worker_and_records_who_and_when(
    version_app, admin_headers, image_png
):
    client = version_app(MODEL_VERSION="tiny").test_client()
    assert predict(client, image_png).get_json()["model_version"] == "tiny"
    answer = activate(client, admin_headers, "tiny-refit")
    assert answer.status_code == 200, answer.get_json()
    body = answer.get_json()
    assert body["active"] == "tiny-refit" and body["previous"] == "tiny" and body["changed"]
    assert body["activation"]["actor"] == "admin" and body["activation"]["at"]
    assert predict(client, image_png).get_json()["model_version"] == "tiny-refit"
    assert client.get("/readyz").get_json()["model_version"] == "tiny-refit"
    history = client.get("/api/v1/models", headers=admin_headers).get_json()["activations"]
    assert [(a["version"], a["previous"]) for a in history] == [("tiny-refit", "tiny")]
    # Rollback is activating the previous version.
    assert activate(client, admin_headers, "tiny").status_code == 200
    assert predict(client, image_png).get_json()["model_version"] == "tiny"


def test_another_worker_follows_within_its_poll(version_app, admin_headers, image_png):
    first = version_app(MODEL_VERSION="tiny").test_client()
    second = version_app(MODEL_VERSION="tiny").test_client()
    assert predict(second, image_png).get_json()["model_version"] == "tiny"
    assert activate(first, admin_headers, "tiny-small").status_code == 200
    assert predict(second, image_png).get_json()["model_version"] == "tiny-small"


def test_a_restarted_worker_serves_the_activated_version(version_app, admin_headers, image_png):
    client = version_app(MODEL_VERSION="tiny").test_client()
    assert activate(client, admin_headers, "tiny-refit").status_code == 200
    restarted = version_app(MODEL_VERSION="tiny").test_client()  # MODEL_VERSION loses to it
    assert predict(restarted, image_png).get_json()["model_version"] == "tiny-refit"


@pytest.mark.parametrize(
    ("version", "body", "status"),
    [
        ("no-such-version", None, 404),
        ("..%2F..%2Fetc", None, 404),
        ("tiny-refit", {"force": "yes"}, 400),
    ],
)
def test_bad_activations_are_refused_and_nothing_changes(
    version_app, admin_headers, version, body, status
):
    client = version_app(MODEL_VERSION="tiny").test_client()
    answer = client.post(f"/api/v1/models/{version}/activate", json=body, headers=admin_headers)
    assert answer.status_code == status and answer.get_json()["error"]
    assert client.get("/readyz").get_json()["model_version"] == "tiny"
    assert client.get("/api/v1/models", headers=admin_headers).get_json()["activations"] == []


def test_activation_needs_admin_and_json(version_app, admin_headers):
    client = version_app(MODEL_VERSION="tiny").test_client()
    assert client.post("/api/v1/models/tiny-refit/activate").status_code == 401
    form = client.post(
        "/api/v1/models/tiny-refit/activate", data={"force": "1"}, headers=admin_headers
    )
    assert form.status_code == 415


def test_a_version_that_fails_verification_is_refused_and_the_old_one_serves(
    version_app, versions_root, admin_headers, image_png
):
    client = version_app(MODEL_VERSION="tiny").test_client()
    weights = versions_root / "tiny-refit" / MEMBERS_FILE
    weights.write_bytes(weights.read_bytes()[:-64] + b"\0" * 64)
    answer = activate(client, admin_headers, "tiny-refit")
    assert answer.status_code == 422
    assert "sha256" in answer.get_json()["error"] and "keeps serving" in answer.get_json()["error"]
    assert predict(client, image_png).get_json()["model_version"] == "tiny"
    assert client.get("/api/v1/models", headers=admin_headers).get_json()["activations"] == []


def test_a_breaking_version_is_409_unless_forced_which_pauses_and_rollback_resumes(
    version_app, admin_headers, image_png
):
    client = version_app(MODEL_VERSION="tiny").test_client()
    create_trio(client, admin_headers, "average")
    experiment = client.post(
        "/api/v1/inference/ensemble",
        json={
            "name": "trio-vs-bagging",
            "strategy": "weighted",
            "models": [{"model_id": "bagging", "weight": 1}, {"model_id": "trio", "weight": 1}],
        },
        headers=admin_headers,
    )
    assert experiment.status_code == 201, experiment.get_json()

    refused = activate(client, admin_headers, "tiny-small")
    assert refused.status_code == 409
    message = refused.get_json()["error"]
    assert "trio (ensemble, missing bagging-2)" in message
    assert "trio-vs-bagging (experiment, missing trio)" in message and '"force": true' in message
    assert client.get("/readyz").get_json()["model_version"] == "tiny"

    forced = activate(client, admin_headers, "tiny-small", force=True).get_json()
    assert forced["active"] == "tiny-small"
    assert forced["paused"] == ["trio", "trio-vs-bagging"] and forced["unservable"] == []
    definitions = client.get("/api/v1/inference/ensemble", headers=admin_headers).get_json()
    statuses = {d["name"]: d["status"] for kind in definitions.values() for d in kind}
    assert statuses["trio"] == "paused" and statuses["trio-vs-bagging"] == "paused"
    assert predict(client, image_png, "trio").status_code == 409
    assert predict(client, image_png, "bagging").get_json()["model_version"] == "tiny-small"

    back = activate(client, admin_headers, "tiny").get_json()
    assert back["resumed"] == ["trio", "trio-vs-bagging"] and back["paused"] == []
    answer = predict(client, image_png, "trio")
    assert answer.status_code == 200 and answer.get_json()["model_version"] == "tiny"
    assert predict(client, image_png, "trio-vs-bagging").status_code == 200


def test_a_database_outage_during_the_poll_keeps_the_version_serving(
    version_app, image_png, monkeypatch, caplog
):
    client = version_app(MODEL_VERSION="tiny").test_client()

    def down(session: Any) -> None:
        raise OperationalError("SELECT", {}, Exception("connection refused"))

    monkeypatch.setattr(store, "active_activation", down)
    with caplog.at_level(logging.WARNING, logger="serving.versions"):
        for _ in range(3):
            assert predict(client, image_png).get_json()["model_version"] == "tiny"
    warnings = [r for r in caplog.records if "cannot read the active model version" in r.message]
    assert len(warnings) == 1  # once a minute, not once a request


def test_an_activated_version_that_no_longer_loads_falls_back_at_start(
    version_app, versions_root, admin_headers, image_png
):
    client = version_app(MODEL_VERSION="tiny").test_client()
    assert activate(client, admin_headers, "tiny-refit").status_code == 200
    (versions_root / "tiny-refit" / MEMBERS_FILE).write_bytes(b"broken")
    restarted = version_app(MODEL_VERSION="tiny").test_client()
    assert predict(restarted, image_png).get_json()["model_version"] == "tiny"


def test_the_console_lists_versions_side_by_side_and_activates(
    version_app, admin_headers, image_png
):
    client = version_app(MODEL_VERSION="tiny").test_client()
    page = client.get("/admin/models", headers=admin_headers)
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    for version in ("tiny", "tiny-refit", "tiny-small"):
        assert f"<code>{version}</code>" in html
    assert html.count('aria-label="Activate tiny') == 2  # the active one has no button
    assert "Bagging accuracy" in html and "MiB" in html and "4 × 4" in html  # tiny-small's shape
    done = client.post("/admin/models/tiny-refit/activate", headers=admin_headers)
    assert done.status_code == 303
    assert predict(client, image_png).get_json()["model_version"] == "tiny-refit"
    html = client.get("/admin/models", headers=admin_headers).get_data(as_text=True)
    assert "Now serving tiny-refit" in html and "<td>admin</td>" in html


def test_the_console_shows_a_conflict_with_a_force_button(version_app, admin_headers):
    client = version_app(MODEL_VERSION="tiny").test_client()
    create_trio(client, admin_headers, "vote")
    refused = client.post("/admin/models/tiny-small/activate", headers=admin_headers)
    assert refused.status_code == 409
    html = refused.get_data(as_text=True)
    assert "trio (ensemble, missing bagging-2)" in html and 'name="force" value="1"' in html
    forced = client.post(
        "/admin/models/tiny-small/activate", data={"force": "1"}, headers=admin_headers
    )
    assert forced.status_code == 303
    assert client.get("/readyz").get_json()["model_version"] == "tiny-small"


def test_the_console_activation_needs_its_csrf_token(version_app, admin_headers):
    client = version_app(MODEL_VERSION="tiny", WTF_CSRF_ENABLED=True).test_client()
    assert (
        client.post("/admin/models/tiny-refit/activate", headers=admin_headers).status_code == 400
    )
    assert client.get("/readyz").get_json()["model_version"] == "tiny"


SWITCH_S = 3.0  # DESIGN.md: every worker serves an activated version within three seconds


@pytest.mark.slow
def test_every_gunicorn_worker_switches_within_three_seconds_and_back(
    versions_source: Path, tmp_path: Path, image_png: bytes
):
    """Two real workers: after an activation through one, every answer that starts more than
    SWITCH_S later, from either worker, is the new version; the same for the rollback."""
    from bench.load import Client, GunicornServer, admin_request
    from tests.servers import predict as timed_predict
    from tests.servers import watch

    env = {
        "WEB_CONCURRENCY": "2",
        "ARTIFACT_ROOT": str(versions_source),
        "MODEL_VERSION": "tiny",
        "ONNX_CACHE_DIR": str(tmp_path / "onnx"),
    }
    with GunicornServer(tmp_path, env=env) as server:
        workers = set(server.worker_pids())
        for version, was in (("tiny-refit", "tiny"), ("tiny", "tiny-refit")):
            status, body = admin_request(
                server.url, server.admin_password, "POST", f"/api/v1/models/{version}/activate"
            )
            activated = time.monotonic()
            assert status == 200 and body["previous"] == was, body
            answers = watch(server, image_png, "bagging", activated + SWITCH_S + 1.5)
            assert all(a.status == 200 for a in answers)
            late = [a for a in answers if a.started > activated + SWITCH_S]
            pids = server.workers_of([a.request_id for a in late])
            assert {pids[a.request_id] for a in late} == workers, "a worker saw no late traffic"
            stale = [(a.started - activated, a.body["model_version"]) for a in late]
            assert all(v == version for _, v in stale), stale
            first_new = min(
                a.started - activated for a in answers if a.body["model_version"] == version
            )
            assert first_new < SWITCH_S
        with Client(server.url) as client:
            assert timed_predict(client, image_png, "bagging").body["model_version"] == "tiny"
