"""The front as `make serve` runs it: nginx on a free port, gunicorn behind it on a unix socket.

Slow clients must cost nginx a connection, never a gunicorn worker: six connections trickling
headers leave /healthz answering at once, and a predict body that never completes is dropped by
nginx without ever reaching a worker. Errors nginx answers itself are JSON on the API.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app import FORM_OVERHEAD_BYTES
from bench.load import Client, basic_auth, predict_job
from bench.slow_clients import FrontServer, healthz_seconds, trickle, unfinished_body
from deploy import serve

pytestmark = pytest.mark.slow
CLIENT_TIMEOUT = 2
TRICKLERS = 6


def _raw(port: int, data: bytes, wait: float = 10.0) -> bytes:
    """Send raw bytes, read the answer until the server closes."""
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(data)
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except TimeoutError:
            pass
    return answer


def _status_and_body(answer: bytes) -> tuple[int, str, bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    content_type = re.search(rb"(?im)^content-type: *([^\r\n;]+)", head)
    return status, (content_type.group(1).decode() if content_type else ""), body


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrontServer]:
    workdir: Path = tmp_path_factory.mktemp("front")
    env = {"CLIENT_TIMEOUT": str(CLIENT_TIMEOUT), "WEB_CONCURRENCY": "2"}
    with FrontServer(workdir, env=env) as running:
        yield running


def test_rendered_config_passes_nginx_check_and_matches_the_app(tmp_path: Path) -> None:
    config = serve.FrontConfig.from_env(
        {"PORT": "18080", "FRONT_DIR": str(tmp_path), "MAX_UPLOAD_MB": "3"}
    )
    text = serve.render(config)
    assert "limit_req" not in text  # off by default: a load test from one address is not cut
    assert f"client_max_body_size {3 * 2**20 + FORM_OVERHEAD_BYTES};" in text
    assert f"server unix:{tmp_path / 'gunicorn.sock'}" in text
    assert "listen 127.0.0.1:18080;" in text
    assert not re.findall(r"@[A-Z_]+@", text.split("daemon off;", 1)[1])  # every field filled
    limited = serve.FrontConfig.from_env(
        {"PORT": "18080", "FRONT_DIR": str(tmp_path), "PREDICT_RATE_LIMIT": "5"}
    )
    conf = tmp_path / "nginx.conf"
    conf.write_text(serve.render(limited))
    assert "limit_req zone=predict burst=20 nodelay;" in conf.read_text()
    assert "rate=300r/m" in conf.read_text()
    check = subprocess.run(
        [*serve.nginx_command(limited, conf), "-t"], capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stderr


def test_two_ports_get_separate_run_directories() -> None:
    one, two = (serve.FrontConfig.from_env({"PORT": p}) for p in ("8001", "8002"))
    assert one.run_dir != two.run_dir and one.socket != two.socket
    assert one.run_dir.name == "front-8001"
    with pytest.raises(serve.FrontError, match="PREDICT_RATE_LIMIT"):
        serve.FrontConfig.from_env({"PREDICT_RATE_LIMIT": "fast"})


def test_trickling_headers_leave_healthz_answering(front: FrontServer) -> None:
    stop = threading.Event()
    threads = [
        threading.Thread(target=trickle, args=(front.port, 8.0, stop), daemon=True)
        for _ in range(TRICKLERS)
    ]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.5)  # every trickler connected and sending
        probes = [healthz_seconds(front.url) for _ in range(5)]
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    assert max(probes) < 1.0, probes


def test_unfinished_body_never_reaches_a_worker(front: FrontServer) -> None:
    predicts_before = sum(front.served_by("/api/v1/predict").values())
    result: dict[str, object] = {}
    sender = threading.Thread(target=lambda: result.update(body=unfinished_body(front.port)))
    sender.start()
    time.sleep(0.5)
    # Both workers are free while the body hangs: two answers at once, each fast.
    probes = [healthz_seconds(front.url) for _ in range(3)]
    sender.join(timeout=CLIENT_TIMEOUT + 20)
    body = result["body"]
    assert max(probes) < 1.0, probes
    # nginx drops it after CLIENT_TIMEOUT without data (it answers no client that stopped
    # sending, by design); never gunicorn's HTML 500 after its 30 s worker timeout.
    assert body.seconds < CLIENT_TIMEOUT + 3, body
    assert b"500" not in body.answer and b"<html" not in body.answer.lower()
    assert body.answer == b"" or b"application/json" in body.answer
    assert sum(front.served_by("/api/v1/predict").values()) == predicts_before
    assert re.search(r'"POST /api/v1/predict HTTP/1.1" 408 ', front.log_text())


def test_errors_nginx_answers_itself_are_json_on_the_api(front: FrontServer) -> None:
    big_header = b"X-Big: " + b"a" * 9000 + b"\r\n"
    for path, expected in (("/api/v1/stats", "application/json"), ("/", "text/html")):
        answer = _raw(front.port, f"GET {path} HTTP/1.1\r\nHost: x\r\n".encode() + big_header)
        status, content_type, body = _status_and_body(answer)
        assert (status, content_type) == (400, expected), answer[:300]
    status, content_type, body = _status_and_body(
        _raw(
            front.port,
            b"POST /v2/models/x/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n",
        )
    )
    assert (status, content_type) == (413, "application/json")
    assert b"larger than 10 MB" in body


def test_forwarded_headers_come_from_nginx_not_the_client(front: FrontServer) -> None:
    forged = {
        "X-Forwarded-For": "203.0.113.9",
        "X-Forwarded-Proto": "https",
        "X-Request-ID": "forged-id-1",
    }
    with Client(front.url) as client:
        client.connection.request("GET", "/api/v1/stats", headers={**forged, **basic_auth("no")})
        response = client.connection.getresponse()
        response.read()
    assert response.status == 401
    assert response.getheader("X-Request-ID") not in (None, "forged-id-1")
    assert response.getheader("Strict-Transport-Security") is None  # it came over plain HTTP
    deadline = time.monotonic() + 5
    while "admin authentication failed from" not in front.log_text():
        assert time.monotonic() < deadline, front.log_tail()
        time.sleep(0.1)
    line = next(x for x in front.log_text().splitlines() if "authentication failed from" in x)
    assert "from 127.0.0.1 " in line and "203.0.113.9" not in line


def test_predictions_pass_through_the_front(front: FrontServer, image_png: bytes) -> None:
    job = predict_job(image_png, "bagging")
    with Client(front.url) as client:
        status, body = client.request(job.method, job.path, job.body, job.headers)
    assert status == 200, body


def test_sigterm_stops_nginx_and_gunicorn(front: FrontServer) -> None:
    nginx_pid = int((front.run_dir / "nginx.pid").read_text())
    children = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(front.process.pid)], capture_output=True, text=True
    ).stdout.split()
    assert str(nginx_pid) in children and len(children) == 2  # nginx and the gunicorn master
    front.process.send_signal(signal.SIGTERM)
    assert front.process.wait(timeout=60) == 0
    for pid in map(int, children):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not (front.run_dir / serve.SOCKET_NAME).exists()
