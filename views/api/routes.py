"""API routes: predict and feedback (open), ensembles, experiments, stats and monitoring (admin)."""

from __future__ import annotations

from typing import Any

from flask import abort, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import UnsupportedMediaType

from serving import idempotency
from serving.errors import InvalidRequest, NotFound
from serving.monitoring import parse_window
from serving.service import Served
from views.api import bp
from views.auth import admin_required
from views.context import actor, services
from views.hooks import client_address

#: Endpoints a browser form may post to (the others change state and take JSON only).
FORM_ENDPOINTS = ("api.predict",)


def refuse_browser_forms() -> None:
    """The admin API is CSRF-exempt and browsers resend Basic credentials, so a cross-site
    form must not reach it: a state-changing request with a body that is not JSON is a 415."""
    if request.method in ("GET", "HEAD", "OPTIONS") or request.endpoint in FORM_ENDPOINTS:
        return
    if request.endpoint == "api.feedback":
        return  # JSON-only anyway, and not an admin route
    if request.content_length or request.mimetype:
        if request.mimetype != "application/json":
            raise UnsupportedMediaType(
                "Send this request's body as JSON (Content-Type: application/json)."
            )


def _json_body() -> Any:
    """The request's JSON object, or a 400 that says what to send."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise InvalidRequest("Send a JSON object with Content-Type: application/json.", "body")
    return body


@bp.post("/predict")
def predict() -> ResponseReturnValue:
    """Multipart ``image`` + ``strategy`` (+ ``client_id``, ``features``) -> the prediction."""
    upload = request.files.get("image")
    if upload is None:
        return jsonify(error='Send the image as a multipart file field named "image".'), 400
    data = upload.read(current_app.config["MAX_UPLOAD_BYTES"] + 1)
    if len(data) > current_app.config["MAX_UPLOAD_BYTES"]:
        abort(413)
    strategy = request.form.get("strategy", "")
    client_id = request.form.get("client_id")
    features = request.form.get("features")

    def run() -> Served:
        service = services().prediction
        return service.predict(data, strategy, client_id=client_id, features=features)

    key = idempotency.check_key(request.headers.get(idempotency.HEADER))
    if key is None:
        served = run()
        response = jsonify(served.body)
    else:
        keys = idempotency.Idempotency(services().db, current_app.config["IDEMPOTENCY_TTL"])
        answer = keys.run(
            idempotency.scope_of(client_id, client_address()),
            key,
            idempotency.fingerprint(data, strategy, client_id, features),
            run,
        )
        response = jsonify(answer.body)
        response.headers["Idempotent-Replayed"] = "true" if answer.replayed else "false"
        if answer.served is None:
            return response
        served = answer.served
    response.call_on_close(served.run_after)  # shadows run after the answer is sent
    return response


@bp.post("/predictions/<prediction_id>/feedback")
def feedback(prediction_id: str) -> ResponseReturnValue:
    """JSON ``{"label": class name or index}`` -> ``{"correct": bool, "counted": bool}``.

    ``correct`` judges the submitted label; ``counted`` says whether it became the verdict the
    statistics read (only the first does, within the client's cap; every one is kept)."""
    payload = request.get_json(silent=True)
    if not isinstance(payload, dict) or "label" not in payload:
        return jsonify(error='Send JSON like {"label": "Sneaker"} or {"label": 7}.'), 400
    verdict = services().prediction.feedback(prediction_id, payload["label"])
    return jsonify(correct=verdict.correct, counted=verdict.counted)


@bp.put("/predictions/<prediction_id>/feedback")
@admin_required
def correct_feedback(prediction_id: str) -> ResponseReturnValue:
    """Admin: JSON ``{"label", "reason"?}`` replaces the effective verdict, kept with who/when."""
    body = _json_body()
    if "label" not in body:
        raise InvalidRequest(
            'Send JSON like {"label": "Sneaker", "reason": "checked the image"}.', "label"
        )
    reason = body.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise InvalidRequest('"reason" must be text (or left out).', "reason")
    note = (reason or "").strip()[:500] or None
    verdict = services().prediction.correct(prediction_id, body["label"], actor(), note)
    return jsonify(
        prediction_id=verdict.prediction_id,
        class_index=verdict.true_class_index,
        correct=verdict.correct,
        counted=verdict.counted,
        corrected_by=actor(),
        at=verdict.at.isoformat(timespec="seconds"),
    )


# -- ensembles and experiments as data ----------------------------------------------------------
@bp.post("/inference/ensemble")
@admin_required
def create_definition() -> ResponseReturnValue:
    """Create an ensemble (``strategy: ensemble``) or an experiment (a router): 201."""
    return jsonify(services().definitions.create(_json_body(), actor())), 201


@bp.get("/inference/ensemble")
@admin_required
def list_definitions() -> ResponseReturnValue:
    """Every created ensemble and every experiment."""
    return jsonify(services().definitions.list())


@bp.get("/inference/ensemble/<name>")
@admin_required
def get_definition(name: str) -> ResponseReturnValue:
    """The stored definition of an ensemble or experiment, as created (404 if none)."""
    return jsonify(services().definitions.get(name))


@bp.delete("/inference/ensemble/<name>")
@admin_required
def delete_definition(name: str) -> ResponseReturnValue:
    """Delete a created definition (built-ins and ones in use are refused with a 409)."""
    services().definitions.delete(name, actor())
    return jsonify(deleted=name)


@bp.get("/experiments")
@admin_required
def experiments() -> ResponseReturnValue:
    """All experiments with status, router, arms, shares, dates and outcome."""
    listed = services().definitions.list()["experiments"]
    return jsonify(experiments=[_summary(e) for e in listed])


def _summary(e: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": e["name"],
        "status": e["status"],
        "router": e["strategy"],
        "arms": e["models"],
        "control": e["control"],
        "shares": e["shares"],
        "created_at": e["created_at"],
        "started_at": e["started_at"],
        "ended_at": e["ended_at"],
        "decision": e["decision"],
    }


@bp.get("/experiments/<name>")
@admin_required
def experiment(name: str) -> ResponseReturnValue:
    """One experiment: status, router, shares, arms and its decision, if any."""
    definitions = services().definitions
    definitions.experiment(name)  # 404 for an ensemble or nothing
    return jsonify(definitions.get(name))


@bp.patch("/experiments/<name>")
@admin_required
def patch_experiment(name: str) -> ResponseReturnValue:
    """``{"weights"}``, ``{"canary_percentage"}`` or ``{"status": paused|running}``: live."""
    return jsonify(services().definitions.patch(name, _json_body(), actor()))


def _decide(name: str, verb: str) -> ResponseReturnValue:
    body = request.get_json(silent=True) or {}
    if not isinstance(body, dict):
        raise InvalidRequest("Send a JSON object (or nothing).", "body")
    reason = body.get("reason")
    reason = reason[:500] if isinstance(reason, str) else None
    return jsonify(
        services().definitions.decide(name, verb, actor(), model=body.get("model"), reason=reason)
    )


@bp.post("/experiments/<name>/promote")
@admin_required
def promote(name: str) -> ResponseReturnValue:
    """End the experiment serving the named arm to everyone (recorded with who and why)."""
    return _decide(name, "promote")


@bp.post("/experiments/<name>/rollback")
@admin_required
def rollback(name: str) -> ResponseReturnValue:
    """End the experiment serving its control to everyone."""
    return _decide(name, "rollback")


@bp.post("/experiments/<name>/stop")
@admin_required
def stop(name: str) -> ResponseReturnValue:
    """End the experiment without a winner; its control serves."""
    return _decide(name, "stop")


def _mde() -> float | None:
    """``?mde=``, checked; None (the experiment's configured effect) when absent or empty."""
    from views.admin.forms import MdeForm

    form = MdeForm(formdata=request.args)
    if not form.validate():
        raise InvalidRequest(f"mde: {form.mde.errors[0]}", "mde")
    return form.mde.data if request.args.get("mde", "").strip() else None


@bp.get("/experiments/<name>/results")
@admin_required
def results(name: str) -> ResponseReturnValue:
    """Per-arm outcomes, comparisons with the control, shadows, SRM, events (``?mde=``)."""
    services().definitions.experiment(name)
    return jsonify(services().reports.results(name, _mde()))


@bp.get("/experiments/<name>/report")
@admin_required
def report(name: str) -> ResponseReturnValue:
    """The results frozen at the decision, with dates, duration, traffic, guardrail history and
    the outcome; 404 before any decision."""
    services().definitions.experiment(name)  # 404 for an ensemble or nothing
    body = services().reports.report(name)
    if body is None:
        raise NotFound(
            f"Experiment {name} has no decision yet, so there is no report; see "
            f"/api/v1/experiments/{name}/results for live numbers."
        )
    return jsonify(body)


@bp.get("/stats")
@admin_required
def stats() -> ResponseReturnValue:
    """Totals and per-requested-strategy outcomes over all traffic."""
    return jsonify(services().reports.stats(services().catalogue().names))


@bp.get("/monitoring")
@admin_required
def monitoring() -> ResponseReturnValue:
    """Per-ensemble health and drift over the newest ``?window=`` served predictions."""
    try:
        window = parse_window(request.args.get("window"), services().monitor.window)
    except ValueError as exc:
        raise InvalidRequest(str(exc), "window") from None
    return jsonify(services().monitor.report(window))


# -- model versions ---------------------------------------------------------------------------
@bp.get("/models")
@admin_required
def models() -> ResponseReturnValue:
    """Installed versions with their manifest metrics, sizes and lineage; which is active."""
    return jsonify(services().versions.catalogue())


@bp.post("/models/<version>/activate")
@admin_required
def activate_model(version: str) -> ResponseReturnValue:
    """Serve ``version`` in every worker within seconds (rollback: activate the previous one).

    The body is optional; ``{"force": true}`` activates a version that lacks models created
    ensembles or experiments use, pausing them."""
    body = _json_body() if request.content_length or request.mimetype else {}
    return jsonify(services().versions.activate(version, actor(), body.get("force", False)))
