"""The app's own hardening (issue 10, "a front that survives the internet"): failed admin
sign-ins limited per address across workers, Secure cookies and HSTS behind TLS, a long
SECRET_KEY, forwarded headers trusted only from the proxy, small JSON bodies, log lines a client
cannot forge, readiness and error answers without exception text, and idempotent predictions."""

from __future__ import annotations

import io
import logging
import re
import time
from collections.abc import Callable
from datetime import timedelta

import pytest
from flask import Flask
from PIL import Image
from sqlalchemy.exc import OperationalError

from app import ConfigError, create_app
from models.preprocess import DEFAULT_MAX_PIXELS, decode
from serving.idempotency import fingerprint, scope_of
from store.idempotency import claim_key
from views import images
from views.context import EXTENSION
from views.hooks import HSTS, JSON_BODY_LIMIT, loggable

WRONG = {"Authorization": "Basic YWRtaW46d3Jvbmc="}  # admin:wrong
STATS = "/api/v1/stats"


def _fail(client, times: int, **kwargs) -> list[int]:
    return [client.get(STATS, headers=WRONG, **kwargs).status_code for _ in range(times)]


# -- failed admin authentications ------------------------------------------------------------
@pytest.mark.postgres
def test_the_101st_failure_in_an_hour_is_a_429_and_then_every_sign_in_waits(
    make_app: Callable[..., Flask], admin_headers, caplog
) -> None:
    client = make_app().test_client()
    caplog.set_level(logging.WARNING, logger="views.auth")
    assert client.get(STATS, headers=admin_headers).status_code == 200  # counts nothing
    assert set(_fail(client, 100)) == {401}
    refused = client.get(STATS, headers=WRONG)
    assert refused.status_code == 429
    retry_after = int(refused.headers["Retry-After"])
    assert 3590 <= retry_after <= 3600
    assert "Too many failed sign-ins" in refused.get_json()["error"]
    # The right password waits too: a 200 among 429s would tell a guesser when it guessed.
    right = client.get(STATS, headers=admin_headers)
    assert right.status_code == 429
    # The same answer as a wrong guess (but the seconds to wait, which tick on).
    assert re.sub(r"\d+ s", "N s", right.get_json()["error"]) == re.sub(
        r"\d+ s", "N s", refused.get_json()["error"]
    )
    assert 3590 <= int(right.headers["Retry-After"]) <= retry_after
    # Another address has its own count.
    other = client.get(STATS, headers=WRONG, environ_base={"REMOTE_ADDR": "10.0.0.2"})
    assert other.status_code == 401
    failures = [r for r in caplog.records if "authentication failed from" in r.getMessage()]
    assert len(failures) == 101 and "wrong" not in caplog.text  # logged, never the password
    assert "from 127.0.0.1 (user admin)" in failures[0].getMessage()
    assert any("authentication refused from 127.0.0.1" in r.getMessage() for r in caplog.records)


@pytest.mark.postgres
def test_the_limit_is_shared_by_every_worker_on_the_database(make_app, admin_headers) -> None:
    first = make_app(AUTH_FAILURE_LIMIT=6)
    second = make_app(AUTH_FAILURE_LIMIT=6, DATABASE_URL=first.config["DATABASE_URL"])
    assert _fail(first.test_client(), 3) == [401] * 3
    assert _fail(second.test_client(), 3) == [401] * 3
    assert _fail(first.test_client(), 1) == [429]
    assert _fail(second.test_client(), 1) == [429]


def test_requests_without_credentials_do_not_count(make_app, admin_headers) -> None:
    """A browser's first request, or an <img> on someone else's page pointing at /admin, sends
    no credentials: counted, they could lock the admin out of its own address for an hour."""
    client = make_app(AUTH_FAILURE_LIMIT=3).test_client()
    assert [client.get("/admin").status_code for _ in range(10)] == [401] * 10
    assert client.get(STATS, headers=admin_headers).status_code == 200
    assert _fail(client, 4) == [401, 401, 401, 429]  # attempts do count


def test_a_failure_limit_below_one_is_refused_at_start(make_app) -> None:
    """0 would lock admin for good (every request past a limit of none)."""
    with pytest.raises(ConfigError, match="AUTH_FAILURE_LIMIT"):
        make_app(AUTH_FAILURE_LIMIT=0)


def test_past_the_limit_by_more_retry_after_waits_for_enough_failures_to_age_out(
    make_app,
) -> None:
    """Two failures, then two more 2 s later; with the limit lowered to 2 the address is over it
    by two, so it is free when the third oldest ages out, not the oldest (which said ~4 s)."""
    loose = make_app(AUTH_FAILURE_LIMIT=10, AUTH_FAILURE_WINDOW=6.0)
    assert _fail(loose.test_client(), 2) == [401, 401]
    time.sleep(2.0)
    assert _fail(loose.test_client(), 2) == [401, 401]
    strict = make_app(
        AUTH_FAILURE_LIMIT=2, AUTH_FAILURE_WINDOW=6.0, DATABASE_URL=loose.config["DATABASE_URL"]
    )
    refused = strict.test_client().get(STATS, headers=WRONG)
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) >= 5


def test_old_failures_expire(make_app, admin_headers) -> None:
    client = make_app(AUTH_FAILURE_LIMIT=2, AUTH_FAILURE_WINDOW=1.0).test_client()
    assert _fail(client, 3) == [401, 401, 429]
    assert client.get(STATS, headers=admin_headers).status_code == 429
    time.sleep(1.1)
    assert client.get(STATS, headers=admin_headers).status_code == 200
    assert _fail(client, 1) == [401]


def test_forwarded_address_counts_only_behind_the_proxy(make_app) -> None:
    direct = make_app(AUTH_FAILURE_LIMIT=2).test_client()
    forged = [{"X-Forwarded-For": f"198.51.100.{n}", **WRONG} for n in range(3)]
    assert [direct.get(STATS, headers=h).status_code for h in forged] == [401, 401, 429]
    proxied = make_app(AUTH_FAILURE_LIMIT=2, TRUSTED_PROXIES=1).test_client()
    assert [proxied.get(STATS, headers=h).status_code for h in forged] == [401, 401, 401]


# -- cookies, HSTS, SECRET_KEY ---------------------------------------------------------------
def _cookies(response) -> dict[str, str]:
    return {h.split("=", 1)[0]: h for h in response.headers.getlist("Set-Cookie")}


def test_cookies_are_secure_over_https_as_the_proxy_reports(make_app) -> None:
    app = make_app(TRUSTED_PROXIES=1, WTF_CSRF_ENABLED=True)
    plain = app.test_client().get("/")
    assert plain.status_code == 200
    cookies = _cookies(plain)
    assert {"chorus_client", "session"} <= set(cookies)
    assert not any("Secure" in c for c in cookies.values())
    assert "Strict-Transport-Security" not in plain.headers

    https = app.test_client().get("/", headers={"X-Forwarded-Proto": "https"})
    cookies = _cookies(https)
    assert all("Secure" in cookies[name] for name in ("chorus_client", "session"))
    assert https.headers["Strict-Transport-Security"] == HSTS


def test_forwarded_proto_from_a_client_is_ignored_without_a_proxy(make_app) -> None:
    response = make_app().test_client().get("/", headers={"X-Forwarded-Proto": "https"})
    assert "Secure" not in response.headers["Set-Cookie"]
    assert "Strict-Transport-Security" not in response.headers


def test_session_cookie_secure_forces_secure_on_plain_http(monkeypatch, make_app) -> None:
    monkeypatch.setenv("SESSION_COOKIE_SECURE", "1")
    response = make_app().test_client().get("/")
    assert "Secure" in response.headers["Set-Cookie"]


def test_a_short_secret_key_is_refused_outside_debug(monkeypatch, app_bundle, tmp_path) -> None:
    monkeypatch.delenv("FLASK_DEBUG", raising=False)
    config = {"BUNDLE": app_bundle, "DATABASE_URL": f"sqlite:///{tmp_path}/k.db"}
    with pytest.raises(ConfigError, match="at least 32"):
        create_app({**config, "SECRET_KEY": "k" * 31})
    monkeypatch.setenv("FLASK_DEBUG", "1")
    create_app({**config, "SECRET_KEY": "short"}).extensions["chorus_store"].close()


def test_a_short_admin_password_is_refused_outside_debug(monkeypatch, app_bundle, tmp_path):
    """The sign-in limit slows guessing; a password of a few letters would still fall to it."""
    monkeypatch.delenv("FLASK_DEBUG", raising=False)
    config = {
        "BUNDLE": app_bundle,
        "DATABASE_URL": f"sqlite:///{tmp_path}/p.db",
        "SECRET_KEY": "k" * 32,
    }
    with pytest.raises(ConfigError, match="ADMIN_PASSWORD is 11 characters long"):
        create_app({**config, "ADMIN_PASSWORD": "x" * 11})
    create_app({**config, "ADMIN_PASSWORD": "x" * 12}).extensions["chorus_store"].close()
    create_app({**config, "ADMIN_PASSWORD": None}).extensions["chorus_store"].close()


# -- bodies, errors, logs ----------------------------------------------------------------------
def test_deeply_nested_feedback_is_a_400_and_big_json_a_413(client) -> None:
    url = "/api/v1/predictions/" + "a" * 32 + "/feedback"
    nested = "[" * 20_000 + "]" * 20_000
    response = client.post(url, data=nested, content_type="application/json")
    assert response.status_code == 400 and "nested too deeply" in response.get_json()["error"]
    big = '{"label": "' + "x" * JSON_BODY_LIMIT + '"}'
    response = client.post(url, data=big, content_type="application/json")
    assert response.status_code == 413 and "KiB" in response.get_json()["error"]


def test_a_body_cut_short_is_a_json_400_on_the_api(client) -> None:
    response = client.post(
        "/api/v1/predict",
        input_stream=io.BytesIO(b"--b\r\nConte"),
        content_type="multipart/form-data; boundary=b",
        headers={"Content-Length": "1000"},
    )
    assert response.status_code == 400 and response.is_json, response.data[:200]


def test_logged_paths_are_escaped(app, client, monkeypatch, caplog) -> None:
    def outage(*args, **kwargs):
        raise OperationalError("INSERT", {}, Exception("database is locked"))

    monkeypatch.setattr(app.extensions[EXTENSION].prediction, "feedback", outage)
    caplog.set_level(logging.ERROR, logger="views.errors")
    path = "/api/v1/predictions/abc%0a2026-12-02 INFO forged/feedback"
    assert client.post(path, json={"label": 1}).status_code == 503  # the raw target (gunicorn)
    no_raw = {"RAW_URI": "", "REQUEST_URI": ""}  # a server that gives only the decoded path
    assert client.post(path, json={"label": 1}, environ_overrides=no_raw).status_code == 503
    raw, decoded = [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()]
    assert "predictions/abc%0a2026-12-02 INFO forged/feedback: " in raw
    assert "predictions/abc\\n2026-12-02 INFO forged/feedback: " in decoded
    assert "\n" not in raw.split(": ", 1)[0] and "\n" not in decoded.split(": ", 1)[0]


def test_loggable_escapes_control_characters_and_cuts() -> None:
    assert loggable("a\r\nb\x1b[31m") == "a\\r\\nb\\x1b[31m"
    assert loggable(None) == "-" and loggable("x" * 500).endswith("...")


def test_readiness_and_errors_do_not_show_exception_text(make_app, tmp_path, upload, caplog):
    missing = tmp_path / "no-artifacts-here"
    caplog.set_level(logging.WARNING)
    app = make_app(BUNDLE=None, ARTIFACT_ROOT=missing)
    client = app.test_client()
    ready = client.get("/readyz")
    assert ready.status_code == 503
    answer = client.post("/api/v1/predict", data={"image": upload(), "strategy": "bagging"})
    for body in (ready.get_data(as_text=True), answer.get_data(as_text=True)):
        assert str(missing) not in body and "Error" not in body and "Traceback" not in body
    assert str(missing) in caplog.text  # the operator finds it in the log


# -- idempotent predictions --------------------------------------------------------------------
def _predict(client, upload, key=None, client_id=None, strategy="bagging"):
    data = {"image": upload(), "strategy": strategy}
    if client_id:
        data["client_id"] = client_id
    headers = {"Idempotency-Key": key} if key else {}
    return client.post("/api/v1/predict", data=data, headers=headers)


def _total(client, admin_headers) -> int:
    return client.get(STATS, headers=admin_headers).get_json()["total_predictions"]


@pytest.mark.postgres
def test_a_retry_with_the_same_key_gets_the_first_answer_and_records_nothing(
    make_app, upload, admin_headers
) -> None:
    first_app = make_app()
    other_worker = make_app(DATABASE_URL=first_app.config["DATABASE_URL"])
    client = first_app.test_client()
    first = _predict(client, upload, key="order-42", client_id="c-1")
    assert first.status_code == 200 and first.headers["Idempotent-Replayed"] == "false"
    retry = _predict(other_worker.test_client(), upload, key="order-42", client_id="c-1")
    assert retry.status_code == 200 and retry.headers["Idempotent-Replayed"] == "true"
    assert retry.get_json() == first.get_json()
    assert _total(client, admin_headers) == 1
    # Another client choosing the same key is another request.
    other = _predict(client, upload, key="order-42", client_id="c-2")
    assert other.get_json()["prediction_id"] != first.get_json()["prediction_id"]
    # No key: every request counts.
    _predict(client, upload)
    assert _total(client, admin_headers) == 3


def test_the_same_key_for_another_request_is_refused(client, upload) -> None:
    assert _predict(client, upload, key="k1").status_code == 200
    reused = _predict(client, upload, key="k1", strategy="boosting")
    assert reused.status_code == 400 and "different request" in reused.get_json()["error"]


def test_a_key_still_being_answered_is_a_409(app, client, upload, image_png) -> None:
    asked = fingerprint(image_png, "bagging", None, None)
    with app.extensions[EXTENSION].db.session() as session:
        assert claim_key(session, scope_of(None, "127.0.0.1"), "k2", asked, timedelta(hours=1))
    response = _predict(client, upload, key="k2")
    assert response.status_code == 409 and "still being answered" in response.get_json()["error"]


def test_a_failed_prediction_releases_its_key(client, upload, break_ensemble, admin_headers):
    break_ensemble("bagging")
    assert _predict(client, upload, key="k3").status_code == 503
    again = _predict(client, upload, key="k3")
    assert again.status_code == 503  # served anew (and failing anew), not "in progress"


@pytest.mark.parametrize("key", ["", " ", "x" * 129, "naïve"])
def test_a_malformed_key_is_a_400(client, upload, key) -> None:
    response = _predict(client, upload, key=key or None)
    if not key:
        assert response.status_code == 200  # an absent header is no key
        return
    assert response.status_code == 400 and "Idempotency-Key" in response.get_json()["error"]


# -- big uploads ---------------------------------------------------------------------------------
def test_a_40_megapixel_png_is_refused_from_its_header(client) -> None:
    buffer = io.BytesIO()
    Image.new("L", (8000, 5000), 255).save(buffer, format="PNG")
    started = time.perf_counter()
    response = client.post(
        "/api/v1/predict",
        data={"image": (io.BytesIO(buffer.getvalue()), "big.png"), "strategy": "bagging"},
    )
    assert time.perf_counter() - started < 0.5  # never decoded
    assert response.status_code == 413 and "8000x5000" in response.get_json()["error"]
    assert DEFAULT_MAX_PIXELS >= 5712 * 4284  # a 24 MP phone photo still passes


def test_the_result_page_does_not_decode_the_upload_again(client, upload, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(images, "decode", lambda *a, **k: calls.append(a) or decode(*a, **k))
    response = client.post("/bagging", data={"image": upload()})
    assert response.status_code == 303
    assert calls == []  # the thumbnail came from the image preprocessing decoded
    assert images.thumbnail_uri(b"", 10, preview=Image.new("RGB", (300, 200))).startswith(
        "data:image/png;base64,"
    )


def test_a_recursion_error_in_the_app_is_a_logged_500_not_the_clients_400(
    app, client, monkeypatch, caplog
) -> None:
    """Only JSON too deep to parse is the client's fault; a RecursionError of the app's own
    (say, a definition walked without a depth bound) is a bug: logged, and a 500."""

    def recurse(*_args: object) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(app.extensions[EXTENSION].prediction, "feedback", recurse)
    caplog.set_level(logging.ERROR, logger="views.errors")
    response = client.post(
        "/api/v1/predictions/" + "a" * 32 + "/feedback", json={"label": "Sneaker"}
    )
    assert response.status_code == 500 and "nested" not in response.get_json()["error"]
    assert any(r.exc_info and r.exc_info[0] is RecursionError for r in caplog.records)


def test_console_fields_nested_too_deep_are_a_form_error() -> None:
    from types import SimpleNamespace

    from experiments.spec import SpecError
    from views.admin.routes import form_body

    form = SimpleNamespace(extra=SimpleNamespace(data="[" * 100_000))
    with pytest.raises(SpecError, match="nested too deeply"):
        form_body(form)  # type: ignore[arg-type]


@pytest.mark.parametrize("header", ["Basic \xe4\xff", "Basic ünïcode", "Basic ="])
def test_an_authorization_header_werkzeug_cannot_read_is_a_401(client, header) -> None:
    """Non-ASCII after "Basic" made werkzeug's parser raise ValueError: a 500 on every admin
    route. It is no credentials at all: the challenge, and a counted failure."""
    for path in (STATS, "/admin"):
        response = client.get(path, environ_overrides={"HTTP_AUTHORIZATION": header})
        assert response.status_code == 401, path
        assert response.headers["WWW-Authenticate"].startswith("Basic")


def test_an_ipv6_client_counts_per_64_not_per_address(make_app) -> None:
    """A client holds a whole /64: counted per address it would have 2^64 budgets."""
    from views.auth import failure_source

    assert failure_source("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert failure_source("::ffff:198.51.100.7") == "198.51.100.7"
    assert failure_source("198.51.100.7") == "198.51.100.7"
    assert failure_source("unknown") == "unknown"
    client = make_app(AUTH_FAILURE_LIMIT=3).test_client()

    def from_(address: str) -> int:
        return client.get(STATS, headers=WRONG, environ_base={"REMOTE_ADDR": address}).status_code

    same = [from_(f"2001:db8:1:2::{n:x}") for n in range(1, 5)]
    assert same == [401, 401, 401, 429]
    assert from_("2001:db8:1:3::1") == 401  # the next /64 is another client
