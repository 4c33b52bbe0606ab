"""``GET /metrics``: the Prometheus text of every worker (``serving/metrics.py`` defines it all).

Open like any Prometheus target by default (bind to 127.0.0.1 or a private network); when
``METRICS_TOKEN`` is set, a scrape must send ``Authorization: Bearer <token>`` (Prometheus's
``authorization`` scrape setting, as in ``deploy/prometheus.yml``), else 401.
"""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, current_app, request
from werkzeug.datastructures import WWWAuthenticate
from werkzeug.exceptions import Unauthorized

import store
from views.context import services

bp = Blueprint("metrics", __name__)
CHALLENGE = {"realm": "Chorus metrics"}


def check_token() -> None:
    """401 with a Bearer challenge unless METRICS_TOKEN is unset or the request carries it."""
    token = current_app.config.get("METRICS_TOKEN")
    if not token:
        return
    given = request.headers.get("Authorization", "")
    scheme, _, credentials = given.partition(" ")
    ok = hmac.compare_digest(credentials.strip().encode(), str(token).encode())
    if not (ok and scheme.lower() == "bearer"):
        raise Unauthorized(
            "Send the METRICS_TOKEN the operator configured as 'Authorization: Bearer <token>'.",
            www_authenticate=WWWAuthenticate("bearer", CHALLENGE),
        )


@bp.get("/metrics")
def metrics() -> Response:
    """Gauges read from the database now, then every worker's samples as Prometheus text."""
    check_token()
    chorus = services()
    bundle = chorus.models.bundle
    chorus.metrics.refresh(store.get_session(), bundle.version if bundle else None)
    body, content_type = chorus.metrics.exposition()
    return Response(body, content_type=content_type, headers={"Cache-Control": "no-store"})
