"""Gunicorn settings for Chorus, all from the environment (DESIGN.md, "Configuration").

``gunicorn -c gunicorn.conf.py 'app:create_app()'`` (what ``make serve`` and the Dockerfile run).
Every setting below can still be overridden on the command line or in ``GUNICORN_CMD_ARGS``.

variable                   default         meaning
HOST, PORT                 127.0.0.1 8000  where to listen (the container sets HOST=0.0.0.0)
WEB_CONCURRENCY            2               worker processes (CPU-bound: one per core)
GUNICORN_THREADS           1               threads per worker (>1 switches to gthread)
TORCH_THREADS              1               torch intra-op threads per worker (app.py)
GUNICORN_TIMEOUT           30              seconds before a silent worker is killed
GUNICORN_GRACEFUL_TIMEOUT  30              seconds a worker gets to finish on restart/stop (make
                                           serve sets its STOP_TIMEOUT, 5, unless given)
GUNICORN_KEEPALIVE         5               idle keep-alive seconds (sync workers ignore it)
GUNICORN_ACCESS_LOG        -               access log file; "-" is stdout, "off" disables it
GUNICORN_CONTROL_SOCKET    (none)          path for gunicornc's control socket, if wanted
LOG_LEVEL                  info            gunicorn's error log level (the app reads it too)
GUNICORN_LOG_LEVEL         LOG_LEVEL       gunicorn's alone, when it should differ from the app's
FORWARDED_ALLOW_IPS        (none)          TCP peers whose X-Forwarded-* gunicorn believes ("*" when
                                           only a proxy can reach the port, as in compose)
METRICS_DIR                /dev/shm        where this server's Prometheus multiprocess folder goes
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from typing import Any


def _env_int(name: str, default: int, low: int = 0) -> int:
    """Read a whole-number setting, refusing nonsense with a message that names the variable."""
    raw = os.environ.get(name, "").strip() or str(default)
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if value < low:
        raise SystemExit(f"{name} must be a whole number >= {low}, got {raw!r}")
    return value


_host = os.environ.get("HOST", "").strip() or "127.0.0.1"
_port = _env_int("PORT", 8000, low=1)
bind = [f"[{_host}]:{_port}" if ":" in _host else f"{_host}:{_port}"]

# Predictions are CPU-bound: one worker process per core, each on one torch thread. One thread
# per worker (the sync worker) measured best with `python -m bench.load` on 2 cores: gthread with
# 2-8 threads spent ~15% more CPU per request (GIL) and raised predict p95 from ~105 to 165-196 ms.
workers = _env_int("WEB_CONCURRENCY", 2, low=1)
threads = _env_int("GUNICORN_THREADS", 1, low=1)
timeout = _env_int("GUNICORN_TIMEOUT", 30)
graceful_timeout = _env_int("GUNICORN_GRACEFUL_TIMEOUT", 30)
keepalive = _env_int("GUNICORN_KEEPALIVE", 5)

# X-Forwarded-Proto/For are believed from no TCP peer: behind nginx gunicorn listens on a unix
# socket (whose peers gunicorn always trusts) and the app's ProxyFix reads them (TRUSTED_PROXIES).
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "").strip()

# Load the models once in the master; forked workers share those pages copy-on-write.
preload_app = True


# Prometheus multiprocess mode (serving/metrics.py): workers write their samples to files in a
# folder of this server's own, made fresh at each start (named by port and master pid) and
# removed at exit, so two servers never sum or wipe each other's; folders of masters that died
# without exiting (SIGKILL) are swept. Set before the preloaded app imports prometheus_client;
# a reload (HUP re-reads this file in the same master) keeps it.
def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        pass
    return True


if os.environ.get("CHORUS_METRICS_MASTER") != str(os.getpid()):
    _metrics_base = os.environ.get("METRICS_DIR", "").strip() or (
        "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
    )
    for _stale in glob.glob(os.path.join(glob.escape(_metrics_base), "chorus-metrics-*-*-*")):
        if not _alive(os.path.basename(_stale).split("-")[3]):
            shutil.rmtree(_stale, ignore_errors=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(
        prefix=f"chorus-metrics-{_port}-{os.getpid()}-", dir=_metrics_base
    )
    os.environ["CHORUS_METRICS_MASTER"] = str(os.getpid())

# Heartbeat files on tmpfs: an fchmod on a disk-backed /tmp can stall a worker (gunicorn docs).
worker_tmp_dir = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None

# gunicorn 25+ opens a control socket at one fixed path per user, so two servers on one machine
# (tests, a benchmark next to `make serve`) would unlink each other's; only on request here.
_control_socket = os.environ.get("GUNICORN_CONTROL_SOCKET", "").strip()
control_socket_disable = not _control_socket
if _control_socket:
    control_socket = _control_socket

_access_log = os.environ.get("GUNICORN_ACCESS_LOG", "").strip() or "-"
accesslog = None if _access_log == "off" else _access_log
# The request id is the X-Request-ID response header views/hooks.py sets, as in the app's logs.
access_log_format = (
    '%(h)s %(t)s "%(r)s" %(s)s %(b)s %(M)sms pid=%(p)s rid=%({x-request-id}o)s "%(a)s"'
)
errorlog = "-"
# GUNICORN_LOG_LEVEL apart from the app's LOG_LEVEL: bench.load reads gunicorn's INFO lines
# ("Booting worker with pid") to know every worker is up, whatever the app logs.
loglevel = (
    os.environ.get("GUNICORN_LOG_LEVEL", "").strip()
    or os.environ.get("LOG_LEVEL", "").strip()
    or "info"
).lower()


def post_fork(server: Any, worker: Any) -> None:
    """Pin each worker to TORCH_THREADS (default 1) so N workers do not fight over N cores,
    and make it send each response's headers and body in one write (deploy/one_write.py)."""
    import torch

    from app import set_torch_threads  # both already imported by the preloaded master
    from deploy.one_write import install

    set_torch_threads()
    install()
    server.log.info("worker %s: %d torch thread(s)", worker.pid, torch.get_num_threads())


def worker_exit(server: Any, worker: Any) -> None:
    """End the worker here, with its exit status, once the atexit work (the deferred jobs'
    drain, log flushing) is done: the interpreter's teardown in a forked worker can hang on
    thread pools the preloaded master made (torch, ONNX Runtime) until the graceful timeout
    kills it, which made a SIGTERM take 31 s instead of about 1 s."""
    import atexit
    import sys

    error = sys.exc_info()[1]  # gunicorn calls this while the worker's SystemExit propagates
    status = 0
    if isinstance(error, SystemExit):
        status = error.code if isinstance(error.code, int) else int(error.code is not None)
    elif error is not None:
        status = 1
    atexit._run_exitfuncs()  # what the teardown would run first; the rest is skipped
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(status)


def child_exit(server: Any, worker: Any) -> None:
    """A worker died: its live gauges (model version) leave the sums; its counters stay."""
    from serving.metrics import mark_worker_dead

    mark_worker_dead(worker.pid)


def on_exit(server: Any) -> None:
    """Remove this server's metrics folder: nothing reads it once every worker is gone."""
    shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


def post_worker_init(worker: Any) -> None:
    """Start the worker's model-version follower now, not at its first request, so an idle
    worker switches versions as fast as a busy one (serving/versions.py)."""
    services = getattr(worker.wsgi, "extensions", {}).get("chorus")
    if services is not None:
        services.versions.follow()
