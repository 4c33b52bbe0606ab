"""``/api/v1``: the JSON contract for non-browser clients (CSRF-exempt; errors are JSON)."""

from flask import Blueprint

bp = Blueprint("api", __name__, url_prefix="/api/v1")

from views.api import routes  # noqa: E402,F401  (routes attach themselves to bp)

bp.before_request(routes.refuse_browser_forms)
