"""Helpers for tests that drive real gunicorn servers: timed predictions, experiments, watching.

``predict`` sends one request with a fresh ``X-Request-ID`` (the access log names the worker by
it) and keeps the client's view of it as an ``Answer``; ``watch`` keeps a few clients predicting
until a deadline; ``create`` makes an ensemble or experiment through one process and waits until
every other process (worker or instance) must know of it.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bench.load import Client, GunicornServer, admin_request, predict_job

#: The engine's promise: a worker re-reads definitions at most this long after they changed.
TTL_S = 1.0
#: Added to TTL_S before a request must see a change. The bound needs none in theory: a stale
#: snapshot was read before the PATCH committed, its timestamp is taken before that read, so it
#: expires before commit + TTL_S <= PATCH answered + TTL_S; a request the client starts later
#: reaches the worker later still, and every clock here is the one CLOCK_MONOTONIC. The margin is
#: defensive, for whatever that argument misses on a shared 2-core box (no known mechanism needs
#: it; runs here saw the last stale answer start about 0.8 s after the PATCH). A quarter of the
#: TTL keeps the check sharp: a worker that never re-read, or re-read every few seconds, would
#: still fail over the 2 s watched.
MARGIN_S = 0.25
WATCH_S = 2.0


@dataclass(frozen=True)
class Answer:
    """One predict request as the client saw it; times are ``time.monotonic()``."""

    request_id: str
    started: float
    ended: float
    status: int
    body: Mapping[str, Any]

    @property
    def arm(self) -> str | None:
        return self.body.get("arm")


def create(server: GunicornServer, body: Mapping[str, Any]) -> None:
    """Create through one worker, then give the other its TTL to learn of it (else: 400)."""
    status, answer = admin_request(
        server.url, server.admin_password, "POST", "/api/v1/inference/ensemble", body
    )
    created = time.monotonic()
    assert status == 201, answer
    time.sleep(max(0.0, created + TTL_S + MARGIN_S - time.monotonic()))


def results(server: GunicornServer, name: str) -> dict[str, Any]:
    status, answer = admin_request(
        server.url, server.admin_password, "GET", f"/api/v1/experiments/{name}/results"
    )
    assert status == 200, answer
    return answer


def predict(client: Client, image: bytes, strategy: str) -> Answer:
    """POST one image with a fresh request id (the access log names the worker by it)."""
    job = predict_job(image, strategy)
    request_id = uuid.uuid4().hex
    started = time.monotonic()
    status, raw = client.request(
        job.method, job.path, job.body, {**job.headers, "X-Request-ID": request_id}
    )
    ended = time.monotonic()
    return Answer(request_id, started, ended, status, json.loads(raw) if raw else {})


def watch(
    server: GunicornServer, image: bytes, strategy: str, until: float, clients: int = 3
) -> list[Answer]:
    """Keep ``clients`` threads predicting until the monotonic time ``until``."""
    answers: list[Answer] = []
    lock = threading.Lock()

    def run() -> None:
        with Client(server.url) as client:
            while time.monotonic() < until:
                answer = predict(client, image, strategy)
                with lock:
                    answers.append(answer)

    threads = [threading.Thread(target=run) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return answers
