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
    """200 when the models are loaded and the database answers ``SELECT 1``, else 503."""
    models = services().models
    if models.bundle is None:
        return jsonify(status="not ready", error=f"no model loaded: {models.error}"), 503
    try:
        store.ping(store.get_session())
    except Exception as exc:  # any driver error means "not ready", never a 500
        log.warning("readiness: database unreachable: %s", exc)
        return jsonify(status="not ready", error=f"database unreachable: {type(exc).__name__}"), 503
    return jsonify(status="ready", model_version=models.bundle.version)
