"""``/admin``: the console — overview, experiments (create, change, decide) and their results."""

from flask import Blueprint

bp = Blueprint("admin", __name__, url_prefix="/admin")

from views.admin import routes  # noqa: E402,F401  (routes attach themselves to bp)
