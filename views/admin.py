"""``/admin``: how each A/B arm and each directly requested strategy is doing."""

from __future__ import annotations

from flask import Blueprint, current_app, render_template, request
from flask.typing import ResponseReturnValue

import store
from views import reports
from views.auth import admin_required
from views.charts import line_chart
from views.forms import MdeForm

bp = Blueprint("admin", __name__)
RECENT = 25


@bp.get("/admin")
@admin_required
def index() -> ResponseReturnValue:
    """The A/B comparison, direct traffic, accuracy over time and the latest predictions."""
    form = MdeForm(formdata=request.args)
    status, mde = 200, reports.DEFAULT_MDE
    if form.validate():
        mde = form.mde.data if form.mde.data is not None else mde
    else:
        status = 400
    html = render_template(
        "admin/index.html",
        form=form,
        ab=reports.ab_report(mde),
        direct=reports.direct_report(),
        chart=line_chart(reports.accuracy_series()),
        recent=store.recent_predictions(store.get_session(), RECENT),
        ab_split=current_app.config["AB_SPLIT"],
    )
    return html, status
