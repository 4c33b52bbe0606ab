"""The front as `make serve` runs it: nginx on a free port, gunicorn behind it on a unix socket.

Slow clients must cost nginx a connection, never a gunicorn worker: six connections trickling
headers leave /healthz answering at once, and a predict body that never completes is answered a
408 by nginx without ever reaching a worker. Errors nginx answers itself are JSON on the API
(also with nginx alone, gunicorn down or silent), and a SIGTERM stops everything in seconds.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app import FORM_OVERHEAD_BYTES
from bench.load import Client, basic_auth, free_port, predict_job
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
    # gunicorn's access log (off behind the front by default) says which worker served what.
    env = {
        "CLIENT_TIMEOUT": str(CLIENT_TIMEOUT),
        "WEB_CONCURRENCY": "2",
        "GUNICORN_ACCESS_LOG": "-",
    }
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


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their workers, ...), from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


def gone(pids: list[int], within: float) -> list[int]:
    """The ``pids`` still running (zombies count as ended) after waiting up to ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        alive = []
        for pid in pids:
            with contextlib.suppress(OSError, IndexError):
                if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    alive.append(pid)
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def nginx_alone(upstream: str, **env: str) -> Iterator[tuple[int, Path]]:
    """The front's nginx as ``make serve`` renders it, without gunicorn: in front of
    ``upstream`` (nothing, or something that never answers); yields (port, run directory)."""
    run_dir = Path(tempfile.mkdtemp(prefix="chorus-nginx-"))
    run_dir.chmod(0o755)  # nginx's workers (nobody, under root) must reach the body socket
    port = free_port()
    config = serve.FrontConfig.from_env(
        {"PORT": str(port), "FRONT_DIR": str(run_dir), "UPSTREAM": upstream, **env}
    )
    process = subprocess.Popen(
        serve.nginx_command(config, serve.prepare(config)),
        cwd=run_dir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not listening(port):
            assert process.poll() is None, (run_dir / "error.log").read_text()
            assert time.monotonic() < deadline, "nginx did not listen"
            time.sleep(0.05)
        yield port, run_dir
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(run_dir, ignore_errors=True)


def _request(port: int, method: str, path: str, wait: float = 15.0) -> tuple[int, str, bytes]:
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0"
    return _status_and_body(_raw(port, head.encode() + b"\r\n\r\n", wait))


def test_a_stalled_body_is_a_json_408_on_the_api_and_html_elsewhere() -> None:
    """Without the body tier nginx closed the connection after client_body_timeout, silent."""
    with nginx_alone("127.0.0.1:9", CLIENT_TIMEOUT="1") as (port, _):
        for path, expected in (
            ("/api/v1/predict", "application/json"),
            ("/v2/models/bagging/infer", "application/json"),
            ("/bagging", "text/html"),
        ):
            body = unfinished_body(port, path, wait=20)
            assert body.answer, f"{path}: {body.status_line} after {body.seconds:.1f} s"
            status, content_type, text = _status_and_body(body.answer)
            assert (status, content_type) == (408, expected), body.answer[:300]
            assert body.seconds < 1 + 2, body  # the body tier's timeout, not the front's 6 s
            assert b"Connection: close" in body.answer  # the rest of the body may still come
            if expected == "application/json":
                assert "arrived too slowly" in json.loads(text)["error"]
            else:
                assert b"<h1>408 Request Time-out</h1>" in text


def test_gunicorn_down_or_silent_is_json_on_the_api_and_html_elsewhere() -> None:
    with nginx_alone(f"127.0.0.1:{free_port()}") as (port, _):  # nothing listens there
        status, content_type, body = _request(port, "POST", "/api/v1/predict")
        assert (status, content_type) == (502, "application/json")
        assert "not answering" in json.loads(body)["error"]
        assert _request(port, "GET", "/")[:2] == (502, "text/html")
        # Unreadable request lines have no path to tell the API by: JSON (no browser sends one).
        status, content_type, body = _request(port, "GET", "/api/v1/" + "x" * 9000)
        assert (status, content_type) == (414, "application/json"), body
        assert "URI is too long" in json.loads(body)["error"]
        status, content_type, body = _status_and_body(_raw(port, b"GARBAGE\r\n\r\n"))
        assert (status, content_type) == (400, "application/json"), body
    with socket.create_server(("127.0.0.1", 0), backlog=8) as silent:  # accepts, never answers
        upstream = f"127.0.0.1:{silent.getsockname()[1]}"
        with nginx_alone(upstream, GUNICORN_TIMEOUT="0") as (port, _):
            started = time.monotonic()
            status, content_type, body = _request(port, "GET", "/v2/health/ready")
            assert (status, content_type) == (504, "application/json"), body
            assert "took too long" in json.loads(body)["error"]
            assert time.monotonic() - started < 5 + 3  # the body tier's 5 s, not the front's


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
    # nginx answers a JSON 408 after CLIENT_TIMEOUT without data; never gunicorn's HTML 500
    # after its 30 s worker timeout.
    assert body.seconds < CLIENT_TIMEOUT + 3, body
    status, content_type, text = _status_and_body(body.answer)
    assert (status, content_type) == (408, "application/json"), body.answer[:300]
    assert f"after {CLIENT_TIMEOUT} s without data" in json.loads(text)["error"]
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


def test_sigterm_stops_nginx_and_gunicorn_within_seconds(front: FrontServer) -> None:
    """Before the fix this took 31 s: gunicorn's workers hung in their teardown until the 30 s
    graceful timeout killed them."""
    nginx_pid = int((front.run_dir / "nginx.pid").read_text())
    children = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(front.process.pid)], capture_output=True, text=True
    ).stdout.split()
    assert str(nginx_pid) in children and len(children) == 2  # nginx and the gunicorn master
    everything = descendants(front.process.pid)  # with nginx's and gunicorn's workers
    assert len(everything) >= 2 + 1 + 2, everything
    with Client(front.url) as idle:  # an idle keep-alive connection does not hold the stop
        assert idle.request("GET", "/healthz")[0] == 200
        started = time.monotonic()
        front.process.send_signal(signal.SIGTERM)
        assert front.process.wait(timeout=10) == 0
    assert time.monotonic() - started < 10
    assert gone(everything, within=1) == []
    for name in (serve.SOCKET_NAME, serve.BODY_SOCKET_NAME, "nginx.pid"):
        assert not (front.run_dir / name).exists(), name
    assert not listening(front.port)


def test_a_killed_front_leaves_no_process_behind(tmp_path: Path) -> None:
    """SIGKILL gives the front no chance to stop its children: they stop on their own."""
    with FrontServer(tmp_path, env={"WEB_CONCURRENCY": "1"}) as running:
        everything = descendants(running.process.pid)
        assert len(everything) >= 2 + 1 + 1, everything
        running.process.kill()
        running.process.wait(timeout=10)
        assert gone(everything, within=10) == []
        assert not listening(running.port)
