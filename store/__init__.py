"""Persistence (SQLAlchemy 2), so views and services never write SQL themselves.

Predictions and their feedback; created ensembles, experiments and their events
(``store.definitions``); statistics inputs aggregated in SQL (``store.queries``); the schema
from Alembic migrations (``store.migrate``, ``store/migrations/``). Nothing here needs Flask
except ``init_app``/``get_session``/``get_store``: a service opens its own with ``open_store``.

Feedback policy: one row per prediction (``feedback.prediction_id`` is unique) and the latest
answer wins: a second verdict for the same prediction overwrites the first, so a person who
clicked the wrong button can correct it and a prediction is never counted twice in the stats.
"""

from store.db import Store, open_store, ping
from store.definitions import (
    create_definition,
    delete_definition,
    ensure_builtin_experiment,
    experiment_events,
    get_ensemble,
    get_experiment,
    list_definitions,
    next_ticket,
    update_ensemble_status,
    update_experiment,
)
from store.errors import ConcurrentChangeError, DefinitionNotFound, NameTakenError, StoreError
from store.migrate import current_revision, head_revision, upgrade
from store.models import (
    Base,
    EnsembleRow,
    ExperimentEvent,
    ExperimentRow,
    Feedback,
    Prediction,
)
from store.queries import (
    accuracy_points,
    add_prediction,
    arm_latencies,
    arm_outcomes,
    get_prediction,
    latency_window,
    recent_predictions,
    record_feedback,
    records_by,
    reward_window,
    shadow_outcomes,
    shadows_of,
    strategy_latencies,
    strategy_outcomes,
    total_predictions,
)

__all__ = [
    "Base",
    "ConcurrentChangeError",
    "DefinitionNotFound",
    "EnsembleRow",
    "ExperimentEvent",
    "ExperimentRow",
    "Feedback",
    "NameTakenError",
    "Prediction",
    "Store",
    "StoreError",
    "accuracy_points",
    "add_prediction",
    "arm_latencies",
    "arm_outcomes",
    "create_definition",
    "current_revision",
    "delete_definition",
    "ensure_builtin_experiment",
    "experiment_events",
    "get_ensemble",
    "get_experiment",
    "get_prediction",
    "get_session",
    "get_store",
    "head_revision",
    "init_app",
    "latency_window",
    "list_definitions",
    "next_ticket",
    "open_store",
    "ping",
    "recent_predictions",
    "record_feedback",
    "records_by",
    "reward_window",
    "shadow_outcomes",
    "shadows_of",
    "strategy_latencies",
    "strategy_outcomes",
    "total_predictions",
    "update_ensemble_status",
    "update_experiment",
    "upgrade",
]


_FLASK_NAMES = ("get_session", "get_store", "init_app")


def __getattr__(name: str):  # noqa: ANN202  (PEP 562: the Flask helpers load on first use)
    """``store.init_app`` and friends, imported only when asked for, so that importing the store
    (as ``serving/`` does) never imports Flask."""
    if name in _FLASK_NAMES:
        from store import flask_app

        return getattr(flask_app, name)
    raise AttributeError(f"module 'store' has no attribute {name!r}")
