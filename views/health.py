"""Liveness and readiness probes for gunicorn, containers and load balancers."""

from __future__ import annotations

import logging

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

import store
from views.context import services

log = logging.getLogger(__name__)
bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    """200 while the process can answer at all."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> ResponseReturnValue:
    """200 when the models are loaded and the database answers ``SELECT 1``, else 503.

    It is public (load balancers call it), so it says which part is not ready but never the
    exception's text: that, with paths and driver details, goes to the log."""
    models = services().models
    if models.bundle is None:
        log.warning("readiness: no model loaded: %s", models.error)
        return jsonify(
            status="not ready",
            error="no model loaded; the operator will find the reason in the server log",
        ), 503
    try:
        store.ping(store.get_session())
    except Exception as exc:  # any driver error means "not ready", never a 500
        log.warning("readiness: database unreachable: %s: %s", type(exc).__name__, exc)
        return jsonify(
            status="not ready",
            error="database unreachable; the operator will find the reason in the server log",
        ), 503
    return jsonify(status="ready", model_version=models.bundle.version)
