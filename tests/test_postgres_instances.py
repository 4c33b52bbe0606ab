"""Two Chorus instances on one PostgreSQL: two gunicorn servers, two ports, one database.

Each instance is started as `make serve` starts it (tests.servers / bench.load's GunicornServer)
with the same ``DATABASE_URL``, ``SECRET_KEY`` and admin password, as two hosts behind a load
balancer would be. What one instance knows the other must learn from the database: a PATCH
through one is followed by the other within the engine's one-second TTL, round-robin turns come
from the one counter row, and killing one (SIGKILL, master and workers) mid-burst loses no
prediction that was answered 200 — the row is committed before the answer is sent.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from bench.load import Client, GunicornServer, Sample, admin_request, predict_job, run_client
from store.db import make_engine
from store.models import Prediction
from tests.postgres import Databases
from tests.servers import MARGIN_S, TTL_S, WATCH_S, Answer, create, predict, results, watch

pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)

WORKERS = 2
ARMS = ("bagging", "boosting", "stacking")
#: Round robin: a short strictly alternating run, then concurrent alternating clients.
SEQUENTIAL = 12
CONCURRENT = 60
THREADS = 3
#: The kill test: clients per instance, requests per client, and how many rows the burst has
#: written (both instances together) when the second instance is killed.
BURST_CLIENTS = 2
BURST_REQUESTS = 40
KILL_AFTER_ROWS = 30


@pytest.fixture(scope="module")
def shared_database(postgres: Databases) -> Iterator[str]:
    """One fresh database at head for both instances; dropped at the end of the module."""
    url = postgres.create()
    yield url
    postgres.drop_url(url)


@pytest.fixture(scope="module")
def instances(
    shared_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GunicornServer, GunicornServer]]:
    """Instances ``a`` and ``b``, started together; both stopped (and reaped) at the end."""
    env = {
        "WEB_CONCURRENCY": str(WORKERS),
        "DATABASE_URL": shared_database,
        "SECRET_KEY": secrets.token_hex(32),
        "ADMIN_PASSWORD": secrets.token_urlsafe(16),
    }
    servers = [GunicornServer(tmp_path_factory.mktemp(f"instance-{n}"), env=env) for n in "ab"]
    try:
        with ThreadPoolExecutor(len(servers)) as pool:
            list(pool.map(GunicornServer.__enter__, servers))
        yield servers[0], servers[1]
    finally:
        for server in servers:
            server.stop()


def _stale_and_late(answers: list[Answer], patched: float) -> tuple[list[Answer], list[Answer]]:
    """Answers still on the old weights, and those started after TTL + margin past the PATCH."""
    stale = [a for a in answers if a.arm == "bagging"]
    late = [a for a in answers if a.started - patched > TTL_S + MARGIN_S]
    return stale, late


def test_a_weight_change_through_one_instance_is_followed_by_the_other_within_a_second(
    instances: tuple[GunicornServer, GunicornServer], image_png: bytes
) -> None:
    a, b = instances
    name = "w-instances"
    create(
        a,
        {
            "name": name,
            "strategy": "weighted",
            "models": [{"model_id": "bagging", "weight": 1}, {"model_id": "boosting", "weight": 0}],
        },
    )
    # Both instances' workers now hold a snapshot in which everything goes to bagging.
    warmed: list[Answer] = []
    warmer = threading.Thread(
        target=lambda: warmed.extend(watch(a, image_png, name, until=time.monotonic() + 0.5))
    )
    warmer.start()
    warmed += watch(b, image_png, name, until=time.monotonic() + 0.5)
    warmer.join(timeout=60)
    assert warmed and {(w.status, w.arm) for w in warmed} == {(200, "bagging")}

    status, answer = admin_request(
        a.url,
        a.admin_password,
        "PATCH",
        f"/api/v1/experiments/{name}",
        {"weights": {"bagging": 0, "boosting": 1}},
    )
    patched = time.monotonic()
    assert status == 200, answer

    seen: dict[str, list[Answer]] = {}
    watcher = threading.Thread(
        target=lambda: seen.update(a=watch(a, image_png, name, until=patched + WATCH_S))
    )
    watcher.start()
    seen["b"] = watch(b, image_png, name, until=patched + WATCH_S)
    watcher.join(timeout=60)

    for instance, answers in seen.items():
        assert answers and all(x.status == 200 for x in answers), (instance, answers)
        stale, late = _stale_and_late(answers, patched)
        assert late, f"instance {instance}: no request started late enough to check"
        assert {x.arm for x in late} == {"boosting"}, (
            instance,
            [x.started - patched for x in stale],
        )
        log.info(
            "instance %s: %d answers in %.1f s after the PATCH; %d stale, the last at +%.3f s",
            instance,
            len(answers),
            WATCH_S,
            len(stale),
            max((x.started - patched for x in stale), default=0.0),
        )
    # The other instance describes the new weights too (read from the database, not a cache).
    described = admin_request(b.url, b.admin_password, "GET", f"/api/v1/experiments/{name}")[1]
    assert described["shares"] == {"bagging": 0.0, "boosting": 1.0}, described


def test_round_robin_stays_balanced_across_instances(
    instances: tuple[GunicornServer, GunicornServer], image_png: bytes
) -> None:
    a, b = instances
    name = "rr-instances"
    create(a, {"name": name, "strategy": "round_robin", "models": [{"model_id": m} for m in ARMS]})

    # One request at a time, alternating instances: one counter means one rotation across both
    # (a counter per instance would serve each arm twice in a row: a, a, b, b, c, c).
    with Client(a.url) as on_a, Client(b.url) as on_b:
        sequence = [predict((on_a, on_b)[n % 2], image_png, name) for n in range(SEQUENTIAL)]
    assert [x.status for x in sequence] == [200] * SEQUENTIAL, [x.body for x in sequence]
    first = ARMS.index(str(sequence[0].arm))
    assert [x.arm for x in sequence] == [ARMS[(first + n) % len(ARMS)] for n in range(SEQUENTIAL)]

    # Concurrent clients, each alternating between the instances.
    answers: list[Answer] = []
    lock = threading.Lock()

    def alternate(count: int) -> None:
        with Client(a.url) as on_a, Client(b.url) as on_b:
            for n in range(count):
                answer = predict((on_a, on_b)[n % 2], image_png, name)
                with lock:
                    answers.append(answer)

    threads = [
        threading.Thread(target=alternate, args=(CONCURRENT // THREADS,)) for _ in range(THREADS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert [x.status for x in answers] == [200] * CONCURRENT, [x.body for x in answers]
    served = Counter(x.arm for x in answers)
    assert max(served.values()) - min(served.values()) <= 1 and set(served) == set(ARMS), served
    assert served == {arm: CONCURRENT // len(ARMS) for arm in ARMS}, served
    # Both instances report the same counts, all the traffic either of them served.
    total = served + Counter(x.arm for x in sequence)
    for server in (a, b):
        recorded = results(server, name)["arms"]
        assert {arm: recorded[arm]["served"] for arm in ARMS} == total


def _kill(server: GunicornServer) -> list[int]:
    """SIGKILL the master and every worker at once (no graceful stop, no worker respawn)."""
    assert server.process is not None
    pids = [server.process.pid, *server.worker_pids()]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    server.process.wait(timeout=30)
    return pids


def _recorded(url: str, ids: set[str]) -> set[str]:
    """Which of ``ids`` have their prediction row in the database."""
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            return set(session.scalars(select(Prediction.id).where(Prediction.id.in_(ids))))
    finally:
        engine.dispose()


def _rows(url: str) -> int:
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            return len(session.scalars(select(Prediction.id)).all())
    finally:
        engine.dispose()


def test_killing_one_instance_mid_burst_loses_no_answered_prediction(
    instances: tuple[GunicornServer, GunicornServer], shared_database: str, image_png: bytes
) -> None:
    a, b = instances
    jobs = [predict_job(image_png, ("bagging", "ab")[n % 2]) for n in range(BURST_REQUESTS)]
    before = _rows(shared_database)
    samples: dict[str, list[list[Sample]]] = {"a": [], "b": []}
    deadline = time.time() + 90

    def burst(instance: str, server: GunicornServer) -> None:
        samples[instance].append(run_client(server.url, jobs, deadline))

    threads = [
        threading.Thread(target=burst, args=(instance, server))
        for instance, server in (("a", a), ("b", b))
        for _ in range(BURST_CLIENTS)
    ]
    for thread in threads:
        thread.start()
    while _rows(shared_database) - before < KILL_AFTER_ROWS and time.time() < deadline:
        time.sleep(0.02)
    killed_at = time.time()
    killed = _kill(b)
    for thread in threads:
        thread.join(timeout=120)

    on_a = [s for per_client in samples["a"] for s in per_client]
    on_b = [s for per_client in samples["b"] for s in per_client]
    assert len(on_a) == len(on_b) == BURST_CLIENTS * BURST_REQUESTS
    # The surviving instance answered everything; the killed one answered some, then nothing.
    assert all(s.status == 200 for s in on_a), [s.error for s in on_a if s.status != 200]
    answered_b = [s for s in on_b if s.status == 200]
    assert answered_b and len(answered_b) < len(on_b), "the kill did not land mid-burst"
    assert all(s.started < killed_at for s in answered_b)
    # Every 200 has its row: nothing answered was lost with the killed processes.
    answered = {s.prediction_id for s in on_a + answered_b if s.prediction_id}
    assert len(answered) == len(on_a) + len(answered_b)
    assert _recorded(shared_database, answered) == answered
    log.info(
        "killed %s after %d rows; a answered %d, b answered %d and failed %d; all %d recorded",
        killed,
        KILL_AFTER_ROWS,
        len(on_a),
        len(answered_b),
        len(on_b) - len(answered_b),
        len(answered),
    )
