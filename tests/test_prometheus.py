"""A real Prometheus (Debian's) scrapes a 2-worker gunicorn started as `make serve` starts it.

Prometheus runs with a throwaway config and data folder on a free port of 127.0.0.1, scraping
``/metrics`` every second with the bearer token the server requires (``METRICS_TOKEN``). The
predictions the test sends, spread over both workers, come back as exactly that number from a
PromQL query through Prometheus's HTTP API; a killed worker keeps its counts (multiprocess mode
sums its files) while ``child_exit`` drops its live gauges; the folder goes when the server stops.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.load import (
    PREDICT_PATH,
    ChildServer,
    Client,
    GunicornServer,
    basic_auth,
    free_port,
    predict_job,
    run_load,
)
from tests.test_metrics_endpoint import dashboard_queries

pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)

WORKERS = 2
PREDICTIONS = 40
CLIENTS = 4
SCRAPE_S = 1
#: Every wait here ends: Prometheus start, a scrape, a worker's replacement.
DEADLINE_S = 30.0
TOKEN = secrets.token_urlsafe(24)
CONFIG = """\
global:
  scrape_interval: {interval}s
  scrape_timeout: {interval}s
scrape_configs:
  - job_name: chorus
    metrics_path: /metrics
    authorization:
      type: Bearer
      credentials: {token}
    static_configs:
      - targets: ["127.0.0.1:{port}"]
"""


class Prometheus(ChildServer):
    """``prometheus`` on a free port of 127.0.0.1 with its own config and data folder."""

    stop_timeout = 15.0

    def __init__(self, workdir: Path, target_port: int) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail(
                "Debian's prometheus is not installed: `make test` installs it (make prometheus)"
            )
        super().__init__(workdir / "prometheus.log")
        self.binary = binary
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = workdir / "prometheus.yml"
        self.config.write_text(CONFIG.format(interval=SCRAPE_S, token=TOKEN, port=target_port))
        self.data = workdir / "data"

    def command(self) -> list[str]:
        return [
            self.binary,
            f"--config.file={self.config}",
            f"--storage.tsdb.path={self.data}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]

    def wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"prometheus not ready: {self.log_tail()}")

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query through the HTTP API (``/api/v1/query``): the result vector."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as answer:
            body = json.load(answer)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def value(self, promql: str) -> float | None:
        """The one value of a scalar-like query, or None while it has no series."""
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, promql: str, expected: float) -> float | None:
        """Poll until the query gives ``expected`` or the deadline passes; the last value."""
        deadline = time.monotonic() + DEADLINE_S
        value = self.value(promql)
        while value != expected and time.monotonic() < deadline:
            time.sleep(0.25)
            value = self.value(promql)
        return value


@pytest.fixture(scope="module")
def chorus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    """Two workers behind a metrics token, their multiprocess folder under ``workdir/metrics``."""
    workdir: Path = tmp_path_factory.mktemp("prometheus-chorus")
    (workdir / "metrics").mkdir()
    env = {
        "WEB_CONCURRENCY": str(WORKERS),
        "METRICS_TOKEN": TOKEN,
        "METRICS_DIR": str(workdir / "metrics"),
    }
    with GunicornServer(workdir, env=env) as server:
        yield server


@pytest.fixture(scope="module")
def prometheus(
    chorus: GunicornServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    with Prometheus(tmp_path_factory.mktemp("prometheus"), chorus.port) as running:
        yield running


def metrics_folder(server: GunicornServer) -> Path:
    """The server's own multiprocess folder (gunicorn.conf.py names it by the port)."""
    base = Path(server.env["METRICS_DIR"])
    (folder,) = base.glob(f"chorus-metrics-{server.port}-*")
    return folder


def test_prometheus_counts_every_prediction_whichever_worker_served_it(
    chorus: GunicornServer, prometheus: Prometheus, image_png: bytes
) -> None:
    assert prometheus.wait_for('up{job="chorus"}', 1.0) == 1.0, prometheus.query("up")
    jobs = [predict_job(image_png, "ab") for _ in range(PREDICTIONS)]
    samples = run_load(chorus.url, [jobs[c::CLIENTS] for c in range(CLIENTS)], time.time() + 120)
    assert Counter(s.status for s in samples) == {200: PREDICTIONS}, [s.error for s in samples]
    deadline = time.monotonic() + 5
    while sum(chorus.served_by(PREDICT_PATH).values()) < PREDICTIONS:
        assert time.monotonic() < deadline, chorus.log_tail()
        time.sleep(0.05)
    assert len(chorus.served_by(PREDICT_PATH)) == WORKERS  # both workers' counts must be summed

    served = prometheus.wait_for('sum(ensemble_predictions_total{status="ok"})', PREDICTIONS)

    assert served == PREDICTIONS
    assert prometheus.value('sum(ensemble_routing_decisions_total{experiment="ab"})') == PREDICTIONS
    assert prometheus.value("sum(ensemble_model_latency_ms_count)") == PREDICTIONS
    by_model = {
        r["metric"]["model"]: float(r["value"][1])
        for r in prometheus.query("sum by (model) (ensemble_routing_decisions_total)")
    }
    with Client(chorus.url) as client:
        stats = client.get_json("/api/v1/experiments/ab/results", basic_auth(chorus.admin_password))
    assert by_model == {arm: n["served"] for arm, n in stats["arms"].items() if n["served"]}
    # The buckets as scraped give a p95 (the dashboard takes it over a rate of the same series).
    p95 = prometheus.value(
        "histogram_quantile(0.95, sum by (le) (ensemble_model_latency_ms_bucket))"
    )
    assert p95 is not None and 0 < p95 < 5000


def test_a_killed_worker_keeps_its_counts_and_drops_its_live_gauges(
    chorus: GunicornServer, prometheus: Prometheus
) -> None:
    folder = metrics_folder(chorus)
    victim = chorus.served_by(PREDICT_PATH).most_common(1)[0][0]
    assert (folder / f"gauge_livemax_{victim}.db").exists()  # it set the model version gauge
    booted = len(chorus.worker_pids())

    os.kill(victim, signal.SIGKILL)

    deadline = time.monotonic() + DEADLINE_S
    while (folder / f"gauge_livemax_{victim}.db").exists() or len(chorus.worker_pids()) == booted:
        assert time.monotonic() < deadline, chorus.log_tail()
        time.sleep(0.1)
    assert (folder / f"counter_{victim}.db").exists()  # its counts stay in the sums
    time.sleep(2.5 * SCRAPE_S)  # at least two scrapes since the kill
    assert prometheus.value('sum(ensemble_predictions_total{status="ok"})') == PREDICTIONS
    assert prometheus.value('up{job="chorus"}') == 1.0


def test_prometheus_accepts_every_query_of_the_shipped_dashboard(prometheus: Prometheus) -> None:
    answered = {expr: prometheus.query(expr) for expr in dashboard_queries()}
    assert answered["max by (model) (ensemble_model_accuracy)"] == []  # no feedback was sent
    assert answered["sum by (experiment, model) (rate(ensemble_routing_decisions_total[5m]))"]


def test_stopping_the_server_removes_its_metrics_folder(chorus: GunicornServer) -> None:
    folder = metrics_folder(chorus)
    chorus.stop()
    assert chorus.process is not None and chorus.process.returncode == 0, chorus.log_tail()
    assert not folder.exists()
