"""Do shadows cost the client anything? A shadowed experiment against a plain one, on gunicorn.

`python -m bench.shadow [--blocks 8] [--block 40] [--budget 50]` starts the default server (two
workers, gunicorn.conf.py, a temporary SQLite file, 127.0.0.1) and creates two experiments that
both serve bagging: ``plain`` (weighted, all traffic to bagging) and ``shadowed`` (shadow router,
default bagging, shadow ``stacking``, the nine-member ensemble, on every request). Shadows run
after the answer is sent (``response.call_on_close``), so the client should not wait for them;
but the worker that ran one is busy meanwhile, and on two cores the shadow's CPU is taken from
somebody. With one client thread, then four, it sends alternating blocks of requests to the two
(which goes first alternates too) and prints client-side p50/p95 latency of each, their ratio,
req/s, server CPU per request, and how long after a block's last answer all of its shadow rows
were stored (read from the SQLite file, which is what the results API reads); then the same lag
for single requests on an idle server, and the final counts against the results API. Blocks stop
early when ``--budget`` seconds have passed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.load import (
    Client,
    GunicornServer,
    admin_request,
    cpu_model,
    cpu_seconds,
    fashion_mnist_pngs,
    machine_cpu_seconds,
    own_cpu_seconds,
    predict_job,
)
from experiments.stats import percentile

log = logging.getLogger(__name__)

PLAIN = {
    "name": "plain",
    "strategy": "weighted",
    "models": [{"model_id": "bagging", "weight": 1}, {"model_id": "boosting", "weight": 0}],
}
SHADOWED = {
    "name": "shadowed",
    "strategy": "shadow",
    "default_model": "bagging",
    "shadow_models": ["stacking"],
    "models": [{"model_id": "bagging"}, {"model_id": "stacking"}],
}
SHADOW_MODEL = "stacking"
#: Each worker re-reads definitions at most this often; a new experiment needs it to be seen.
TTL_S = 1.0
POLL_S = 0.002
SHADOW_TIMEOUT_S = 10.0


@dataclass
class Series:
    """What one experiment did under one client count."""

    latencies_ms: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0
    cpu_s: float = 0.0
    errors: int = 0
    lags_ms: list[float] = field(default_factory=list)


def send(url: str, images: Sequence[bytes], strategy: str, count: int, offset: int) -> list:
    """``count`` predictions on one connection: (client ms, server ms or None, status)."""
    out = []
    with Client(url) as client:
        for n in range(count):
            job = predict_job(images[(offset + n) % len(images)], strategy)
            start = time.perf_counter()
            status, body = client.request(job.method, job.path, job.body, job.headers)
            client_ms = (time.perf_counter() - start) * 1e3
            server_ms = json.loads(body)["latency_ms"] if status == 200 else None
            out.append((client_ms, server_ms, status))
    return out


def block(url: str, images: Sequence[bytes], strategy: str, count: int, threads: int) -> list:
    """``count`` requests split over ``threads`` client threads running at once."""
    shares = [count // threads + (n < count % threads) for n in range(threads)]
    results: list[list] = [[] for _ in shares]

    def run(index: int) -> None:
        results[index] = send(url, images, strategy, shares[index], offset=index * 97)

    workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return [sample for part in results for sample in part]


def shadow_runs(server: GunicornServer) -> int:
    """Shadow runs of ``shadowed`` as the results API reports them."""
    status, body = admin_request(
        server.url, server.admin_password, "GET", "/api/v1/experiments/shadowed/results"
    )
    if status != 200:
        raise RuntimeError(f"results answered {status}: {body}")
    return int(body["shadows"].get(SHADOW_MODEL, {}).get("runs", 0))


class ShadowRows:
    """Counts stored shadow rows straight from the server's SQLite file.

    Polling the results API every few milliseconds would put its own work on the workers (and
    into the CPU figures); a read-only SQLite reader in WAL mode blocks no writer.
    """

    QUERY = "SELECT COUNT(*) FROM predictions WHERE experiment = ? AND shadow_of IS NOT NULL"

    def __init__(self, path: Path) -> None:
        self.connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)

    def count(self) -> int:
        return int(self.connection.execute(self.QUERY, (SHADOWED["name"],)).fetchone()[0])

    def wait(self, expected: int, since: float) -> float:
        """Milliseconds from ``since`` until ``expected`` shadow rows are stored."""
        deadline = since + SHADOW_TIMEOUT_S
        while self.count() < expected:
            if time.monotonic() > deadline:
                raise RuntimeError(f"fewer than {expected} shadow rows after {SHADOW_TIMEOUT_S} s")
            time.sleep(POLL_S)
        return (time.monotonic() - since) * 1e3

    def close(self) -> None:
        self.connection.close()


def pct(values: Sequence[float], q: float) -> float:
    got = percentile(list(values), q)
    return float("nan") if got is None else got


def measure(
    server: GunicornServer,
    rows: ShadowRows,
    images: Sequence[bytes],
    threads: int,
    blocks: int,
    size: int,
    stop_at: float,
    shadows_so_far: int,
) -> tuple[dict[str, Series], int, int]:
    """Alternating blocks for one client count: the series, the shadow total, blocks run."""
    pids = server.worker_pids()
    series = {"plain": Series(), "shadowed": Series()}
    done = 0
    for n in range(blocks):
        if done and time.monotonic() > stop_at:
            break
        order = ("plain", "shadowed") if n % 2 == 0 else ("shadowed", "plain")
        for name in order:
            cpu, start = cpu_seconds(pids), time.monotonic()
            samples = block(server.url, images, name, size, threads)
            ended = time.monotonic()
            if name == "shadowed":
                shadows_so_far += sum(status == 200 for _, _, status in samples)
                series[name].lags_ms.append(rows.wait(shadows_so_far, ended))
            s = series[name]
            s.seconds += ended - start
            s.cpu_s += cpu_seconds(pids) - cpu  # shadowed: its shadows' CPU too (all stored now)
            s.latencies_ms += [c for c, _, status in samples if status == 200]
            s.server_ms += [m for _, m, status in samples if m is not None]
            s.errors += sum(status != 200 for _, _, status in samples)
        done += 1
    return series, shadows_so_far, done


def table(threads: int, series: dict[str, Series], blocks: int, size: int) -> list[str]:
    plain, shadowed = series["plain"], series["shadowed"]
    lines = [
        f"{threads} client thread(s): {blocks} block pair(s) of {size} requests, alternating",
        f"  {'experiment':10}{'requests':>9}{'errors':>7}{'p50 ms':>8}{'p95 ms':>8}"
        f"{'server p50':>11}{'req/s':>8}{'CPU ms/req':>11}",
    ]
    for name, s in series.items():
        count = len(s.latencies_ms) + s.errors
        lines.append(
            f"  {name:10}{count:>9}{s.errors:>7}{pct(s.latencies_ms, 50):>8.1f}"
            f"{pct(s.latencies_ms, 95):>8.1f}{pct(s.server_ms, 50):>11.1f}"
            f"{count / s.seconds:>8.1f}{s.cpu_s * 1e3 / max(count, 1):>11.1f}"
        )
    ratio50 = pct(shadowed.latencies_ms, 50) / pct(plain.latencies_ms, 50)
    ratio95 = pct(shadowed.latencies_ms, 95) / pct(plain.latencies_ms, 95)
    lags = shadowed.lags_ms
    lines += [
        f"  shadowed/plain client latency: p50 {ratio50:.2f}x, p95 {ratio95:.2f}x",
        f"  all of a block's shadow rows visible after its last answer: median "
        f"{statistics.median(lags):.0f} ms, max {max(lags):.0f} ms",
    ]
    return lines


def single_lags(
    server: GunicornServer, rows: ShadowRows, images: Sequence[bytes], count: int, total: int
) -> tuple[list[float], int]:
    """Response-to-row lag of one shadowed request at a time on an otherwise idle server."""
    lags = []
    for n in range(count):
        time.sleep(0.1)  # let the previous shadow and the polling settle
        samples = send(server.url, images, "shadowed", 1, offset=n)
        ended = time.monotonic()
        total += samples[0][2] == 200
        lags.append(rows.wait(total, ended))
    return lags, total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=8, help="block pairs per client count")
    parser.add_argument("--block", type=int, default=40, help="requests per block")
    parser.add_argument("--singles", type=int, default=10, help="isolated shadow-lag probes")
    parser.add_argument("--budget", type=float, default=50.0, help="seconds for the blocks")
    parser.add_argument("--images", type=int, default=200, help="distinct test images")
    args = parser.parse_args(argv)
    if min(args.blocks, args.block, args.singles) < 1 or args.budget <= 0:
        parser.error("--blocks, --block, --singles and --budget must be positive")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    images = fashion_mnist_pngs(args.images)
    begun = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="chorus-shadow-") as workdir:
        # The access log would cost both experiments alike; off, it leaves the cores be.
        with GunicornServer(Path(workdir), env={"GUNICORN_ACCESS_LOG": "off"}) as server:
            for body in (PLAIN, SHADOWED):
                status, answer = admin_request(
                    server.url, server.admin_password, "POST", "/api/v1/inference/ensemble", body
                )
                if status != 201:
                    raise SystemExit(f"creating {body['name']} answered {status}: {answer}")
            time.sleep(TTL_S + 0.25)  # both workers now know both experiments
            warm = block(server.url, images, "plain", 20, 2) + block(
                server.url, images, "shadowed", 20, 2
            )
            total = sum(status == 200 for _, _, status in warm[20:])
            rows = ShadowRows(Path(workdir) / "chorus.db")
            rows.wait(total, time.monotonic())
            own, machine, pids = own_cpu_seconds(), machine_cpu_seconds(), server.worker_pids()
            server_cpu, started = cpu_seconds(pids), time.monotonic()
            stop_at = started + args.budget
            out = [
                f"CPU: {cpu_model()}; server: {len(pids)} {server.worker_class()} workers "
                "(gunicorn.conf.py, 1 torch thread each, access log off), temporary SQLite",
                f"plain = weighted, all to bagging; shadowed = bagging served, {SHADOW_MODEL} "
                "(9 members) as shadow on every request",
                "",
            ]
            for threads in (1, 4):
                # Half the budget each, so the four-thread run is not squeezed out.
                limit = min(stop_at, time.monotonic() + args.budget / 2)
                series, total, done = measure(
                    server, rows, images, threads, args.blocks, args.block, limit, total
                )
                out += [*table(threads, series, done, args.block), ""]
            lags, total = single_lags(server, rows, images, args.singles, total)
            seconds = time.monotonic() - started
            server_cpu = cpu_seconds(pids) - server_cpu
            other = machine_cpu_seconds() - machine - server_cpu - (own_cpu_seconds() - own)
            stored, reported = rows.count(), shadow_runs(server)
            rows.close()
        out += [
            f"one request at a time, idle server: shadow row visible {statistics.median(lags):.0f}"
            f" ms (median; max {max(lags):.0f} ms) after the answer (SQLite polled every "
            f"{POLL_S * 1e3:.0f} ms)",
            f"shadowed requests answered {total}, shadow rows stored {stored}, results API "
            f"shadows.{SHADOW_MODEL}.runs {reported}",
            f"measured over {seconds:.1f} s ({time.monotonic() - begun:.0f} s with start-up); "
            f"other processes used {max(0.0, other) / seconds:.2f} cores meanwhile",
        ]
    sys.stdout.write("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
