"""``/api/v1``: the JSON contract for non-browser clients (CSRF-exempt; errors are JSON)."""

from __future__ import annotations

from flask import Blueprint, abort, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from models.preprocess import PreprocessError
from views import reports
from views.auth import admin_required
from views.forms import MdeForm
from views.service import ServiceError, give_feedback, predict_image

bp = Blueprint("api", __name__, url_prefix="/api/v1")


def _fail(exc: ServiceError | PreprocessError) -> ResponseReturnValue:
    return jsonify(error=str(exc)), exc.status_code


@bp.post("/predict")
def predict() -> ResponseReturnValue:
    """Multipart ``image`` + ``strategy`` (+ optional ``client_id``) -> the prediction JSON."""
    upload = request.files.get("image")
    if upload is None:
        return jsonify(error='Send the image as a multipart file field named "image".'), 400
    data = upload.read(current_app.config["MAX_UPLOAD_BYTES"] + 1)
    if len(data) > current_app.config["MAX_UPLOAD_BYTES"]:
        abort(413)
    try:
        served = predict_image(
            data, request.form.get("strategy", ""), client_id=request.form.get("client_id")
        )
    except (ServiceError, PreprocessError) as exc:
        return _fail(exc)
    return jsonify(served.body)


@bp.post("/predictions/<prediction_id>/feedback")
def feedback(prediction_id: str) -> ResponseReturnValue:
    """JSON ``{"label": class name or index}`` -> ``{"correct": bool}``; latest answer wins."""
    payload = request.get_json(silent=True)
    if not isinstance(payload, dict) or "label" not in payload:
        return jsonify(error='Send JSON like {"label": "Sneaker"} or {"label": 7}.'), 400
    try:
        correct = give_feedback(prediction_id, payload["label"])
    except ServiceError as exc:
        return _fail(exc)
    return jsonify(correct=correct)


def _mde() -> float:
    form = MdeForm(formdata=request.args)
    if not form.validate():
        abort(400, description=f"mde: {form.mde.errors[0]}")
    return form.mde.data if form.mde.data is not None else reports.DEFAULT_MDE


@bp.get("/experiments/ab/results")
@admin_required
def ab_results() -> ResponseReturnValue:
    """Per-arm outcomes of A/B traffic only, with the test statistics (``?mde=`` optional)."""
    return jsonify(reports.ab_report(_mde()))


@bp.get("/stats")
@admin_required
def stats() -> ResponseReturnValue:
    """Totals and per-requested-strategy outcomes over all traffic."""
    return jsonify(reports.stats_report())
