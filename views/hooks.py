"""Per-request plumbing: request ids (headers and logs), the signed A/B client cookie, the
JSON API's refusal of cross-site browser requests, security headers."""

from __future__ import annotations

import logging
import re
import secrets
import time
import uuid
from urllib.parse import urlsplit

from flask import Flask, Request, Response, current_app, g, has_request_context, request
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from itsdangerous import BadSignature, Signer
from werkzeug.exceptions import Forbidden, RequestEntityTooLarge
from werkzeug.middleware.proxy_fix import ProxyFix

from views.context import EXTENSION
from views.multipart import LeanRequest

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
CLIENT_COOKIE = "chorus_client"
_SANE_CLIENT_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
CLIENT_COOKIE_MAX_AGE = 365 * 24 * 3600
#: The cookie's own salt, so no other value signed with SECRET_KEY (sessions, CSRF tokens)
#: passes as a client id, and a client id signature is good for nothing else.
CLIENT_COOKIE_SALT = "chorus-client-cookie-v1"
#: Paths of the JSON API, which refuse requests a browser marks as cross-site.
JSON_API_PREFIXES = ("/api/", "/v2/")
#: ``Sec-Fetch-Site`` values the JSON API accepts. ``same-site`` is refused: a sibling
#: subdomain (say, user content on another host of the same site) is a different origin that
#: Chorus does not control, and none of Chorus's own pages calls the API from elsewhere.
ALLOWED_FETCH_SITES = frozenset({"same-origin", "none"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
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
#: HSTS on answers that came over HTTPS (as the proxy reports): browsers then never use plain HTTP.
HSTS = "max-age=31536000"
#: Largest JSON body /api/ reads (feedback, definitions): they take a few KB; 256 KiB is room.
JSON_BODY_LIMIT = 256 * 1024
_NO_COOKIE_PREFIXES = ("/api/", "/v2", "/static/", "/healthz", "/readyz", "/metrics")


def current_request_id() -> str:
    """The id of the request being handled, or "-" outside a request."""
    return g.get("request_id", "-") if has_request_context() else "-"


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` so every log line of a request can be found by its id."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id()
        return True


def loggable(text: object, limit: int = 200) -> str:
    """Client-supplied text made safe for one log line: control characters (a ``%0a`` decoded
    into a newline could forge a line) and non-ASCII escaped, and cut to ``limit``."""
    if text is None:
        return "-"
    escaped = str(text)[: limit * 2].encode("unicode_escape").decode("ascii")
    return escaped if len(escaped) <= limit else escaped[:limit] + "..."


def request_target() -> str:
    """The request's path and query as the client sent them (not percent-decoded), escaped."""
    raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI")
    return loggable(raw if raw else request.full_path.rstrip("?"))


def client_address() -> str:
    """The client's address: the socket peer, or behind the proxy the address it forwarded
    (``ProxyFix``, installed only with ``TRUSTED_PROXIES``)."""
    return (request.remote_addr or "unknown")[:64]


def cookie_secure() -> bool:
    """Mark cookies ``Secure`` when the request came over HTTPS (as a trusted proxy reports) or
    when ``SESSION_COOKIE_SECURE`` is set, so plain-HTTP localhost keeps its cookies."""
    if current_app.config.get("SESSION_COOKIE_SECURE"):
        return True
    return has_request_context() and request.is_secure


class SchemeAwareSessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, ``Secure`` per request (``cookie_secure``)."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return cookie_secure()

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        """Flask's answer, without building a signing serializer for a request that sends
        no session cookie (every API call): that alone was a tenth of the request's hooks."""
        if app.secret_key and not request.cookies.get(self.get_cookie_name(app)):
            return self.session_class()
        return super().open_session(app, request)


def limit_json_body() -> None:
    """A JSON body on /api/ larger than ``JSON_BODY_LIMIT`` is refused before it is read."""
    if request.mimetype != "application/json" or not request.path.startswith("/api/"):
        return  # /v2/ takes batches of JSON tensors: its own limit is MAX_CONTENT_LENGTH
    request.max_content_length = JSON_BODY_LIMIT
    if (request.content_length or 0) > JSON_BODY_LIMIT:
        raise RequestEntityTooLarge(
            f"The JSON body is larger than {JSON_BODY_LIMIT // 1024} KiB; send a small "
            "JSON object instead."
        )


def assign_request_id() -> None:
    """Reuse a sane ``X-Request-ID`` from a proxy, or make one."""
    g.started = time.perf_counter()  # for ensemble_http_request_duration_seconds
    given = request.headers.get(REQUEST_ID_HEADER, "")
    g.request_id = given if _SANE_REQUEST_ID.match(given) else uuid.uuid4().hex


def _cookie_signer() -> Signer:
    """HMAC signer keyed by the app's SECRET_KEY (the same in every worker) and our salt."""
    return Signer(current_app.secret_key, salt=CLIENT_COOKIE_SALT, key_derivation="hmac")


def sign_client_id(client_id: str) -> str:
    """The cookie value for a client id: the id and its signature."""
    return _cookie_signer().sign(client_id).decode("ascii")


def client_id_from_cookie(value: str) -> str | None:
    """The client id a cookie carries if we signed it; None for a forged or edited one."""
    if not value or len(value) > 256:
        return None
    try:
        client_id = _cookie_signer().unsign(value).decode("ascii")
    except (BadSignature, UnicodeError):
        return None
    return client_id if _SANE_CLIENT_ID.match(client_id) else None


def identify_client() -> None:
    """A long-lived random browser id, signed, keeps an A/B visitor in one arm (only its hash
    is stored); a cookie that does not verify is ignored and a fresh signed one issued, so a
    client cannot choose its id (and with it its arm or its unit in the statistics)."""
    if request.path.startswith(_NO_COOKIE_PREFIXES):
        return
    cookie = request.cookies.get(CLIENT_COOKIE, "")
    client_id = client_id_from_cookie(cookie)
    if client_id is not None:
        g.client_id = client_id
        return
    if cookie:
        log.info("client cookie did not verify; issuing a fresh one")
    g.client_id = secrets.token_urlsafe(24)
    g.new_client = True


def _origin_of(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an origin or base URL, default ports filled in; None if unusable."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None  # includes the opaque origin "null" (sandboxed frames, file: pages)
    return scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme]


def refuse_cross_site() -> None:
    """Refuse JSON API requests a browser marks as coming from another site (403).

    Feedback is unauthenticated and browsers resend cached Basic credentials, so a page on
    another site must not be able to make a visitor's browser call the API. Browsers say where
    a request comes from in ``Sec-Fetch-Site`` and ``Origin``; scripts, SDKs and tests send
    neither and are unaffected (nothing here is a defence against them, and needs not be).
    """
    if not request.path.startswith(JSON_API_PREFIXES):
        return
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site.strip().lower() not in ALLOWED_FETCH_SITES:
        raise Forbidden(
            f"This API does not answer requests that a browser sends from another site "
            f"(Sec-Fetch-Site: {site[:20]}). Call it from a script or server (no browser "
            "headers), or use Chorus's own pages."
        )
    origin = request.headers.get("Origin")
    if origin is not None and _origin_of(origin) != _origin_of(request.host_url):
        raise Forbidden(
            f"This API does not answer browser requests from another origin ({origin[:80]}); "
            f"only pages of {request.host_url.rstrip('/')} may call it from a browser. Call it "
            "from a script or server instead."
        )


def finish_response(response: Response) -> Response:
    """Echo the request id, add security headers, set the client cookie once."""
    headers = response.headers
    headers[REQUEST_ID_HEADER] = g.get("request_id") or uuid.uuid4().hex
    # One pass over the headers, not one per default (``setdefault`` scans them each time).
    present = {name.lower() for name in headers.keys()}
    for name, value in SECURITY_HEADERS.items():
        if name.lower() not in present:
            headers.add(name, value)
    if request.path.startswith(("/api/", "/admin")) and "cache-control" not in present:
        headers.add("Cache-Control", "no-store")
    if g.get("new_client"):
        response.set_cookie(
            CLIENT_COOKIE,
            sign_client_id(g.client_id),
            max_age=CLIENT_COOKIE_MAX_AGE,
            httponly=True,
            samesite="Lax",
            secure=cookie_secure(),
        )
    if request.is_secure:
        response.headers.setdefault("Strict-Transport-Security", HSTS)
    chorus = current_app.extensions.get(EXTENSION)
    if chorus is not None and "started" in g:
        chorus.metrics.http_request(
            request.endpoint, request.method, response.status_code, time.perf_counter() - g.started
        )
    return response


def init_app(app: Flask) -> None:
    """Register the hooks; call before CSRFProtect so even refused requests carry an id.

    Requests parse multipart forms with ``views.multipart``'s lean decoder: werkzeug's
    compiles two regular expressions per boundary, and every upload brings a new one."""
    app.request_class = LeanRequest
    proxies = int(app.config.get("TRUSTED_PROXIES") or 0)
    if proxies:  # only behind the proxy: otherwise any client could claim any address or scheme
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies)  # type: ignore[method-assign]
    app.session_interface = SchemeAwareSessionInterface()
    app.before_request(assign_request_id)
    app.before_request(limit_json_body)
    app.before_request(refuse_cross_site)
    app.before_request(identify_client)
    app.after_request(finish_response)
