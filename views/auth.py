"""HTTP Basic auth for the admin pages: user ``admin``, password ``ADMIN_PASSWORD``."""

from __future__ import annotations

import functools
import hmac
from collections.abc import Callable
from typing import Any, TypeVar

from flask import abort, current_app, request
from werkzeug.datastructures import WWWAuthenticate
from werkzeug.exceptions import Unauthorized

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
    auth = request.authorization
    ok = auth is not None and auth.type == "basic"
    # Both comparisons always run, so timing does not tell which part was wrong.
    user_ok = _same(auth.username or "", ADMIN_USER) if ok else False
    password_ok = _same(auth.password or "", password) if ok else False
    if not (ok and user_ok and password_ok):
        raise Unauthorized(
            "Sign in as user “admin” with the ADMIN_PASSWORD the operator configured.",
            www_authenticate=WWWAuthenticate("basic", CHALLENGE),
        )


def admin_required(view: F) -> F:
    """Decorate a view so it runs only for the authenticated admin."""

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        check_admin()
        return view(*args, **kwargs)

    return wrapped  # type: ignore[return-value]
