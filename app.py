"""Chorus: ``create_app`` builds the Flask app (configuration, extensions, blueprints, models).

There is no module-level app: gunicorn runs ``app:create_app()`` and tests call it with a
``test_config``. Models load once per process here (once per master with ``preload_app``).
"""

from __future__ import annotations

import logging
import math
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from flask import Flask
from flask_wtf.csrf import CSRFProtect

import store
from models.onnx_bank import DEFAULT_CACHE, RUNTIMES
from models.preprocess import DEFAULT_MAX_PIXELS
from models.registry import ARTIFACT_ROOT
from serving import catalogue
from serving.container import build_services
from serving.monitoring import DEFAULT_WINDOW, MAX_WINDOW, MIN_DRIFT_WINDOW
from serving.service import ModelHolder
from serving.versions import Loader, bundle_loader, startup_version
from store.db import DatabaseUrlError
from views import admin, api, cli, errors, health, hooks, metrics, pages, samples, templating, v2
from views.context import EXTENSION

log = logging.getLogger("chorus")
csrf = CSRFProtect()
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
#: Room for multipart boundaries and the other form fields on top of the file itself.
FORM_OVERHEAD_BYTES = 64 * 1024
#: Shortest SECRET_KEY accepted outside debug: 32 bytes, what HMAC-SHA256 keys need.
MIN_SECRET_KEY_BYTES = 32
#: Shortest ADMIN_PASSWORD accepted outside debug: the sign-in limit (100 an hour per address)
#: slows guessing, it cannot save a short word.
MIN_ADMIN_PASSWORD_CHARS = 12
_ENV_KEYS = (
    "SECRET_KEY",
    "ADMIN_PASSWORD",
    "DATABASE_URL",
    "MODEL_VERSION",
    "MAX_UPLOAD_MB",
    "AB_SPLIT",
    "ARTIFACT_ROOT",
    "LOG_LEVEL",
    "DECISION_INTERVAL",
    "CLIENT_LABEL_CAP",
    "TRUSTED_PROXIES",
    "SESSION_COOKIE_SECURE",
    "AUTH_FAILURE_LIMIT",
    "METRICS_TOKEN",
    "RUNTIME",
    "ONNX_CACHE_DIR",
    "MONITOR_WINDOW",
)


class ConfigError(RuntimeError):
    """The environment is unusable; the message names the variable and how to fix it."""


def _number(name: str, value: Any, low: float, high: float) -> float:
    """Parse a numeric setting, refusing to start on nonsense rather than misbehave later."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and low <= number <= high):
        raise ConfigError(f"{name} must be a number between {low:g} and {high:g}, got {value!r}")
    return number


def _whole(name: str, value: Any, low: int, high: int) -> int:
    """``_number`` for a setting that counts something: a whole number as well."""
    number = _number(name, value, low, high)
    if number != int(number):
        raise ConfigError(f"{name} must be a whole number, got {value!r}")
    return int(number)


def configure(app: Flask, test_config: Mapping[str, Any] | None) -> None:
    """Defaults, then the environment (DESIGN.md's variables), then ``test_config``; validated."""
    app.config.from_mapping(
        SECRET_KEY=None,
        ADMIN_PASSWORD=None,
        DATABASE_URL="sqlite:///" + os.path.join(app.instance_path, "chorus.db"),
        MODEL_VERSION=None,
        MAX_UPLOAD_MB=10,
        AB_SPLIT=0.5,
        ARTIFACT_ROOT=ARTIFACT_ROOT,
        LOG_LEVEL="INFO",
        MAX_IMAGE_PIXELS=DEFAULT_MAX_PIXELS,
        BUNDLE=None,
        #: How long a worker trusts its cached ensemble and experiment definitions (seconds).
        DEFINITIONS_TTL=1.0,
        #: How often (seconds) a worker may evaluate one experiment's guardrails and canary.
        DECISION_INTERVAL=1.0,
        #: Counted verdicts one client (client id or signed cookie) may give per experiment.
        CLIENT_LABEL_CAP=50,
        WTF_CSRF_TIME_LIMIT=None,  # a result page left open for hours can still take feedback
        SESSION_COOKIE_SAMESITE="Lax",
        #: Proxies in front whose X-Forwarded-For/Proto are believed (deploy/serve.py sets 1).
        TRUSTED_PROXIES=0,
        #: Secure cookies even on plain HTTP (they are Secure over HTTPS anyway: views/hooks.py).
        SESSION_COOKIE_SECURE=False,
        #: Failed admin authentications per client address per window (OWASP ASVS: 100 an hour).
        AUTH_FAILURE_LIMIT=100,
        AUTH_FAILURE_WINDOW=3600.0,
        #: How long a predict answer is kept for retries with the same Idempotency-Key (seconds).
        IDEMPOTENCY_TTL=24 * 3600.0,
        #: auto (ONNX Runtime on CPU if its graph verifies, else torch), onnx or torch.
        RUNTIME="auto",
        #: Where exported ONNX graphs are cached, keyed by the weights' sha256 (gitignored).
        ONNX_CACHE_DIR=DEFAULT_CACHE,
        #: Newest served predictions /api/v1/monitoring and its drift check read by default.
        MONITOR_WINDOW=DEFAULT_WINDOW,
    )
    app.config.from_mapping({k: os.environ[k] for k in _ENV_KEYS if os.environ.get(k)})
    if test_config is not None:
        app.config.from_mapping(test_config)
    config = app.config
    config["AB_SPLIT"] = _number("AB_SPLIT", config["AB_SPLIT"], 0.0, 1.0)
    config["MAX_UPLOAD_MB"] = _number("MAX_UPLOAD_MB", config["MAX_UPLOAD_MB"], 0.001, 1024)
    config["MAX_UPLOAD_BYTES"] = int(config["MAX_UPLOAD_MB"] * 2**20)
    config["DECISION_INTERVAL"] = _number(
        "DECISION_INTERVAL", config["DECISION_INTERVAL"], 0.0, 3600.0
    )
    for name, low, high in (
        ("CLIENT_LABEL_CAP", 1, 1_000_000_000),
        # At least the predictions drift is judged from, or the drift alarm could never sound.
        ("MONITOR_WINDOW", MIN_DRIFT_WINDOW, MAX_WINDOW),
        ("TRUSTED_PROXIES", 0, 1_000_000),
        ("AUTH_FAILURE_LIMIT", 1, 1_000_000),
    ):
        config[name] = _whole(name, config[name], low, high)
    secure = str(config["SESSION_COOKIE_SECURE"]).strip().lower()
    config["SESSION_COOKIE_SECURE"] = secure in ("1", "true", "yes", "on")
    config["RUNTIME"] = str(config["RUNTIME"]).strip().lower()
    if config["RUNTIME"] not in RUNTIMES:
        choices = ", ".join(RUNTIMES)
        raise ConfigError(f"RUNTIME must be one of {choices}, got {config['RUNTIME']!r}")
    config["LOG_LEVEL"] = str(config["LOG_LEVEL"]).strip().upper()
    if config["LOG_LEVEL"] not in logging.getLevelNamesMapping():
        raise ConfigError(
            f"LOG_LEVEL must be one of debug, info, warning, error, critical; "
            f"got {config['LOG_LEVEL']!r}"
        )
    if not (test_config and "MAX_CONTENT_LENGTH" in test_config):
        config["MAX_CONTENT_LENGTH"] = config["MAX_UPLOAD_BYTES"] + FORM_OVERHEAD_BYTES
    if not config["SECRET_KEY"]:
        if not (app.debug or app.testing):
            raise ConfigError(
                "SECRET_KEY is not set. Export a long random value, e.g. "
                "SECRET_KEY=$(python -c 'import secrets; print(secrets.token_hex(32))'), the "
                "same for every worker; or set FLASK_DEBUG=1 for local development."
            )
        config["SECRET_KEY"] = secrets.token_hex(32)
        log.warning("SECRET_KEY not set: using a random key (debug/testing only)")
    password = config.get("ADMIN_PASSWORD") or ""
    if password and len(password) < MIN_ADMIN_PASSWORD_CHARS and not (app.debug or app.testing):
        raise ConfigError(
            f"ADMIN_PASSWORD is {len(password)} characters long; it must be at least "
            f"{MIN_ADMIN_PASSWORD_CHARS} (leave it unset to keep admin closed). Generate one with "
            "python -c 'import secrets; print(secrets.token_urlsafe(16))'."
        )
    key = config["SECRET_KEY"]
    key_bytes = len(key.encode("utf-8") if isinstance(key, str) else key)
    if key_bytes < MIN_SECRET_KEY_BYTES and not (app.debug or app.testing):
        raise ConfigError(
            f"SECRET_KEY is {key_bytes} bytes long; it must be at least {MIN_SECRET_KEY_BYTES} "
            "(it signs sessions, CSRF tokens and client cookies). Generate one with "
            "python -c 'import secrets; print(secrets.token_hex(32))'."
        )


def configure_logging(app: Flask) -> None:
    """Log lines carry the request id; under pytest the capture handlers are left alone."""
    root = logging.getLogger()
    if app.testing:
        return
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    for handler in root.handlers:
        if not any(isinstance(f, hooks.RequestIdFilter) for f in handler.filters):
            handler.addFilter(hooks.RequestIdFilter())
    root.setLevel(app.config["LOG_LEVEL"])


def set_torch_threads() -> None:
    """One intra-op thread by default: gunicorn runs several workers on few cores."""
    threads = int(_number("TORCH_THREADS", os.environ.get("TORCH_THREADS", 1), 1, 256))
    torch.set_num_threads(threads)


def load_models(app: Flask, loader: Loader, db: store.Store) -> tuple[ModelHolder, int | None]:
    """Load and warm the ensembles once: the version last activated (else ``MODEL_VERSION``,
    else the default); without them the app runs but is not ready (503). Returns the holder and
    the activation it follows (None: none recorded, or ``BUNDLE`` was given)."""
    bundle = app.config["BUNDLE"]
    if bundle is not None:
        return ModelHolder(bundle), None
    configured = app.config["MODEL_VERSION"]
    version, activation = startup_version(db, configured)
    tries = [version] if version == configured else [version, configured]
    error = None
    for attempt in tries:
        try:
            return ModelHolder(loader(attempt)), activation
        except Exception as exc:  # ArtifactError, or anything a broken artifact raises
            error = exc
            log.exception("model version %s did not load", attempt or "(default)")
    log.error("no model loaded; /readyz and predictions answer 503 until fixed")
    return ModelHolder(None, f"{type(error).__name__}: {error}"), activation


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build one configured app; raises ``ConfigError`` on an unusable environment."""
    app = Flask(__name__, instance_relative_config=True)
    configure(app, test_config)
    configure_logging(app)
    set_torch_threads()
    app.json.sort_keys = False  # type: ignore[attr-defined]  # keep contract and class order
    os.makedirs(app.instance_path, exist_ok=True)

    hooks.init_app(app)  # first, so requests refused by CSRF still get an id
    csrf.init_app(app)
    csrf.exempt(api.bp)
    csrf.exempt(v2.bp)
    try:
        store.init_app(app)
    except DatabaseUrlError as exc:
        raise ConfigError(str(exc)) from exc
    templating.init_app(app)

    with app.app_context():
        db = store.get_store()
    root = Path(app.config["ARTIFACT_ROOT"])
    loader = bundle_loader(root, app.config["RUNTIME"], Path(app.config["ONNX_CACHE_DIR"]))
    models, activation = load_models(app, loader, db)
    services = build_services(
        models,
        db,
        max_pixels=app.config["MAX_IMAGE_PIXELS"],
        ttl=app.config["DEFINITIONS_TTL"],
        inline_after=bool(app.testing),
        decision_interval=app.config["DECISION_INTERVAL"],
        client_label_cap=app.config["CLIENT_LABEL_CAP"],
        monitor_window=app.config["MONITOR_WINDOW"],
        loader=loader,
        artifact_root=root,
    )
    services.versions.adopt(activation)
    app.before_request(services.versions.follow)  # every worker follows activations
    app.extensions[EXTENSION] = services
    services.definitions.ensure_builtins(app.config["AB_SPLIT"])
    db.sessions.remove()
    if db.engine.pool.__class__.__name__ != "StaticPool":
        db.engine.dispose()  # no pooled connection may survive into forked workers (preload)
    # Without a model every built-in page still exists (and says why it cannot answer).
    builtin = (
        models.bundle.ensembles
        if models.bundle is not None
        else [s.name for s in catalogue.BUILTIN_ENSEMBLES]
    )
    page_list = catalogue.Catalogue.build(builtin).pages
    app.register_blueprint(pages.make_blueprint(page_list))
    for module in (api, v2, admin, health, metrics, errors, cli):
        app.register_blueprint(module.bp)

    samples.gallery(models.bundle)  # render it (and read any test split) once, before forking
    return app
