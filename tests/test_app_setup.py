"""create_app configuration, health probes, request ids, security headers and the CLI."""

from __future__ import annotations

import logging

import pytest
import torch
from sqlalchemy.exc import OperationalError

import store
from app import ConfigError, create_app
from views.hooks import RequestIdFilter


def test_secret_key_is_required_outside_debug_and_testing(monkeypatch, app_bundle, tmp_path):
    monkeypatch.delenv("SECRET_KEY", raising=False)
    monkeypatch.delenv("FLASK_DEBUG", raising=False)
    with pytest.raises(ConfigError, match="SECRET_KEY is not set"):
        create_app({"BUNDLE": app_bundle, "DATABASE_URL": f"sqlite:///{tmp_path}/x.db"})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("AB_SPLIT", "1.5"),
        ("AB_SPLIT", "-0.1"),
        ("AB_SPLIT", "half"),
        ("AB_SPLIT", "nan"),
        ("MAX_UPLOAD_MB", "0"),
        ("MAX_UPLOAD_MB", "ten"),
        ("LOG_LEVEL", "chatty"),
        ("DATABASE_URL", "not a url"),
        ("DATABASE_URL", "postgresql+nosuchdriver://u@db/x"),
    ],
)
def test_bad_settings_in_the_environment_refuse_to_start(monkeypatch, make_app, key, value):
    monkeypatch.setenv(key, value)
    overrides = {"DATABASE_URL": value} if key == "DATABASE_URL" else {}  # tests set their own
    with pytest.raises(ConfigError, match=key):
        make_app(**overrides)


def test_environment_is_read(monkeypatch, app_bundle, tmp_path, basic_auth):
    environment = {
        "SECRET_KEY": "from-env-" + "k" * 32,
        "AB_SPLIT": "0.25",
        "MAX_UPLOAD_MB": "2",
        "ADMIN_PASSWORD": "env-password",
        "DATABASE_URL": f"sqlite:///{tmp_path}/env.db",
        "MODEL_VERSION": app_bundle.version,
    }
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    root = logging.getLogger()
    level = root.level
    app = create_app({"BUNDLE": app_bundle})  # not TESTING: configures logging as in production
    try:
        assert any(isinstance(f, RequestIdFilter) for h in root.handlers for f in h.filters)
        assert app.config["SECRET_KEY"] == "from-env-" + "k" * 32
        assert app.config["AB_SPLIT"] == 0.25
        assert app.config["MAX_UPLOAD_BYTES"] == 2 * 2**20
        assert app.config["MAX_CONTENT_LENGTH"] > app.config["MAX_UPLOAD_BYTES"]
        assert app.extensions["chorus_store"].engine.url.database == f"{tmp_path}/env.db"
        admin = app.test_client().get("/admin", headers=basic_auth("admin", "env-password"))
        assert admin.status_code == 200
    finally:
        root.setLevel(level)
        for handler in root.handlers:
            for log_filter in [f for f in handler.filters if isinstance(f, RequestIdFilter)]:
                handler.removeFilter(log_filter)
        app.extensions["chorus_store"].close()


def test_torch_uses_torch_threads(monkeypatch, make_app):
    before = torch.get_num_threads()
    monkeypatch.setenv("TORCH_THREADS", "1")
    make_app()
    assert torch.get_num_threads() == 1
    torch.set_num_threads(before)


def test_healthz_and_readyz(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["status"] == "ready"


def test_not_ready_without_a_model(make_app, tmp_path, upload):
    app = make_app(BUNDLE=None, ARTIFACT_ROOT=tmp_path / "no-artifacts")
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 503 and "no model loaded" in ready.get_json()["error"]
    api = client.post("/api/v1/predict", data={"image": upload(), "strategy": "bagging"})
    assert api.status_code == 503 and "No model is loaded" in api.get_json()["error"]
    assert "No model is loaded" in client.get("/").get_data(as_text=True)


def test_not_ready_without_a_database(client, monkeypatch):
    def down(session):
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    monkeypatch.setattr(store, "ping", down)
    ready = client.get("/readyz")
    assert ready.status_code == 503 and "database unreachable" in ready.get_json()["error"]


@pytest.mark.parametrize("path", ["/", "/api/v1/stats", "/no-such-page", "/healthz"])
def test_security_headers(client, path):
    headers = client.get(path).headers
    csp = headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "img-src 'self' data:" in csp
    assert "unsafe-inline" not in csp and "script-src 'self'" in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "same-origin"
    assert headers["X-Frame-Options"] == "DENY"


@pytest.mark.parametrize(
    ("given", "kept"),
    [("req-123.abc:7", True), ("x" * 129, False), ("bad id", False), ("<script>", False)],
)
def test_request_id_is_echoed_when_sane(client, given, kept):
    returned = client.get("/healthz", headers={"X-Request-ID": given}).headers["X-Request-ID"]
    assert (returned == given) is kept
    assert returned and " " not in returned


def test_log_records_carry_the_request_id(app):
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "msg", (), None)
    RequestIdFilter().filter(record)
    assert record.request_id == "-"
    with app.test_request_context(headers={"X-Request-ID": "abc-123"}):
        app.preprocess_request()
        RequestIdFilter().filter(record)
    assert record.request_id == "abc-123"


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(app):
    from sqlalchemy import text

    with app.app_context():
        session = store.get_session()
        assert session.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert session.execute(text("PRAGMA busy_timeout")).scalar() == 5000
        assert session.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL


def test_init_db_command(app, runner, client, upload):
    client.post("/api/v1/predict", data={"image": upload(), "strategy": "bagging"})
    result = runner.invoke(args=["init-db"])
    assert result.exit_code == 0 and "Initialized the database" in result.output
    with app.app_context():
        assert store.total_predictions(store.get_session()) == 1
    result = runner.invoke(args=["init-db", "--reset", "--yes"])
    assert result.exit_code == 0
    with app.app_context():
        assert store.total_predictions(store.get_session()) == 0


def test_simulate_command(app, runner, admin_headers):
    result = runner.invoke(args=["simulate", "--n", "20", "--seed", "1", "--client-ids", "5"])
    assert result.exit_code == 0, result.output
    body = app.test_client().get("/api/v1/experiments/ab/results", headers=admin_headers).get_json()
    arms = body["arms"]
    assert arms["bagging"]["served"] + arms["boosting"]["served"] == 20
    assert arms["bagging"]["labelled"] + arms["boosting"]["labelled"] == 20
    with app.app_context():
        hashes = {r.client_hash for r in store.recent_predictions(store.get_session(), 50)}
    assert 1 <= len(hashes) <= 5


def test_simulate_anonymous_clients(runner):
    result = runner.invoke(args=["simulate", "--n", "4", "--client-ids", "0"])
    assert result.exit_code == 0, result.output


def test_simulate_without_a_model_fails_at_once(make_app, tmp_path):
    app = make_app(BUNDLE=None, ARTIFACT_ROOT=tmp_path / "no-artifacts")
    result = app.test_cli_runner().invoke(args=["simulate", "--n", "3"])
    assert result.exit_code == 1
    assert "No model is loaded" in result.output


def test_simulate_fails_when_every_request_fails(runner, break_ensemble):
    break_ensemble("bagging")
    break_ensemble("boosting")
    result = runner.invoke(args=["simulate", "--n", "3"])
    assert result.exit_code == 1
    assert "All 3 simulated requests failed" in result.output


def test_simulate_carries_on_past_one_broken_arm(app, runner, admin_headers, break_ensemble):
    break_ensemble("boosting")
    result = runner.invoke(args=["simulate", "--n", "12", "--client-ids", "0"])
    assert result.exit_code == 0, result.output
    arms = (
        app.test_client()
        .get("/api/v1/experiments/ab/results", headers=admin_headers)
        .get_json()["arms"]
    )
    assert arms["boosting"]["served"] == 0 and arms["boosting"]["errors"] > 0
    assert arms["bagging"]["served"] + arms["boosting"]["errors"] == 12
    assert arms["bagging"]["labelled"] == arms["bagging"]["served"]


def test_simulate_without_the_data_set_says_where_to_get_it(runner, monkeypatch):
    monkeypatch.setattr("views.samples.test_split", lambda: None)
    result = runner.invoke(args=["simulate", "--n", "3"])
    assert result.exit_code == 1
    assert "FASHION_MNIST_DIR" in result.output


def test_the_routes_are_the_designed_ones(app):
    """DESIGN.md's HTTP interface (with V2, metrics and monitoring), plus the stored-prediction
    pages; nothing else is exposed."""
    routes = {
        (rule.rule, method)
        for rule in app.url_map.iter_rules()
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    names = [*app.extensions["chorus"].models.bundle.ensembles, "ab"]
    pages = {(f"/{name}", m) for name in names for m in ("GET", "POST")}
    assert routes == pages | {
        ("/", "GET"),
        ("/predict", "GET"),
        ("/predict", "POST"),
        ("/predictions/<prediction_id>", "GET"),
        ("/predictions/<prediction_id>/feedback", "POST"),
        ("/api/v1/predict", "POST"),
        ("/api/v1/predictions/<prediction_id>/feedback", "POST"),
        ("/api/v1/predictions/<prediction_id>/feedback", "PUT"),
        ("/api/v1/inference/ensemble", "GET"),
        ("/api/v1/inference/ensemble", "POST"),
        ("/api/v1/inference/ensemble/<name>", "GET"),
        ("/api/v1/inference/ensemble/<name>", "DELETE"),
        ("/api/v1/experiments", "GET"),
        ("/api/v1/experiments/<name>", "GET"),
        ("/api/v1/experiments/<name>", "PATCH"),
        ("/api/v1/experiments/<name>/promote", "POST"),
        ("/api/v1/experiments/<name>/rollback", "POST"),
        ("/api/v1/experiments/<name>/stop", "POST"),
        ("/api/v1/experiments/<name>/results", "GET"),
        ("/api/v1/experiments/<name>/report", "GET"),
        ("/api/v1/stats", "GET"),
        ("/api/v1/monitoring", "GET"),
        ("/api/v1/models", "GET"),
        ("/api/v1/models/<version>/activate", "POST"),
        ("/metrics", "GET"),
        ("/v2", "GET"),
        ("/v2/health/live", "GET"),
        ("/v2/health/ready", "GET"),
        *{
            (f"/v2/models/<name>{version}{tail}", method)
            for version in ("", "/versions/<version>")
            for tail, method in (("", "GET"), ("/ready", "GET"), ("/infer", "POST"))
        },
        ("/admin", "GET"),
        ("/admin/experiments", "GET"),
        ("/admin/experiments", "POST"),
        ("/admin/experiments/<name>", "GET"),
        ("/admin/experiments/<name>/report", "GET"),
        ("/admin/experiments/<name>/<verb>", "POST"),
        ("/admin/feedback", "GET"),
        ("/admin/feedback", "POST"),
        ("/admin/monitoring", "GET"),
        ("/admin/models", "GET"),
        ("/admin/predictions", "GET"),
        ("/admin/predictions.csv", "GET"),
        ("/admin/models/<version>/activate", "POST"),
        ("/healthz", "GET"),
        ("/readyz", "GET"),
        ("/static/<path:filename>", "GET"),
    }


def test_the_version_follower_starts_once_and_survives_a_failing_poll(
    app, monkeypatch, caplog
) -> None:
    """Eight first requests at once start one follower thread; a poll raising something other
    than a database error is logged and the loop polls again (it used to end the thread)."""
    import threading

    versions = app.extensions["chorus"].versions
    calls, parked = [], threading.Event()

    def poll() -> bool:
        calls.append(threading.current_thread().name)
        if len(calls) <= 2:
            raise RuntimeError("a bug in the poll")
        parked.set()
        threading.Event().wait()  # park the daemon thread for the rest of the session
        return False

    monkeypatch.setattr(versions, "poll", poll)
    monkeypatch.setattr(versions, "background", True)
    monkeypatch.setattr(versions, "interval", 0.001)
    monkeypatch.setattr(versions, "_thread_pid", None)
    caplog.set_level(logging.ERROR, logger="serving.versions")
    barrier = threading.Barrier(8)
    before = {t.ident for t in threading.enumerate() if t.name == "chorus-versions"}

    def first_request() -> None:
        barrier.wait()
        versions.follow()

    callers = [threading.Thread(target=first_request) for _ in range(8)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert parked.wait(10), calls
    followers = [
        t for t in threading.enumerate() if t.name == "chorus-versions" and t.ident not in before
    ]
    assert len(followers) == 1 and calls == ["chorus-versions"] * 3
    logged = [r for r in caplog.records if "a poll failed" in r.getMessage()]
    assert len(logged) == 1  # at most once a minute
