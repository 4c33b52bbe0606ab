"""``/admin``: the console — overview, experiments (create, change, decide), their results, and
feedback (verdict history and corrections), monitoring (health and drift), and every prediction
(filtered, paged, exported as CSV)."""

from flask import Blueprint

bp = Blueprint("admin", __name__, url_prefix="/admin")

# The route modules attach themselves to bp.
from views.admin import feedback, models, monitoring, predictions, routes  # noqa: E402,F401
