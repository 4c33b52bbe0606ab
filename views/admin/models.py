"""``/admin/models``: installed model versions side by side, activation with one click.

Activation goes through ``ModelVersions.activate`` like ``POST /api/v1/models/<v>/activate``;
a version that would leave created ensembles or experiments without a model is refused with
their names and an "activate anyway" button that pauses them.
"""

from __future__ import annotations

from typing import Any

from flask import abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from serving.errors import Conflict, ServingError
from views.admin import bp
from views.admin.forms import ActionForm
from views.auth import admin_required
from views.context import actor, services
from views.errors import message_of

#: Strategies compared row by row, when a version's manifest scores them.
COMPARED = ("bagging", "boosting", "stacking", "cascade")


def _rows(cards: list[dict[str, Any]]) -> list[str]:
    """The strategies any listed version scores, in the console's order."""
    scored = {name for card in cards for name in card["metrics"]}
    return [name for name in COMPARED if name in scored] + sorted(scored - set(COMPARED))


@bp.get("/models")
@admin_required
def models(conflict: dict[str, Any] | None = None, status: int = 200) -> ResponseReturnValue:
    """Every version's metrics, size, cost and lineage in columns; the activation history."""
    body = services().versions.catalogue()
    return (
        render_template(
            "admin/models.html",
            body=body,
            strategies=_rows(body["versions"]),
            form=ActionForm(),
            conflict=conflict,
        ),
        status,
    )


@bp.post("/models/<version>/activate")
@admin_required
def activate_model(version: str) -> ResponseReturnValue:
    """The Activate button (CSRF-checked); a 409 re-renders with the names and a force button."""
    if not ActionForm().validate_on_submit():
        abort(400, description="The form expired; reload the page and try again.")
    force = request.form.get("force") == "1"
    try:
        done = services().versions.activate(version, actor(), force)
    except Conflict as exc:
        return models({"version": version, "message": message_of(exc)}, 409)
    except ServingError as exc:
        flash(message_of(exc), "error")
        return redirect(url_for("admin.models"), 303)
    note = f"Now serving {done['active']}"
    if done["paused"]:
        note += f"; paused {', '.join(done['paused'])}"
    if done["resumed"]:
        note += f"; resumed {', '.join(done['resumed'])}"
    flash(note + ". Every worker follows within a few seconds.", "success")
    return redirect(url_for("admin.models"), 303)
