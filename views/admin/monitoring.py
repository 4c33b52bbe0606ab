"""``/admin/monitoring``: per-ensemble health and drift over the newest served predictions.

The numbers are ``GET /api/v1/monitoring``'s (``serving/monitoring.py``); this page draws each
ensemble's reliability diagram on the server and lists every number as a table too.
"""

from __future__ import annotations

from flask import render_template, request
from flask.typing import ResponseReturnValue

from serving.monitoring import parse_window
from views.admin import bp
from views.auth import admin_required
from views.charts import reliability_diagram
from views.context import services


@bp.get("/monitoring")
@admin_required
def monitoring() -> ResponseReturnValue:
    """Health and drift; ``?window=`` picks how many recent predictions (400 if not a count)."""
    error = None
    try:
        window = parse_window(request.args.get("window"), services().monitor.window)
    except ValueError as exc:
        error, window = str(exc), services().monitor.window
    body = services().monitor.report(window)
    charts = {
        arm: reliability_diagram(health["calibration"]["bins"])
        for arm, health in body["ensembles"].items()
    }
    return (
        render_template("admin/monitoring.html", body=body, charts=charts, error=error),
        400 if error else 200,
    )
