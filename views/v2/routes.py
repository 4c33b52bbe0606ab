"""V2 routes: server and model metadata, health, readiness and infer (JSON or binary tensors).

The tensors are decoded and encoded by ``serving.inference_protocol``; this module only moves
bytes between HTTP and the prediction service. Errors are ``{"error": ...}`` (views/errors.py).
"""

from __future__ import annotations

from flask import Response, current_app, jsonify, make_response, request
from flask.typing import ResponseReturnValue

from serving import inference_protocol as protocol
from serving.errors import NotFound
from views import health
from views.context import services
from views.v2 import bp


def _model(name: str, version: str | None) -> tuple[str, str | None, str]:
    """(kind, why it cannot serve, active version) of a model; 404 for a version not active."""
    service = services().prediction
    kind, broken = service.describe_model(name)
    active = service.bundle().version
    if version is not None and version != active:
        raise NotFound(
            f"Model {name} has no version {version[:64]!r}; the active version is {active}. "
            f"Use /v2/models/{name}/versions/{active}, or leave the version out."
        )
    return kind, broken, active


@bp.get("")
def server_metadata() -> ResponseReturnValue:
    """Server name, version and protocol extensions."""
    return jsonify(protocol.server_metadata())


@bp.get("/health/live")
def live() -> ResponseReturnValue:
    """200 while the process answers."""
    return jsonify(live=True)


@bp.get("/health/ready")
def ready() -> ResponseReturnValue:
    """200 when /readyz is (models loaded, database answering), else 503 saying why."""
    answer = make_response(health.readyz())
    if answer.status_code == 200:
        return jsonify(ready=True)
    reason = (answer.get_json(silent=True) or {}).get("error", "not ready")
    return jsonify(error=f"The server is not ready: {reason}."), 503


@bp.get("/models/<name>")
@bp.get("/models/<name>/versions/<version>")
def model_metadata(name: str, version: str | None = None) -> ResponseReturnValue:
    """The model's signature: inputs and outputs with datatypes and shapes."""
    kind, _, active = _model(name, version)
    classes = services().prediction.bundle().classes
    return jsonify(protocol.model_metadata(name, kind, active, classes))


@bp.get("/models/<name>/ready")
@bp.get("/models/<name>/versions/<version>/ready")
def model_ready(name: str, version: str | None = None) -> ResponseReturnValue:
    """200 when the model can answer; 503 with the reason when it cannot (a broken ensemble)."""
    _, broken, _ = _model(name, version)
    if broken is not None:
        return jsonify(error=f"{broken}. Choose another model."), 503
    return jsonify(name=name, ready=True)


@bp.post("/models/<name>/infer")
@bp.post("/models/<name>/versions/<version>/infer")
def infer(name: str, version: str | None = None) -> ResponseReturnValue:
    """A batch of images (``UINT8 [N,28,28]`` or ``BYTES [N]``) -> probabilities, class, label,
    abstention and uncertainty."""
    _, _, active = _model(name, version)
    decoded = protocol.decode_request(
        request.get_data(cache=False),
        request.headers.get(protocol.HEADER_LENGTH),
        current_app.config["MAX_UPLOAD_BYTES"],
    )
    images = decoded.files if decoded.files is not None else decoded.canvases
    assert images is not None
    served = services().prediction.predict_batch(
        images, name, client_id=decoded.client_id, features=decoded.features
    )
    body, header_length = protocol.encode_response(
        name, active, decoded, protocol.answer_from_bodies(served.bodies)
    )
    if header_length is None:
        response = Response(body, content_type="application/json")
    else:
        response = Response(body, content_type="application/octet-stream")
        response.headers[protocol.HEADER_LENGTH] = str(header_length)
    response.call_on_close(served.run_after)  # shadows run after the answer is sent
    return response
