"""Home page (upload form with the four choices and the sample gallery) and feedback forms."""

from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, url_for
from flask.typing import ResponseReturnValue

from store import Prediction
from views.forms import ChooseUploadForm, FeedbackForm, UploadForm
from views.predict import PAGES, UPLOAD_PAGES, handle_upload, model_facts, render_upload_page
from views.service import CHOICES, ServiceError, check_answered, find_prediction, record_verdict

bp = Blueprint("main", __name__)


def render_index(
    form: UploadForm | None, status: int = 200, error: str | None = None
) -> ResponseReturnValue:
    """The home page, optionally with the reason the last upload was refused."""
    return render_upload_page(
        "main/index.html",
        form if form is not None else ChooseUploadForm(formdata=None),
        status,
        error,
        pages=[PAGES[name] for name in CHOICES],
        facts={name: model_facts(name) for name in CHOICES},
    )


UPLOAD_PAGES["main.predict"] = render_index


@bp.get("/")
def index() -> ResponseReturnValue:
    return render_index(ChooseUploadForm())


@bp.route("/predict", methods=("GET", "POST"))
def predict() -> ResponseReturnValue:
    """The home form posts here; the strategy radio decides who answers (works without JS)."""
    form = ChooseUploadForm()
    if not form.is_submitted():
        return redirect(url_for("main.index"))
    return handle_upload(form, str(form.strategy.data), render_index)


def _load(prediction_id: str) -> Prediction:
    """The stored prediction, or a 404 page."""
    try:
        return find_prediction(prediction_id)
    except ServiceError as exc:
        abort(exc.status_code, description=str(exc))


def render_prediction(
    prediction: Prediction,
    form: FeedbackForm | None = None,
    status: int = 200,
    error: str | None = None,
) -> ResponseReturnValue:
    """A stored prediction (without its image, which is never kept) and its feedback."""
    classes = tuple(prediction.probabilities or ())
    if form is None:
        feedback = prediction.feedback  # a "No" answer is shown; otherwise the placeholder
        wrong = feedback.true_class_index if feedback and not feedback.correct else None
        form = FeedbackForm(formdata=None, classes=classes, label=wrong)
    html = render_template(
        "main/prediction.html",
        prediction=prediction,
        page=PAGES.get(prediction.strategy),
        arm_page=PAGES.get(prediction.arm),
        classes=classes,
        feedback_form=form,
        error=error,
    )
    return html, status


@bp.get("/predictions/<prediction_id>")
def prediction(prediction_id: str) -> ResponseReturnValue:
    return render_prediction(_load(prediction_id))


@bp.post("/predictions/<prediction_id>/feedback")
def feedback(prediction_id: str) -> ResponseReturnValue:
    """Record "Yes" (the prediction was right) or "No, it was <class>", then show it."""
    stored = _load(prediction_id)
    try:
        check_answered(stored)
    except ServiceError as exc:
        abort(exc.status_code, description=str(exc))
    classes = tuple(stored.probabilities or ())
    form = FeedbackForm(classes=classes, predicted=stored.class_index)
    if not form.validate_on_submit():
        message = next((str(f.errors[0]) for f in form if f.errors), "Invalid feedback.")
        return render_prediction(stored, form, 400, message)
    if form.yes.data:
        true_index = stored.class_index
    elif form.no.data:
        true_index = form.label.data
    else:
        return render_prediction(stored, form, 400, "Press “Yes” or “No, it was:”.")
    correct = record_verdict(stored, true_index)
    verdict = "right" if correct else f"wrong: it was {classes[true_index]}"
    flash(f"Thanks! Recorded that the prediction was {verdict}.", "success")
    return redirect(url_for("main.prediction", prediction_id=stored.id))
