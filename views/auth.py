"""HTTP Basic auth for the admin pages: user ``admin``, password ``ADMIN_PASSWORD``.

Failed authentications are limited per client address (OWASP ASVS 2.2.1: at most
``AUTH_FAILURE_LIMIT``, 100, an hour; an IPv6 client per /64, see ``failure_source``); past
the limit every attempt from that address answers 429 with ``Retry-After`` until enough
failures leave the window, the right password too: were it still let through, a 429 would only
tell a guesser "wrong" and guessing would go on at full speed. Only failed attempts count (a
request without an ``Authorization`` header, or a signed-in admin's, adds nothing). The count
lives in the database (``store.throttle``), not in a worker's memory, so N gunicorn workers (or
several instances on one Postgres) share one limit and a restart does not reset it. Behind the
proxy the address is the one nginx forwarded (``views.hooks.client_address``).
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import logging
import math
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from flask import abort, current_app, request
from werkzeug.datastructures import WWWAuthenticate
from werkzeug.exceptions import TooManyRequests, Unauthorized

import store
from store.models import utcnow
from store.throttle import failure_at, recent_auth_failures, record_auth_failure
from views.hooks import client_address, loggable

log = logging.getLogger(__name__)

ADMIN_USER = "admin"
CHALLENGE = {"realm": "Chorus admin", "charset": "UTF-8"}
F = TypeVar("F", bound=Callable[..., Any])


def _same(given: str, expected: str) -> bool:
    """Constant-time comparison; bytes, because compare_digest refuses non-ASCII str."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def check_admin() -> None:
    """403 while admin is off (no password configured), 401 with a challenge on bad credentials."""
    password = current_app.config.get("ADMIN_PASSWORD")
    if not password:
        abort(403, description="admin is disabled: set ADMIN_PASSWORD and restart the service.")
    try:
        auth = request.authorization
    except ValueError:  # werkzeug: "Basic" then bytes that are not base64 ASCII
        auth = None
    user = auth.username if auth is not None else None
    client, now = failure_source(client_address()), utcnow()
    # Checked before the password is: past the limit no answer says whether a guess was right.
    count = _refuse_past_the_limit(client, user, now)
    ok = auth is not None and auth.type == "basic"
    # Both comparisons always run, so timing does not tell which part was wrong.
    user_ok = _same(auth.username or "", ADMIN_USER) if ok else False
    password_ok = _same(auth.password or "", password) if ok else False
    if not (ok and user_ok and password_ok):
        # Only an attempt counts: a request without credentials (a browser's first, before the
        # challenge; a link on someone else's page) must not lock the admin out.
        if "Authorization" in request.headers:
            _count_failure(client, user, count, now)
        raise Unauthorized(
            "Sign in as user “admin” with the ADMIN_PASSWORD the operator configured.",
            www_authenticate=WWWAuthenticate("basic", CHALLENGE),
        )


def failure_source(address: str) -> str:
    """What a failed sign-in counts against: the client's address, or for IPv6 its /64, the
    block one subscriber gets (else each of its 2^64 addresses would have its own budget)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:  # "unknown", or whatever a proxy forwarded
        return address[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def _window() -> tuple[int, timedelta]:
    return (
        int(current_app.config["AUTH_FAILURE_LIMIT"]),
        timedelta(seconds=float(current_app.config["AUTH_FAILURE_WINDOW"])),
    )


def _refuse_past_the_limit(client: str, user: str | None, now: datetime) -> int:
    """429 while ``client`` is past the hourly limit of failures; else their count so far."""
    limit, window = _window()
    count, oldest = recent_auth_failures(store.get_session(), client, window, now)
    if count < limit:
        return count
    if count > limit:  # a burst passed the check together, or the limit was lowered since
        oldest = failure_at(store.get_session(), client, window, count - limit, now) or oldest
    wait = (oldest + window - now).total_seconds() if oldest is not None else 1.0
    retry_after = max(1, math.ceil(wait))
    log.warning(
        "admin authentication refused from %s (user %s): %d failures within %ds, retry after %ds",
        client,
        loggable(user),
        count,
        window.total_seconds(),
        retry_after,
    )
    raise TooManyRequests(
        f"Too many failed sign-ins from this address ({limit} within "
        f"{window.total_seconds() / 60:g} minutes). Every sign-in from it is refused until "
        f"then: wait {retry_after} s and try again with the right password.",
        retry_after=retry_after,
    )


def _count_failure(client: str, user: str | None, count: int, now: datetime) -> None:
    """Log and count a failed authentication (``count``: the client's failures before it)."""
    limit, window = _window()
    record_auth_failure(store.get_session(), client, window, now)
    log.warning(
        "admin authentication failed from %s (user %s): %d of %d allowed failures per %ds",
        client,
        loggable(user),
        count + 1,
        limit,
        window.total_seconds(),
    )


def admin_required(view: F) -> F:
    """Decorate a view so it runs only for the authenticated admin."""

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        check_admin()
        return view(*args, **kwargs)

    return wrapped  # type: ignore[return-value]
