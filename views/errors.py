"""Error handlers: JSON ``{"error": ...}`` under /api/ and /v2/, a page elsewhere.

``STATUS`` is the one table from domain errors (serving, experiments, store, preprocessing,
ensembles) to HTTP statuses; views raise or let propagate, never pick codes themselves. Every
message says what was wrong and what to do. A refused upload re-renders the form it came from
(with the right status) instead of a bare error page.
"""

from __future__ import annotations

import logging

from flask import (
    Blueprint,
    Response,
    current_app,
    g,
    jsonify,
    make_response,
    render_template,
    request,
)
from flask_wtf.csrf import CSRFError
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from werkzeug.exceptions import (
    HTTPException,
    InternalServerError,
    MethodNotAllowed,
    ServiceUnavailable,
    default_exceptions,
)

from ensembles.base import EnsembleError
from experiments.spec import SpecError
from models.preprocess import PreprocessError
from serving.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    ServingError,
    TooManyRequests,
    Unavailable,
    Unprocessable,
)
from store.errors import ConcurrentChangeError, DefinitionNotFound, NameTakenError, StoreError
from store.feedback import FeedbackLimitReached
from views.hooks import request_target

log = logging.getLogger(__name__)
bp = Blueprint("errors", __name__)


def _body_errors() -> tuple[type[BaseException], ...]:
    """What gunicorn raises from ``wsgi.input`` for a body the client malformed (a bad chunk
    size, a missing terminator) or cut short: the client's fault, a 400, not the app's 500."""
    try:
        from gunicorn.http.errors import NoMoreData, ParseException
    except ImportError:  # another WSGI server
        return ()
    return (ParseException, NoMoreData)


#: The server's errors for a malformed request body (see ``_body_errors``).
BODY_ERRORS = _body_errors()

#: Domain error -> HTTP status; the first matching class (in order) wins.
STATUS: tuple[tuple[type[Exception], int], ...] = (
    (InvalidRequest, 400),
    (SpecError, 400),
    (NotFound, 404),
    (DefinitionNotFound, 404),
    (Conflict, 409),
    (NameTakenError, 409),
    (ConcurrentChangeError, 409),
    (Unprocessable, 422),
    (TooManyRequests, 429),
    (FeedbackLimitReached, 429),
    (Unavailable, 503),
    (EnsembleError, 503),
)
DOMAIN_ERRORS = (ServingError, SpecError, StoreError, PreprocessError, EnsembleError)


def status_of(exc: Exception) -> int:
    """The HTTP status of a domain error (a bad upload carries its own: 400, 413, 415)."""
    if isinstance(exc, PreprocessError):
        return exc.status_code
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def message_of(exc: Exception) -> str:
    """The client-facing message; a field error names the field first."""
    text = str(exc)
    field = getattr(exc, "field", None)
    if isinstance(exc, SpecError) and field and field not in text:
        return f"{field}: {text}"
    return text


def wants_json() -> bool:
    """API clients get JSON; people get pages."""
    return request.path.startswith(("/api/", "/v2/"))


def message_for(exc: HTTPException) -> str:
    """A specific description when the code raised one, else a default that says what to do."""
    if isinstance(exc, CSRFError):
        return (
            f"{exc.description} Reload the page and submit the form again (cookies must be "
            "enabled for this site)."
        )
    if exc.description and exc.description != type(exc).description:
        return str(exc.description)
    code = exc.code or 500
    if code == 400:
        return "The request could not be understood. Go back, check the form and try again."
    if code == 404:
        if wants_json():
            return (
                f"There is no API endpoint at {request.path}. See the README's API section: "
                "POST /api/v1/predict, POST /api/v1/predictions/<id>/feedback, "
                "/api/v1/inference/ensemble, /api/v1/experiments, GET /api/v1/stats."
            )
        return "There is no page at this address. Check the link, or start from the home page."
    if isinstance(exc, MethodNotAllowed):
        allowed = ", ".join(sorted(exc.valid_methods or ())) or "nothing"
        return f"{request.method} is not allowed at {request.path}; it accepts {allowed}."
    if code == 413:
        limit = current_app.config["MAX_UPLOAD_MB"]
        return (
            f"The upload is larger than {limit:g} MB. Choose a smaller image (a photo of a few "
            "MB is plenty) and try again."
        )
    if code >= 500:
        return (
            "Something went wrong on our side. Try again; if it keeps happening, tell the "
            f"operator the request id {g.get('request_id', '-')}."
        )
    return str(exc.description or exc.name)


def _page(exc: HTTPException, message: str) -> Response:
    """Re-render the upload form a refused POST came from, or the generic error page."""
    from views.pages import render_refused

    if exc.code in (400, 413):
        refused = render_refused(exc.code or 400, message)
        if refused is not None:
            return make_response(refused)
    html = render_template("errors/error.html", code=exc.code, title=exc.name, message=message)
    return make_response(html, exc.code)


@bp.app_errorhandler(HTTPException)
def http_error(exc: HTTPException) -> Response:
    """Every HTTP error (404, 405, 413, CSRF, aborts) in the right format, headers kept."""
    message = message_for(exc)
    response = jsonify(error=message) if wants_json() else _page(exc, message)
    response.status_code = exc.code or 500
    for key, value in exc.get_headers():
        if key.lower() != "content-type":
            response.headers[key] = value
    return response


@bp.app_errorhandler(ServingError)
@bp.app_errorhandler(SpecError)
@bp.app_errorhandler(StoreError)
@bp.app_errorhandler(PreprocessError)
@bp.app_errorhandler(EnsembleError)
def domain_error(exc: Exception) -> Response:
    """A domain error that reached the top: its status from ``STATUS``, its own message."""
    status = status_of(exc)
    if status >= 500:
        log.error("%s on %s %s: %s", type(exc).__name__, request.method, request_target(), exc)
    return http_error(default_exceptions.get(status, InternalServerError)(message_of(exc)))


@bp.app_errorhandler(OperationalError)
@bp.app_errorhandler(PoolTimeoutError)
def database_unavailable(exc: Exception) -> Response:
    """A locked, down or exhausted database is an outage to retry, not a bug: 503, not 500."""
    log.error("database unavailable on %s %s: %s", request.method, request_target(), exc)
    return http_error(
        ServiceUnavailable(
            "The database is busy or unreachable, so nothing was recorded. Try again in a "
            "moment; if it keeps happening, tell the operator the request id "
            f"{g.get('request_id', '-')}."
        )
    )


@bp.app_errorhandler(Exception)
def unexpected_error(exc: Exception) -> Response:
    """A bug: log the traceback with the request id, answer 500 without leaking details (but a
    body the server could not read, malformed by the client, is a 400)."""
    if BODY_ERRORS and isinstance(exc, BODY_ERRORS):
        log.warning("malformed request body on %s %s: %r", request.method, request_target(), exc)
        return http_error(
            default_exceptions[400](
                f"The request body could not be read ({type(exc).__name__}): send it again "
                "with a correct Content-Length or well-formed chunks."
            )
        )
    log.exception("unhandled error on %s %s", request.method, request_target())
    return http_error(InternalServerError())
