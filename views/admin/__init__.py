"""``/admin``: the console — overview, experiments (create, change, decide), their results, and
feedback (verdict history and corrections)."""

from flask import Blueprint

bp = Blueprint("admin", __name__, url_prefix="/admin")

# The route modules attach themselves to bp.
from views.admin import feedback, routes  # noqa: E402,F401
