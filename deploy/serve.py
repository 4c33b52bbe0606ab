"""``make serve``: nginx in front on ``$HOST:$PORT``, gunicorn behind it on a unix socket.

``python -m deploy.serve`` renders ``deploy/nginx.conf.template`` into a directory of its own
per PORT (``FRONT_DIR``, default ``instance/front-$PORT``: config, pid, temp paths, error log,
gunicorn's socket and nginx's body-tier socket), starts gunicorn (``gunicorn.conf.py``,
``TRUSTED_PROXIES=1``) on the socket, waits for it to listen, then runs nginx in the foreground.
Both are children of this process, in process groups of their own (a terminal's Ctrl-C reaches
this process only) and told to stop should it die. A Ctrl-C or SIGTERM stops nginx first (it
stops accepting and finishes what it holds) and gunicorn after it, each given STOP_TIMEOUT
seconds for requests in flight; when either exits on its own the other is stopped too.

variable               default              meaning
HOST, PORT             127.0.0.1 8000       where nginx listens
FRONT_DIR              instance/front-PORT  the per-instance run directory
NGINX                  nginx                the nginx binary (Debian's package: make nginx)
NGINX_WORKERS          1                    nginx worker processes
CLIENT_TIMEOUT         10                   seconds a client gets to send headers, or between
                                            two reads of its body, before a 408 (a stalled
                                            header is closed: nginx answers none)
STOP_TIMEOUT           5                    seconds requests in flight get on Ctrl-C/SIGTERM
                                            (nginx's worker_shutdown_timeout; gunicorn's
                                            graceful timeout unless GUNICORN_GRACEFUL_TIMEOUT)
PREDICT_RATE_LIMIT     (off)                per-address limit on POST /api/v1/predict in
                                            requests per second, e.g. 20; off by default so a
                                            load test from one address measures the server
PREDICT_RATE_BURST     20                   requests above the rate accepted at once
MAX_UPLOAD_MB          10                   the app's upload limit; nginx's body limit matches
GUNICORN_TIMEOUT       30                   gunicorn's; nginx waits 5 s longer for an answer
UPSTREAM               (the socket)         another gunicorn address, e.g. app:8000 (compose)
NGINX_ERROR_LOG        FRONT_DIR/error.log  nginx's error log ("stderr" in a container)
GUNICORN_ACCESS_LOG    off                  behind the front; nginx's access log already has
                                            each request once, with its request id ("-" adds
                                            gunicorn's line per request, with the worker pid)

``python -m deploy.serve --print-config`` prints the config these settings give and exits
(``deploy/nginx.compose.conf`` is made that way; tests/test_deploy_files.py keeps it current).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

log = logging.getLogger("chorus.front")

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = Path(__file__).resolve().parent / "nginx.conf.template"
#: app.FORM_OVERHEAD_BYTES (not imported: that would load torch into this small process; a test
#: checks the two agree).
FORM_OVERHEAD_BYTES = 64 * 1024
SOCKET_NAME = "gunicorn.sock"
#: nginx's own second server (the body tier, nginx.conf.template says why).
BODY_SOCKET_NAME = "nginx-body.sock"
#: The internal locations of the errors nginx answers itself (``ERROR_URI`` + status).
ERROR_URI = "/.chorus-errors/"
#: Where the front sends a 408 off the API: nginx's ``return 408`` alone would answer nothing.
HTML_408_URI = ERROR_URI + "408.html"
#: Seconds the front waits beyond the body tier's timeouts, so the body tier answers first.
TIER_SLACK_S = 5
#: Seconds a child gets to exit after its last stop signal's deadline, before it is killed.
KILL_AFTER_S = 3
PR_SET_PDEATHSIG = 1
#: JSON bodies of the errors nginx answers itself on /api/ and /v2/ (no quotes or backslashes).
ERROR_MESSAGES: dict[int, str] = {
    400: "The request could not be read (malformed request line or headers). Check it and send "
    "it again.",
    408: "The request arrived too slowly, so it was dropped after @TIMEOUT@ s without data. "
    "Send it again in one go.",
    413: "The request body is larger than @MAX_MB@ MB. Send a smaller image.",
    414: "The request URI is too long. Send parameters in the body instead.",
    429: "Too many predictions from this address. Wait a second and try again.",
    494: "The request headers are too large. Send fewer or shorter headers.",
    500: "The front proxy failed to handle the request. Try again; if it keeps happening, tell "
    "the operator the request id.",
    502: "The application server is not answering (starting, restarting or overloaded). Try "
    "again in a few seconds.",
    503: "The service is temporarily unavailable. Try again in a few seconds.",
    504: "The application server took too long to answer. Try again; a smaller image is faster.",
}


#: nginx's internal "request header too large" answers as the 400 it is on the wire.
PUBLIC_STATUS = {494: 400}
#: What each server answers itself: only the front meets clients (stalls, the rate limit); only
#: the body tier meets gunicorn (502: down, 504: too slow). The front's own 502 means the body
#: tier hung up on a stalled body: a 408.
FRONT_ERRORS = (400, 408, 413, 414, 429, 494, 500, 503, 504)
BODY_ERRORS = (400, 413, 414, 494, 500, 502, 503, 504)


class FrontError(RuntimeError):
    """The front cannot start; the message names the setting or the binary to fix."""


def _env_number(env: Mapping[str, str], name: str, default: float, low: float) -> float:
    """A numeric setting, refusing nonsense with a message that names the variable."""
    raw = env.get(name, "").strip() or str(default)
    try:
        value = float(raw)
    except ValueError:
        value = low - 1
    if value < low:
        raise FrontError(f"{name} must be a number >= {low:g}, got {raw!r}")
    return value


@dataclass(frozen=True)
class FrontConfig:
    """Everything the generated nginx config and the gunicorn command depend on."""

    host: str
    port: int
    run_dir: Path
    nginx: str
    workers: int
    client_timeout: int
    max_body_bytes: int
    upstream_timeout: int
    predict_rate: float | None
    predict_burst: int
    upstream: str | None = None
    error_log: str | None = None
    stop_timeout: int = 5

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> FrontConfig:
        """Read the settings the module docstring lists."""
        port = int(_env_number(env, "PORT", 8000, 1))
        rate = env.get("PREDICT_RATE_LIMIT", "").strip()
        run_dir = env.get("FRONT_DIR", "").strip() or str(ROOT / "instance" / f"front-{port}")
        max_mb = _env_number(env, "MAX_UPLOAD_MB", 10, 0.001)
        return cls(
            host=env.get("HOST", "").strip() or "127.0.0.1",
            port=port,
            run_dir=Path(run_dir).resolve(),
            nginx=env.get("NGINX", "").strip() or "nginx",
            workers=int(_env_number(env, "NGINX_WORKERS", 1, 1)),
            client_timeout=int(_env_number(env, "CLIENT_TIMEOUT", 10, 1)),
            max_body_bytes=int(max_mb * 2**20) + FORM_OVERHEAD_BYTES,
            upstream_timeout=int(_env_number(env, "GUNICORN_TIMEOUT", 30, 0)) + 5,
            predict_rate=_env_number(env, "PREDICT_RATE_LIMIT", 0, 0.001) if rate else None,
            predict_burst=int(_env_number(env, "PREDICT_RATE_BURST", 20, 0)),
            upstream=env.get("UPSTREAM", "").strip() or None,
            error_log=env.get("NGINX_ERROR_LOG", "").strip() or None,
            stop_timeout=int(_env_number(env, "STOP_TIMEOUT", 5, 1)),
        )

    @property
    def socket(self) -> Path:
        return self.run_dir / SOCKET_NAME

    @property
    def body_socket(self) -> Path:
        return self.run_dir / BODY_SOCKET_NAME

    @property
    def listen(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _message(config: FrontConfig, status: int) -> str:
    """An error's text with this instance's timeout and body limit, as the client will see it."""
    max_mb = f"{(config.max_body_bytes - FORM_OVERHEAD_BYTES) / 2**20:g}"
    text = ERROR_MESSAGES[status]
    return text.replace("@TIMEOUT@", str(config.client_timeout)).replace("@MAX_MB@", max_mb)


def error_pages(config: FrontConfig, statuses: tuple[int, ...], front: bool) -> str:
    """``error_page`` lines and one internal location per status: JSON on the API, else nginx's
    page; the front also maps its own 502 to the 408 and has the 408's HTML page.

    The locations are URIs, not named ones: a request whose line could not be read (a 400, a
    414) has no URI, and nginx refuses to send such a request to a named location (a 500)."""
    blocks = []
    if front:
        blocks.append(
            "        # Its own 502: the body tier hung up on a body that stopped arriving.\n"
            f"        error_page 502 = {ERROR_URI}408;"
        )
    for status in statuses:
        # ``return 408`` without a body closes the connection: off the API it needs a page.
        other = f"rewrite ^ {HTML_408_URI} last" if status == 408 else f"return {status}"
        blocks.append(
            f"        error_page {status} = {ERROR_URI}{status};\n"
            f"        location = {ERROR_URI}{status} {{\n"
            "            internal;\n"
            "            default_type application/json;\n"
            + (
                "            keepalive_timeout 0;  # the rest of the body may still come\n"
                if status == 408
                else ""
            )
            + f"            if ($chorus_api = 0) {{ {other}; }}\n"
            f"            return {PUBLIC_STATUS.get(status, status)} "
            f'\'{{"error": "{_message(config, status)}"}}\\n\';\n'
            "        }"
        )
    if front and 408 in statuses:
        blocks.append(
            f"        location = {HTML_408_URI} {{\n"
            "            internal;\n"
            "            default_type text/html;\n"
            "            keepalive_timeout 0;\n"
            "            return 408 '<html>\\n<head><title>408 Request Time-out</title></head>\\n"
            "<body>\\n<center><h1>408 Request Time-out</h1></center>\\n"
            f"<p>{_message(config, 408)}</p>\\n</body>\\n</html>\\n';\n"
            "        }"
        )
    return "\n".join(blocks)


def render(config: FrontConfig, template: str | None = None) -> str:
    """The nginx config for one instance: every path inside its run directory."""
    text = template if template is not None else TEMPLATE.read_text()
    zone, limit = "", ""
    if config.predict_rate is not None:
        rate = max(1, round(config.predict_rate * 60))
        zone = f"limit_req_zone $binary_remote_addr zone=predict:10m rate={rate}r/m;"
        limit = (
            f"limit_req zone=predict burst={config.predict_burst} nodelay;\n"
            "            limit_req_status 429;"
        )
    fields = {
        "WORKERS": str(config.workers),
        "CONNECTIONS": "1024",
        "RUN_DIR": str(config.run_dir),
        "ERROR_LOG": config.error_log or str(config.run_dir / "error.log"),
        "ACCESS_LOG": "/dev/stdout",
        "MAX_BODY_BYTES": str(config.max_body_bytes),
        "CLIENT_TIMEOUT": str(config.client_timeout),
        "FRONT_BODY_TIMEOUT": str(config.client_timeout + TIER_SLACK_S),
        "UPSTREAM_TIMEOUT": str(config.upstream_timeout),
        "FRONT_UPSTREAM_TIMEOUT": str(
            max(config.upstream_timeout, config.client_timeout) + TIER_SLACK_S
        ),
        "STOP_TIMEOUT": str(config.stop_timeout),
        "UPSTREAM": config.upstream or f"unix:{config.socket}",
        "BODY_SOCKET": str(config.body_socket),
        "LISTEN": config.listen,
        "PREDICT_LIMIT_ZONE": zone,
        "PREDICT_LIMIT": limit,
        "FRONT_ERROR_PAGES": error_pages(config, FRONT_ERRORS, front=True),
        "BODY_ERROR_PAGES": error_pages(config, BODY_ERRORS, front=False),
    }
    for name, value in fields.items():
        text = text.replace(f"@{name}@", value)
    return text


def check_reachable(run_dir: Path) -> None:
    """Started as root, nginx's workers run as ``nobody``: every directory above the run
    directory must let others through, or each request would fail with a 502."""
    if os.geteuid() != 0:
        return
    for directory in (run_dir, *run_dir.parents):
        if not directory.stat().st_mode & stat.S_IXOTH:
            raise FrontError(
                f"{directory} is closed to other users, so nginx's workers (user nobody, as "
                f"nginx runs them when started as root) cannot reach {run_dir}. Choose a "
                "FRONT_DIR under a directory others may enter (e.g. /tmp/chorus-front), or "
                "run make serve as an ordinary user."
            )


def prepare(config: FrontConfig) -> Path:
    """Write the config into a fresh run directory (a stale socket or pid is removed; a live
    one means this PORT's front is already running, which is refused)."""
    config.run_dir.mkdir(parents=True, exist_ok=True)
    check_reachable(config.run_dir)
    if config.socket.exists():
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            if probe.connect_ex(str(config.socket)) == 0:
                raise FrontError(
                    f"another Chorus front is already running on {config.socket}; stop it, or "
                    "choose another PORT or FRONT_DIR"
                )
    for stale in (config.socket, config.body_socket, config.run_dir / "nginx.pid"):
        stale.unlink(missing_ok=True)
    path = config.run_dir / "nginx.conf"
    path.write_text(render(config))
    return path


def nginx_binary(name: str) -> str:
    """The nginx executable (PATH, or /usr/sbin which a non-root PATH may lack)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise FrontError(
            f"{name} not found. Install Debian's nginx (make nginx, or apt-get install nginx), "
            "or set NGINX to its path."
        )
    return found


def gunicorn_command(config: FrontConfig) -> list[str]:
    """gunicorn as ``make serve`` always ran it, bound to the socket instead of the port."""
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        "gunicorn.conf.py",
        "--bind",
        f"unix:{config.socket}",
        "app:create_app()",
    ]


def nginx_command(config: FrontConfig, conf: Path) -> list[str]:
    """nginx in the foreground on the generated config, its prefix the run directory."""
    error_log = config.error_log or str(config.run_dir / "error.log")
    # -e: even before it reads the config, nginx logs there, not to an unwritable /var/log.
    return [nginx_binary(config.nginx), "-e", error_log, "-p", str(config.run_dir), "-c", str(conf)]


class Front:
    """The two children and the signal handling that stops both."""

    def __init__(self, config: FrontConfig, env: Mapping[str, str]) -> None:
        self.config = config
        self.env = {**env, "TRUSTED_PROXIES": "1"}
        # nginx logs every request; gunicorn's second line for it cost ~80 us of worker CPU.
        self.env.setdefault("GUNICORN_ACCESS_LOG", "off")
        # In-flight requests get STOP_TIMEOUT on a stop, not gunicorn's default 30 s.
        self.env.setdefault("GUNICORN_GRACEFUL_TIMEOUT", str(config.stop_timeout))
        self.gunicorn: subprocess.Popen[bytes] | None = None
        self.nginx: subprocess.Popen[bytes] | None = None
        self.stopping = False

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("front: %s received, stopping nginx and gunicorn", signal.Signals(signum).name)
        self.stopping = True

    def start(self, ready_timeout: float = 300.0) -> None:
        """gunicorn first (it binds the socket once the models are loaded), then nginx."""
        conf = prepare(self.config)
        nginx = nginx_command(self.config, conf)
        check = subprocess.run([*nginx, "-t", "-q"], capture_output=True, text=True)
        if check.returncode != 0:
            raise FrontError(f"nginx refused the generated config {conf}:\n{check.stderr}")
        self.gunicorn = self._spawn(gunicorn_command(self.config), ROOT, signal.SIGTERM)
        deadline = time.monotonic() + ready_timeout
        while not self.config.socket.exists():
            if self.gunicorn.poll() is not None or self.stopping:
                raise FrontError(f"gunicorn exited ({self.gunicorn.returncode}) before listening")
            if time.monotonic() > deadline:
                raise FrontError(f"gunicorn did not listen on {self.config.socket} in time")
            time.sleep(0.1)
        self.nginx = self._spawn(nginx, self.config.run_dir, signal.SIGQUIT)
        log.info(
            "front: nginx on http://%s/ -> gunicorn on %s (run dir %s)",
            self.config.listen,
            self.config.socket,
            self.config.run_dir,
        )

    def wait(self) -> int:
        """Until a signal or a child's exit; the exit status of the first child that ended."""
        while not self.stopping:
            for child in (self.nginx, self.gunicorn):
                if child is not None and child.poll() is not None:
                    log.error("front: %s exited with %s", child.args[0], child.returncode)
                    return child.returncode or 1
            time.sleep(0.2)
        return 0

    def _spawn(
        self, command: list[str], cwd: Path, on_orphan: signal.Signals
    ) -> subprocess.Popen[bytes]:
        """A child in a process group of its own (a terminal's Ctrl-C reaches only this
        process, which then stops the children in order) that gets ``on_orphan`` should this
        process die without stopping it."""
        return subprocess.Popen(
            command,
            cwd=cwd,
            env=self.env,
            process_group=0,
            preexec_fn=functools.partial(_die_with_parent, on_orphan),
        )

    def stop(self) -> None:
        """nginx first (SIGQUIT: stop accepting, finish what it holds; SIGTERM after
        STOP_TIMEOUT drops slow clients), then gunicorn (SIGTERM: finish the requests in flight
        within its graceful timeout); SIGKILL for whatever is still there after that."""
        graceful = _env_number(self.env, "GUNICORN_GRACEFUL_TIMEOUT", self.config.stop_timeout, 0)
        steps = (  # (child, ((signal, seconds to wait for its exit), ...))
            (
                self.nginx,
                ((signal.SIGQUIT, self.config.stop_timeout), (signal.SIGTERM, KILL_AFTER_S)),
            ),
            (self.gunicorn, ((signal.SIGTERM, graceful + KILL_AFTER_S),)),
        )
        for child, signals in steps:
            if child is None:
                continue
            for signum, seconds in signals:
                if child.poll() is None:
                    child.send_signal(signum)
                try:
                    child.wait(timeout=seconds)
                    break
                except subprocess.TimeoutExpired:
                    log.info("front: %s still busy after %s s", child.args[0], seconds)
            else:
                log.warning("front: %s ignored its stop signals; killing it", child.args[0])
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)  # its workers too: they share its group
                child.wait()
        for path in (self.config.socket, self.config.body_socket):
            path.unlink(missing_ok=True)


def _die_with_parent(signum: int = signal.SIGTERM) -> None:
    """Linux: get ``signum`` when the parent dies, so a killed ``make serve`` (this process's
    parent) or a killed front (its children's) leaves nothing running."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signum))
    except (OSError, AttributeError):  # not Linux: stop the front before its parent
        log.debug("front: no parent-death signal on this system")


def main(env: Mapping[str, str] | None = None, argv: list[str] | None = None) -> int:
    """Run the front until Ctrl-C/SIGTERM; the exit status says whether it ended cleanly."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    env = dict(os.environ if env is None else env)
    try:
        config = FrontConfig.from_env(env)
        if "--print-config" in (argv or []):
            sys.stdout.write(render(config))
            return 0
        _die_with_parent()
        front = Front(config, env)
        signal.signal(signal.SIGTERM, front._on_signal)
        signal.signal(signal.SIGINT, front._on_signal)
        try:
            front.start()
            status = front.wait()
        finally:
            front.stop()
    except FrontError as exc:
        log.error("front: %s", exc)
        return 2
    return status


if __name__ == "__main__":
    sys.exit(main(argv=sys.argv[1:]))
