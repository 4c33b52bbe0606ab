"""The real server, several processes: gunicorn with two preloaded workers and one database.

Started as `make serve` starts it (gunicorn.conf.py, ``app:create_app()``), on a free port of
127.0.0.1; concurrent predictions over every built-in strategy must all be answered, each recorded
exactly once, with distinct ids, whichever worker served it; on a SQLite file and on PostgreSQL.
"""

from __future__ import annotations

import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.load import (
    PREDICT_PATH,
    STRATEGIES,
    Client,
    GunicornServer,
    basic_auth,
    predict_job,
    run_load,
)
from serving.catalogue import BUILTIN_ENSEMBLES, BUILTIN_EXPERIMENT

pytestmark = pytest.mark.slow
WORKERS = 2
REQUESTS = 60
CLIENTS = 8
#: The load bench's mix plus every other built-in (cascade), so each runs under gunicorn too.
SERVED = tuple(
    dict.fromkeys([*STRATEGIES, *(s.name for s in BUILTIN_ENSEMBLES), BUILTIN_EXPERIMENT.name])
)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GunicornServer]:
    """Two workers, a temporary database (a SQLite file, or a fresh database of the session's
    PostgreSQL); stopped (and reaped) whatever the test did."""
    workdir: Path = tmp_path_factory.mktemp("gunicorn")
    env = {"WEB_CONCURRENCY": str(WORKERS)}
    if request.param == "postgres":
        env["DATABASE_URL"] = request.getfixturevalue("postgres").create()
    with GunicornServer(workdir, env=env) as running:
        yield running


def test_concurrent_predictions_are_all_answered_and_recorded_once(
    server: GunicornServer, image_png: bytes
) -> None:
    jobs = [predict_job(image_png, SERVED[n % len(SERVED)]) for n in range(REQUESTS)]
    plans = [jobs[client::CLIENTS] for client in range(CLIENTS)]

    samples = run_load(server.url, plans, deadline=time.time() + 120)

    assert len(samples) == REQUESTS
    assert Counter(s.status for s in samples) == {200: REQUESTS}, [s.error for s in samples]
    ids = [s.prediction_id for s in samples]
    assert len(set(ids)) == REQUESTS
    with Client(server.url) as client:
        stats = client.get_json("/api/v1/stats", basic_auth(server.admin_password))
    assert stats["total_predictions"] == REQUESTS
    # Stats list every built-in strategy; each got its share, nothing else was served.
    assert set(SERVED) <= set(stats["by_strategy"])
    for name, entry in stats["by_strategy"].items():
        expected = REQUESTS // len(SERVED) if name in SERVED else 0
        assert (entry["served"], entry["errors"]) == (expected, 0), name
    # Both processes wrote to the one database (the access log names the worker pid; a worker
    # writes its line just after answering, so give the last line a moment).
    deadline = time.monotonic() + 5
    served_by = server.served_by(PREDICT_PATH)
    while sum(served_by.values()) < REQUESTS and time.monotonic() < deadline:
        time.sleep(0.05)
        served_by = server.served_by(PREDICT_PATH)
    assert sum(served_by.values()) == REQUESTS
    assert set(served_by) == set(server.worker_pids()) and len(served_by) == WORKERS


def test_admin_needs_the_password_across_processes(server: GunicornServer) -> None:
    with Client(server.url) as client:
        status, _ = client.request("GET", "/api/v1/stats", headers=basic_auth("wrong"))
        ready = client.get_json("/readyz")
    assert status == 401
    assert ready["status"] == "ready"


@pytest.mark.parametrize(
    "body",
    [b"zz\r\nabc\r\n0\r\n\r\n", b"3\r\nabcXX0\r\n\r\n"],
    ids=["bad chunk size", "missing chunk terminator"],
)
def test_a_malformed_chunked_body_is_a_400_from_the_real_server(
    server: GunicornServer, body: bytes
) -> None:
    """gunicorn's parse error of a chunked body escaped the form parser: a 500 (fuzzed)."""
    request = (
        f"POST {PREDICT_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode() + body
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        raw.sendall(request)
        answer = b""
        while chunk := raw.recv(65536):
            answer += chunk
    status = answer.split(b"\r\n", 1)[0]
    assert status.startswith(b"HTTP/1.1 400"), answer[:300]
    assert b"could not be read" in answer


def test_a_quiet_app_log_level_still_gets_ready(tmp_path: Path) -> None:
    """bench.v2 runs the app at LOG_LEVEL=WARNING: gunicorn's worker boot lines went with it,
    so the ready check counted 0 of 1 workers and gave up after two minutes."""
    env = {"WEB_CONCURRENCY": "1", "LOG_LEVEL": "WARNING"}
    with GunicornServer(tmp_path, env=env, ready_timeout=60) as quiet:
        assert len(quiet.worker_pids()) == 1
        with Client(quiet.url) as client:
            assert client.get_json("/readyz")["status"] == "ready"
    assert "INFO serving" not in quiet.log_text()  # the app itself stayed at WARNING
