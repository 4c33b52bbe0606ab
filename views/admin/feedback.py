"""``/admin/feedback``: every verdict kept, corrections by admins, and verdicts that disagree.

Clients' verdicts follow the first-verdict rule (``store.feedback``), so the console is where a
wrong effective verdict is put right: the correction form (CSRF-protected, like every mutating
console form) does what ``PUT /api/v1/predictions/<id>/feedback`` does.
"""

from __future__ import annotations

from flask import flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_wtf import FlaskForm
from wtforms import StringField
from wtforms.validators import DataRequired, Length, Optional, Regexp

import store
from serving.errors import ServingError
from views.admin import bp
from views.auth import admin_required
from views.context import actor, services
from views.errors import status_of

#: Rows each list shows (newest first).
LISTED = 100


class CorrectionForm(FlaskForm):
    """An admin's verdict on one prediction: its id, the true class, and why."""

    prediction_id = StringField(
        "Prediction id",
        validators=[
            DataRequired("Enter the prediction's id (32 hexadecimal characters)."),
            Regexp(
                r"^\s*[0-9a-f]{32}\s*$", message="A prediction id is 32 hexadecimal characters."
            ),
        ],
    )
    label = StringField(
        "True class (name or index)",
        validators=[DataRequired("Enter the true class, e.g. Sneaker or 7."), Length(max=64)],
    )
    reason = StringField("Reason (optional)", validators=[Optional(), Length(max=500)])


def _render(
    form: CorrectionForm, status: int = 200, error: str | None = None
) -> ResponseReturnValue:
    """The console page: tally, the correction form, one prediction's history, the lists."""
    session = services().db.sessions()
    wanted = (request.args.get("prediction") or form.prediction_id.data or "").strip()
    history = None
    if wanted:
        try:
            prediction = services().prediction.find_prediction(wanted)
        except ServingError:
            prediction = None
        if prediction is not None:
            history = {
                "prediction": prediction,
                "events": store.feedback_history(session, prediction.id),
            }
    bundle = services().models.bundle
    html = render_template(
        "admin/feedback.html",
        form=form,
        error=error,
        counts=store.feedback_counts(session),
        corrections=store.feedback_corrections(session, LISTED),
        conflicts=store.feedback_conflicts(session, LISTED),
        history=history,
        classes=bundle.classes if bundle is not None else (),
        cap=services().prediction.recorder.client_label_cap,
    )
    return html, status


@bp.get("/feedback")
@admin_required
def feedback() -> ResponseReturnValue:
    """Corrections, conflicting verdicts and the correction form (``?prediction=`` fills it)."""
    form = CorrectionForm(formdata=None)
    wanted = (request.args.get("prediction") or "").strip()
    if wanted:
        form.prediction_id.data = wanted[:64]
        try:
            services().prediction.find_prediction(wanted)
        except ServingError as exc:
            return _render(form, status_of(exc), str(exc))
    return _render(form)


@bp.post("/feedback")
@admin_required
def correct() -> ResponseReturnValue:
    """Replace a prediction's effective verdict with the admin's (kept with who and when)."""
    form = CorrectionForm()
    if not form.validate_on_submit():
        message = next((str(f.errors[0]) for f in form if f.errors), "Check the form.")
        return _render(form, 400, message)
    prediction_id = (form.prediction_id.data or "").strip()
    try:
        verdict = services().prediction.correct(
            prediction_id, (form.label.data or "").strip(), actor(), form.reason.data or None
        )
    except ServingError as exc:
        return _render(form, status_of(exc), str(exc))
    bundle = services().models.bundle
    classes = bundle.classes if bundle is not None else ()
    index = verdict.true_class_index
    true_class = classes[index] if index < len(classes) else str(index)
    outcome = "right" if verdict.correct else "wrong"
    flash(
        f"Corrected prediction {prediction_id}: the true class is {true_class}, so it was "
        f"{outcome}. Statistics use this verdict from now on.",
        "success",
    )
    return redirect(url_for("admin.feedback", prediction=prediction_id), 303)
