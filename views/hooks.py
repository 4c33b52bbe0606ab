"""Per-request plumbing: request ids (headers and logs), the A/B client cookie, security headers."""

from __future__ import annotations

import logging
import re
import secrets
import uuid

from flask import Flask, Response, g, has_request_context, request

REQUEST_ID_HEADER = "X-Request-ID"
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
CLIENT_COOKIE = "chorus_client"
_SANE_CLIENT_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
CLIENT_COOKIE_MAX_AGE = 365 * 24 * 3600
#: Only our own files, data: images (uploads shown back), no inline script or style.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
_NO_COOKIE_PREFIXES = ("/api/", "/static/", "/healthz", "/readyz")


def current_request_id() -> str:
    """The id of the request being handled, or "-" outside a request."""
    return g.get("request_id", "-") if has_request_context() else "-"


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` so every log line of a request can be found by its id."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id()
        return True


def assign_request_id() -> None:
    """Reuse a sane ``X-Request-ID`` from a proxy, or make one."""
    given = request.headers.get(REQUEST_ID_HEADER, "")
    g.request_id = given if _SANE_REQUEST_ID.match(given) else uuid.uuid4().hex


def identify_client() -> None:
    """A long-lived random browser id keeps an A/B visitor in one arm (only its hash is stored)."""
    if request.path.startswith(_NO_COOKIE_PREFIXES):
        return
    cookie = request.cookies.get(CLIENT_COOKIE, "")
    if _SANE_CLIENT_ID.match(cookie):
        g.client_id = cookie
    else:
        g.client_id = secrets.token_urlsafe(24)
        g.new_client = True


def finish_response(response: Response) -> Response:
    """Echo the request id, add security headers, set the client cookie once."""
    response.headers[REQUEST_ID_HEADER] = g.get("request_id") or uuid.uuid4().hex
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.path.startswith(("/api/", "/admin")):
        response.headers.setdefault("Cache-Control", "no-store")
    if g.get("new_client"):
        response.set_cookie(
            CLIENT_COOKIE,
            g.client_id,
            max_age=CLIENT_COOKIE_MAX_AGE,
            httponly=True,
            samesite="Lax",
            secure=request.is_secure,
        )
    return response


def init_app(app: Flask) -> None:
    """Register the hooks; call before CSRFProtect so even refused requests carry an id."""
    app.before_request(assign_request_id)
    app.before_request(identify_client)
    app.after_request(finish_response)
