"""Load on the real server: concurrent clients on /api/v1/predict (all strategies) and /healthz.

`python -m bench.load [--url URL] [--clients 16] [--requests 3200] [--duration 60]` starts the
default server itself (gunicorn.conf.py defaults, a temporary SQLite database, 127.0.0.1) unless
--url names a running one, and prints, from one run, req/s and p50/p95/p99 latency per endpoint,
the predict/healthz ratio, errors and lost records (200 answers vs /api/v1/stats), each next to
its target. Exit status 1 when a request failed or a record was lost. It also prints the CPU the
clients, the server workers and everything else on the machine spent, so a run disturbed by
another job shows it. Clients are threads on raw keep-alive connections: on 2 cores they cost
0.6-0.7 ms of CPU per request against 0.8 ms as processes (--processes), under 8% of the server's.

The pieces (``GunicornServer``, ``Client``, ``run_load``) also serve tests/test_serve_gunicorn.py.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import http.client
import json
import logging
import os
import re
import resource
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Self

from experiments.stats import percentile

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
STRATEGIES = ("bagging", "boosting", "stacking", "ab")
PREDICT_PATH = "/api/v1/predict"
HEALTHZ_PATH = "/healthz"
ADMIN_USER = "admin"
#: What the issue asks of two workers on two cores.
TARGET_PREDICTIONS_PER_S = 100.0
TARGET_P95_MS = 150.0
_ACCESS_PID = re.compile(r'"[A-Z]+ (\S+) HTTP/[\d.]+" \d+ .* pid=<(\d+)>')
_ACCESS_RID = re.compile(r"pid=<(\d+)> rid=(\S+)")


def free_port() -> int:
    """A port the kernel just handed out on 127.0.0.1 (free unless someone races for it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def basic_auth(password: str, user: str = ADMIN_USER) -> dict[str, str]:
    """HTTP Basic ``Authorization`` header for the admin API."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return {"Authorization": f"Basic {token}"}


class Client:
    """One keep-alive HTTP/1.1 connection: a raw ``http.client`` loop leaves the server's cores be.

    http.client reopens the connection by itself after a ``Connection: close`` answer (the sync
    worker sends one every time); a failed request closes it and is never retried, so a POST is
    never sent twice.
    """

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"need an http://host:port URL, got {url!r}")
        self.connection = http.client.HTTPConnection(
            parts.hostname, parts.port or 80, timeout=timeout
        )

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """Send one request and read the whole answer: (status, body)."""
        try:
            self.connection.request(method, path, body=body, headers=dict(headers or {}))
            response = self.connection.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException):
            self.connection.close()
            raise

    def get_json(self, path: str, headers: Mapping[str, str] | None = None) -> Any:
        """GET a JSON document, raising on any answer but 200."""
        status, body = self.request("GET", path, headers=headers)
        if status != 200:
            raise RuntimeError(f"GET {path} answered {status}: {body[:300]!r}")
        return json.loads(body)

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def admin_request(
    url: str, password: str, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    """One admin API call with a JSON body (or none): (status, decoded JSON answer)."""
    headers = basic_auth(password)
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    with Client(url) as client:
        status, answer = client.request(method, path, data, headers)
    return status, json.loads(answer) if answer else None


def total_predictions(url: str, password: str) -> int:
    """``total_predictions`` from the admin stats API: what the database recorded."""
    with Client(url) as client:
        return int(client.get_json("/api/v1/stats", basic_auth(password))["total_predictions"])


class ChildServer:
    """A server process the benches and tests start: ``command()`` run with its output in
    ``log_path``, ready once ``wait_ready`` returns, always stopped and reaped on exit."""

    #: Seconds a SIGTERM gets before SIGKILL.
    stop_timeout = 45.0

    def __init__(self, log_path: Path, env: Mapping[str, str] | None = None) -> None:
        self.log_path = log_path
        #: The child's whole environment (the caller's when ``env`` is None).
        self.env: dict[str, str] = dict(os.environ if env is None else env)
        #: Where the server runs from (another checkout for bench.throughput's first release).
        self.cwd: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def wait_ready(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        with open(self.log_path, "wb") as log_file:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                self.command(),
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM (a graceful stop), SIGKILL if it hangs; always reaps the process."""
        if self.process is None or self.process.poll() is not None:
            return
        wait = self.stop_timeout if timeout is None else timeout
        self.process.terminate()
        try:
            self.process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            log.warning("%s ignored SIGTERM for %.0fs; killing it", type(self).__name__, wait)
            self.process.kill()
            self.process.wait()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


class GunicornServer(ChildServer):
    """``gunicorn -c gunicorn.conf.py 'app:create_app()'`` as `make serve` runs it, on a free port.

    The database is a SQLite file in ``workdir`` (with the server log); SECRET_KEY and
    ADMIN_PASSWORD are random unless ``env`` sets them; everything else comes from the caller's
    environment and gunicorn.conf.py's defaults.
    """

    def __init__(
        self, workdir: Path, env: Mapping[str, str] | None = None, ready_timeout: float = 120.0
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ready_timeout = ready_timeout
        env = {
            **os.environ,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "DATABASE_URL": f"sqlite:///{workdir / 'chorus.db'}",
            "SECRET_KEY": secrets.token_hex(32),
            "ADMIN_PASSWORD": secrets.token_urlsafe(16),
            "FLASK_DEBUG": "0",
            **(env or {}),
        }
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the Makefile exports
        # wait_ready counts the workers from gunicorn's INFO boot lines, even when the app's
        # LOG_LEVEL is quieter (bench.v2 sets WARNING: it never got ready).
        env.setdefault("GUNICORN_LOG_LEVEL", "info")
        super().__init__(workdir / "gunicorn.log", env)
        self.admin_password = env["ADMIN_PASSWORD"]
        #: Workers gunicorn.conf.py starts (its default: 2); ready means all of them booted.
        self.workers = int(env.get("WEB_CONCURRENCY", "").strip() or 2)
        self.cwd = ROOT

    def command(self) -> list[str]:
        """What to run (deploy/serve.py's front overrides it: tests/servers.py)."""
        return [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:create_app()"]

    def wait_ready(self) -> None:
        """Poll /readyz until 200 and every worker has booted (one may answer before the master
        has forked the next); fail with the log if gunicorn exits or never gets ready."""
        assert self.process is not None
        deadline = time.monotonic() + self.ready_timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"gunicorn exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                with Client(self.url, timeout=5.0) as client:
                    status, body = client.request("GET", "/readyz")
                booted = len(self.worker_pids())
                if status == 200 and booted >= self.workers:
                    log.info("server ready at %s (log: %s)", self.url, self.log_path)
                    return
                last = f"{status} {body[:200]!r}, {booted} of {self.workers} workers booted"
            except OSError as exc:
                last = repr(exc)
            time.sleep(0.25)
        raise RuntimeError(
            f"{self.url}/readyz not ready after {self.ready_timeout:.0f}s ({last}):\n"
            f"{self.log_tail()}"
        )

    def worker_pids(self) -> list[int]:
        """Pids of the workers gunicorn booted, from its log."""
        return [int(p) for p in re.findall(r"Booting worker with pid: (\d+)", self.log_text())]

    def worker_class(self) -> str:
        found = re.search(r"Using worker: (\S+)", self.log_text())
        return found.group(1) if found else "?"

    def served_by(self, path: str) -> Counter[int]:
        """Requests per worker pid for one path, read from the access log."""
        return Counter(
            int(pid) for p, pid in _ACCESS_PID.findall(self.log_text()) if p.startswith(path)
        )

    def pids_by_request_id(self) -> dict[str, int]:
        """Which worker pid answered each request, by the X-Request-ID the client sent."""
        return {rid: int(pid) for pid, rid in _ACCESS_RID.findall(self.log_text())}

    def workers_of(self, request_ids: Sequence[str], timeout: float = 5.0) -> dict[str, int]:
        """Worker pid per request id, waiting for the access lines: a worker logs its line just
        after the answer has left, so the client can read the answer before the line exists."""
        deadline = time.monotonic() + timeout
        found = self.pids_by_request_id()
        while not set(request_ids) <= set(found) and time.monotonic() < deadline:
            time.sleep(0.05)
            found = self.pids_by_request_id()
        missing = set(request_ids) - set(found)
        if missing:
            raise AssertionError(f"{len(missing)} requests missing from the access log")
        return {rid: found[rid] for rid in request_ids}


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name (as lscpu shows it), so timings say what they were measured on."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def _stat_fields(stat: Path) -> list[str]:
    """A /proc/<pid>/stat's fields after the command name (field 3 on); none once it exited."""
    try:
        return stat.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def cpu_seconds(pids: Sequence[int]) -> float:
    """User+system CPU of live processes (Linux /proc), to see what the server itself spent."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = _stat_fields(Path(f"/proc/{pid}/stat"))
        if fields:
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / ticks


def process_tree(root: int) -> list[int]:
    """``root`` and every live process below it (Linux /proc): a server's master, workers, nginx."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        fields = _stat_fields(stat)
        if fields:
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def machine_cpu_seconds() -> float:
    """Busy CPU of the whole machine (Linux /proc/stat), to tell a run disturbed by other jobs."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU of this process and its reaped children (process-mode clients once joined)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Job(NamedTuple):
    """One request a client will send; ``strategy`` is None for /healthz."""

    strategy: str | None
    method: str
    path: str
    body: bytes | None
    headers: Mapping[str, str]


class Sample(NamedTuple):
    """What one request did; times are wall clock (comparable across processes)."""

    strategy: str | None
    status: int  # 0 when no HTTP answer came back
    latency_ms: float
    started: float
    ended: float
    prediction_id: str | None
    error: str | None


def predict_job(image_png: bytes, strategy: str) -> Job:
    """A multipart POST /api/v1/predict of one PNG, as a browser-less client sends it."""
    boundary = secrets.token_hex(16)
    body = b"".join(
        [
            f'--{boundary}\r\nContent-Disposition: form-data; name="strategy"\r\n\r\n'
            f"{strategy}\r\n".encode(),
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
            f'filename="item.png"\r\nContent-Type: image/png\r\n\r\n'.encode(),
            image_png,
            f"\r\n--{boundary}--\r\n".encode(),
        ]
    )
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    return Job(strategy, "POST", PREDICT_PATH, body, headers)


HEALTHZ_JOB = Job(None, "GET", HEALTHZ_PATH, None, {})


def run_client(url: str, jobs: Sequence[Job], deadline: float) -> list[Sample]:
    """One client: its jobs in order on one connection, until done or past ``deadline``."""
    samples = []
    with Client(url) as client:
        for job in jobs:
            if time.time() >= deadline:
                break
            started = time.time()
            tick = time.perf_counter()
            status, body, error = 0, b"", None
            try:
                status, body = client.request(job.method, job.path, job.body, job.headers)
            except (OSError, http.client.HTTPException) as exc:
                error = f"{type(exc).__name__}: {exc}"
            latency_ms = (time.perf_counter() - tick) * 1e3
            prediction_id = None
            if status == 200 and job.strategy is not None:
                prediction_id = json.loads(body)["prediction_id"]
            elif status != 200 and error is None:
                error = f"{status}: {body[:200]!r}"
            samples.append(
                Sample(job.strategy, status, latency_ms, started, time.time(), prediction_id, error)
            )
    return samples


def run_load(
    url: str, plans: Sequence[Sequence[Job]], deadline: float, processes: bool = False
) -> list[Sample]:
    """Run one client per plan at once (threads, or processes with ``processes``)."""
    pool_class = (
        concurrent.futures.ProcessPoolExecutor
        if processes
        else concurrent.futures.ThreadPoolExecutor
    )
    with pool_class(max_workers=len(plans)) as pool:
        futures = [pool.submit(run_client, url, plan, deadline) for plan in plans]
        return [sample for future in futures for sample in future.result()]


def make_plans(
    images: Sequence[bytes],
    clients: int,
    requests: int,
    mix: Sequence[str | None] = (*STRATEGIES, None),
) -> list[list[Job]]:
    """``requests`` jobs dealt to ``clients``: the ``mix`` in turn (strategies; None is /healthz),
    each client starting at a different point so every moment mixes them all."""
    plans: list[list[Job]] = [[] for _ in range(clients)]
    for n in range(requests):
        client = n % clients
        strategy = mix[(client + n // clients) % len(mix)]
        image = images[n % len(images)]
        plans[client].append(HEALTHZ_JOB if strategy is None else predict_job(image, strategy))
    return plans


def fashion_mnist_pngs(count: int) -> list[bytes]:
    """Real Fashion-MNIST test images as PNG uploads."""
    from models.data import load_fashion_mnist
    from views.images import png_bytes

    images = load_fashion_mnist().test_images[:count]
    return [png_bytes(image) for image in images]


@dataclass
class Figures:
    """The numbers of one endpoint in one run."""

    requests: int
    errors: int
    per_s: float
    p50: float
    p95: float
    p99: float

    @classmethod
    def of(cls, samples: Sequence[Sample], seconds: float) -> Figures:
        latencies = [s.latency_ms for s in samples]
        p50, p95, p99 = (percentile(latencies, q) or float("nan") for q in (50, 95, 99))
        errors = sum(s.status != 200 for s in samples)
        return cls(len(samples), errors, len(samples) / seconds, p50, p95, p99)

    def row(self, name: str) -> str:
        return (
            f"{name:10}{self.requests:>9}{self.errors:>8}{self.per_s:>9.1f}"
            f"{self.p50:>9.1f}{self.p95:>9.1f}{self.p99:>9.1f}"
        )


def elapsed(samples: Sequence[Sample]) -> float:
    """Wall seconds from the first request sent to the last answer read."""
    return max(s.ended for s in samples) - min(s.started for s in samples)


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def report(
    samples: Sequence[Sample], lost: int | None, header: Sequence[str], cpu: Mapping[str, float]
) -> tuple[str, bool]:
    """The result table and whether the run was correct (no errors, no lost records)."""
    seconds = elapsed(samples)
    predict = [s for s in samples if s.strategy is not None]
    healthz = [s for s in samples if s.strategy is None]
    figures = {"predict": Figures.of(predict, seconds), "healthz": Figures.of(healthz, seconds)}
    by_strategy = {
        name: Figures.of([s for s in predict if s.strategy == name], seconds) for name in STRATEGIES
    }
    p, h = figures["predict"], figures["healthz"]
    errors = p.errors + h.errors
    ok_predictions = sum(s.status == 200 for s in predict)
    ids = [s.prediction_id for s in predict if s.prediction_id]
    duplicates = len(ids) - len(set(ids))
    out = [*header, f"measured over {seconds:.1f} s", ""]
    out.append(
        f"{'endpoint':10}{'requests':>9}{'errors':>8}{'req/s':>9}"
        f"{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
    )
    out += [figures[name].row(name) for name in figures]
    out += [f.row("  " + name) for name, f in by_strategy.items()]
    out += [
        "",
        f"predict/healthz latency ratio: p50 {p.p50 / h.p50:.1f}x, p95 {p.p95 / h.p95:.1f}x",
        f"predictions/s      {p.per_s:8.1f}   target >= {TARGET_PREDICTIONS_PER_S:.0f}   "
        f"{verdict(p.per_s >= TARGET_PREDICTIONS_PER_S)}",
        f"predict p95 ms     {p.p95:8.1f}   target <= {TARGET_P95_MS:.0f}   "
        f"{verdict(p.p95 <= TARGET_P95_MS)}",
        f"errors             {errors:8d}   target 0     {verdict(errors == 0)}",
    ]
    if lost is None:
        out.append(f"{'lost records':19}{'?':>8}   target 0     (no admin password: not checked)")
    else:
        out.append(
            f"lost records       {lost:8d}   target 0     {verdict(lost == 0)}"
            f"   ({ok_predictions} answered 200 in the measured run)"
        )
    out.append(f"duplicate ids      {duplicates:8d}")
    for name, value in cpu.items():
        out.append(f"{name:19}{value:8.2f}")
    kinds = Counter(s.error.split(":")[0] for s in samples if s.error)
    out += [f"  error {kind}: {n}" for kind, n in kinds.most_common(5)]
    return "\n".join(out) + "\n", errors == 0 and not lost and duplicates == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server (default: start one on 127.0.0.1)")
    parser.add_argument(
        "--admin-password",
        default=os.environ.get("ADMIN_PASSWORD"),
        help="for --url: to count records through /api/v1/stats (default $ADMIN_PASSWORD)",
    )
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=3200, help="total, both endpoints")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds at most")
    parser.add_argument("--warmup", type=int, default=32, help="unmeasured requests first")
    parser.add_argument("--images", type=int, default=500, help="distinct test images")
    parser.add_argument(
        "--processes", action="store_true", help="clients as processes instead of threads"
    )
    args = parser.parse_args(argv)
    if args.clients < 1 or args.requests < 1 or args.duration <= 0:
        parser.error("--clients, --requests and --duration must be positive")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    images = fashion_mnist_pngs(args.images)
    log.info("%d test images encoded as PNG", len(images))
    with tempfile.TemporaryDirectory(prefix="chorus-bench-") as workdir:
        if args.url:
            return measure(args, images, args.url.rstrip("/"), args.admin_password, None)
        with GunicornServer(Path(workdir)) as server:
            return measure(args, images, server.url, server.admin_password, server)


def measure(
    args: argparse.Namespace,
    images: Sequence[bytes],
    url: str,
    password: str | None,
    server: GunicornServer | None,
) -> int:
    """Warm up, run the measured load, count records, print the report."""
    recorded_before = total_predictions(url, password) if password else None
    warm = run_load(url, make_plans(images, args.clients, args.warmup), time.time() + 60)
    plans = make_plans(images, args.clients, args.requests)
    pids = server.worker_pids() if server else []
    server_cpu, client_cpu, machine_cpu = (
        cpu_seconds(pids),
        own_cpu_seconds(),
        machine_cpu_seconds(),
    )
    log.info("%d clients, %d requests, at most %.0f s", args.clients, args.requests, args.duration)
    samples = run_load(url, plans, time.time() + args.duration, processes=args.processes)
    client_cpu = own_cpu_seconds() - client_cpu
    server_cpu = cpu_seconds(pids) - server_cpu
    machine_cpu = machine_cpu_seconds() - machine_cpu
    if not samples:
        raise SystemExit(f"no request finished within --duration {args.duration:g} s")
    lost = None
    if password and recorded_before is not None:
        answered = sum(s.status == 200 and s.strategy is not None for s in [*warm, *samples])
        lost = answered - (total_predictions(url, password) - recorded_before)
    mode = "processes" if args.processes else "threads"
    started = (
        f"{len(pids)} {server.worker_class()} workers (gunicorn.conf.py), temporary SQLite"
        if server
        else "given with --url"
    )
    with Client(url) as client:
        version = client.get_json("/readyz").get("model_version", "?")
    header = [
        f"server {url}: {started}; model version {version}",
        f"{args.clients} clients ({mode}), {len(samples)} measured requests after "
        f"{len(warm)} warm-up",
    ]
    cpu = {"client CPU ms/req": client_cpu * 1e3 / len(samples)}
    if pids:
        cpu["server CPU ms/req"] = server_cpu * 1e3 / len(samples)
        # Whatever else ran meanwhile (another job, the gunicorn master): near 0 in a clean run.
        other = max(0.0, machine_cpu - server_cpu - client_cpu)
        cpu["other CPU, cores"] = other / elapsed(samples)
    text, correct = report(samples, lost, header, cpu)
    sys.stdout.write(text)
    return 0 if correct else 1


if __name__ == "__main__":
    raise SystemExit(main())
