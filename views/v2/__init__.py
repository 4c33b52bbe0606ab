"""``/v2``: the Open Inference Protocol (KServe V2) over every member, ensemble and experiment."""

from flask import Blueprint

bp = Blueprint("v2", __name__, url_prefix="/v2")

from views.v2 import routes  # noqa: E402,F401  (routes attach themselves to bp)
