"""Slow clients against the real server: gunicorn alone, then behind the nginx front.

`python -m bench.slow_clients [--connections 6] [--seconds 12]` starts each server on a free port
of 127.0.0.1 (a temporary SQLite database), opens ``--connections`` connections that trickle
request headers a byte per second for ``--seconds``, and meanwhile asks ``/healthz`` twice a
second on fresh connections; then it sends one predict whose body never completes and times how
long the connection stays open and what comes back. It prints, per server, the /healthz latency
(median and worst) while trickled and what the unfinished body ended in.

``FrontServer`` (``deploy/serve.py`` as ``make serve`` runs it) also serves tests/test_front.py.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bench.load import HEALTHZ_PATH, Client, GunicornServer, cpu_model
from experiments.stats import percentile

log = logging.getLogger(__name__)

#: The probes' own limit: a /healthz that takes longer counts as this long.
PROBE_TIMEOUT_S = 30.0


class FrontServer(GunicornServer):
    """nginx + gunicorn via ``python -m deploy.serve`` (what ``make serve`` runs), on a free port;
    its run directory (config, socket, pid, nginx error log) a fresh one under /tmp that nginx's
    workers can enter (they run as ``nobody`` when the suite runs as root), removed at stop."""

    def __init__(
        self, workdir: Path, env: Mapping[str, str] | None = None, ready_timeout: float = 120.0
    ) -> None:
        self.run_dir = Path(tempfile.mkdtemp(prefix="chorus-front-"))
        self.run_dir.chmod(0o755)
        front = {"FRONT_DIR": str(self.run_dir), **(env or {})}
        super().__init__(workdir, env=front, ready_timeout=ready_timeout)

    def command(self) -> list[str]:
        return [sys.executable, "-m", "deploy.serve"]

    def stop(self, timeout: float | None = None) -> None:
        super().stop(timeout)
        shutil.rmtree(self.run_dir, ignore_errors=True)


def trickle(port: int, seconds: float, stop: threading.Event) -> None:
    """One connection sending a request's headers a byte per second, never finishing them."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and not stop.is_set():
                sock.sendall(b"a")
                stop.wait(1.0)
    except OSError:
        pass  # the server hung up on a trickler: what a front should do


def healthz_seconds(url: str) -> float:
    """Seconds one /healthz takes on a fresh connection (``PROBE_TIMEOUT_S`` if it never does)."""
    started = time.perf_counter()
    try:
        with Client(url, timeout=PROBE_TIMEOUT_S) as client:
            status, _ = client.request("GET", HEALTHZ_PATH)
        if status != 200:
            return PROBE_TIMEOUT_S
    except OSError:
        return PROBE_TIMEOUT_S
    return time.perf_counter() - started


@dataclass
class TrickleFigures:
    """/healthz while ``connections`` connections trickled headers."""

    connections: int
    probes: list[float]

    @property
    def median_s(self) -> float:
        return percentile(self.probes, 50)

    @property
    def worst_s(self) -> float:
        return max(self.probes)


def under_trickle(
    url: str, port: int, connections: int, seconds: float, settle: float = 1.5
) -> TrickleFigures:
    """Start the tricklers, let them take hold, probe /healthz until they stop."""
    stop = threading.Event()
    threads = [
        threading.Thread(target=trickle, args=(port, seconds, stop), daemon=True)
        for _ in range(connections)
    ]
    for thread in threads:
        thread.start()
    time.sleep(settle)
    probes = []
    deadline = time.monotonic() + max(0.5, seconds - settle)
    while time.monotonic() < deadline:
        probes.append(healthz_seconds(url))
        time.sleep(0.5)
    stop.set()
    for thread in threads:
        thread.join(timeout=10)
    return TrickleFigures(connections, probes)


@dataclass
class UnfinishedBody:
    """What one predict whose body never completes got: the answer's bytes, after how long."""

    seconds: float
    answer: bytes

    @property
    def status_line(self) -> str:
        line = self.answer.split(b"\r\n", 1)[0].decode("latin-1")
        return line or "(connection closed without an answer)"


def unfinished_body(port: int, path: str = "/api/v1/predict", wait: float = 60.0) -> UnfinishedBody:
    """Send headers promising 1000 bytes, then 10 of them, then nothing; read until closed."""
    started = time.monotonic()
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
            "boundary=b\r\nContent-Length: 1000\r\n\r\n--b\r\nConte".encode()
        )
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:  # a reset is also an end
            pass
    return UnfinishedBody(time.monotonic() - started, answer)


def report(name: str, figures: TrickleFigures, body: UnfinishedBody) -> None:
    """One server's lines."""
    log.info(
        "%-16s /healthz with %d trickling connections: median %.3f s, worst %.3f s (%d probes)",
        name,
        figures.connections,
        figures.median_s,
        figures.worst_s,
        len(figures.probes),
    )
    log.info(
        "%-16s unfinished predict body: ended after %.1f s with %s",
        name,
        body.seconds,
        body.status_line,
    )


def main(argv: list[str] | None = None) -> int:
    """Measure gunicorn alone, then the front, one after the other (never both at once)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--client-timeout", type=int, default=5, help="the front's CLIENT_TIMEOUT")
    args = parser.parse_args(argv)
    log.info("CPU: %s", cpu_model())
    servers = (("gunicorn alone", GunicornServer), ("nginx + gunicorn", FrontServer))
    for name, server_class in servers:
        with tempfile.TemporaryDirectory(prefix="chorus-slow-") as workdir:
            env = {"CLIENT_TIMEOUT": str(args.client_timeout), "GUNICORN_ACCESS_LOG": "off"}
            with server_class(Path(workdir), env=env) as server:
                figures = under_trickle(server.url, server.port, args.connections, args.seconds)
                body = unfinished_body(server.port)
            report(name, figures, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
