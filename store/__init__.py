"""Persistence (SQLAlchemy 2), so views and services never write SQL themselves.

Predictions and their feedback; created ensembles, experiments and their events
(``store.definitions``); statistics inputs aggregated in SQL (``store.queries``, and per
randomisation unit in ``store.units``), which the roll-ups kept up to date on write
(``store.rollups``) give the read endpoints at a cost flat in history; the schema from
Alembic migrations (``store.migrate``, ``store/migrations/``). Nothing here needs Flask
except ``init_app``/``get_session``/``get_store``: a service opens its own with
``open_store``.

Feedback policy (``store.feedback``): ``feedback`` holds one effective verdict per prediction
(what statistics read) and ``feedback_events`` every submission with its time. The first client
verdict counts and later ones are only kept, so a client cannot flip a result; an admin
correction replaces the effective verdict and is recorded with who and when; one client's
counted verdicts per experiment are capped.
"""

from store.browse import (
    Cursor,
    ListedPrediction,
    PredictionFilter,
    PredictionPage,
    export_predictions,
    list_predictions,
    stored_names,
)
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
from store.feedback import (
    FeedbackLimitReached,
    Verdict,
    correct_feedback,
    feedback_conflicts,
    feedback_corrections,
    feedback_counts,
    feedback_history,
    record_feedback,
)
from store.migrate import current_revision, head_revision, upgrade
from store.models import (
    Base,
    EnsembleRow,
    ExperimentEvent,
    ExperimentRow,
    Feedback,
    FeedbackEvent,
    ModelActivation,
    Prediction,
)
from store.monitoring import recent_window
from store.queries import (
    accuracy_points,
    add_prediction,
    arm_latencies,
    arm_outcomes,
    get_prediction,
    latency_window,
    recent_latencies,
    recent_predictions,
    records_by,
    reward_window,
    routing_scope,
    shadow_outcomes,
    shadows_of,
    strategy_latencies,
    strategy_outcomes,
    total_predictions,
)
from store.rollups import abstentions_by_strategy, arm_scopes, series, srm_units
from store.units import unit_outcomes, unit_scopes, unit_series
from store.versions import activations, active_activation, record_activation

__all__ = [
    "Cursor",
    "ListedPrediction",
    "PredictionFilter",
    "PredictionPage",
    "export_predictions",
    "list_predictions",
    "stored_names",
    "active_activation",
    "activations",
    "record_activation",
    "recent_window",
    "Base",
    "ConcurrentChangeError",
    "DefinitionNotFound",
    "EnsembleRow",
    "ExperimentEvent",
    "ExperimentRow",
    "Feedback",
    "FeedbackEvent",
    "FeedbackLimitReached",
    "ModelActivation",
    "NameTakenError",
    "Prediction",
    "Store",
    "Verdict",
    "StoreError",
    "accuracy_points",
    "add_prediction",
    "arm_latencies",
    "arm_outcomes",
    "arm_scopes",
    "correct_feedback",
    "create_definition",
    "current_revision",
    "delete_definition",
    "ensure_builtin_experiment",
    "experiment_events",
    "feedback_conflicts",
    "feedback_corrections",
    "feedback_counts",
    "feedback_history",
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
    "recent_latencies",
    "recent_predictions",
    "abstentions_by_strategy",
    "record_feedback",
    "records_by",
    "reward_window",
    "routing_scope",
    "series",
    "srm_units",
    "shadow_outcomes",
    "shadows_of",
    "strategy_latencies",
    "strategy_outcomes",
    "total_predictions",
    "unit_outcomes",
    "unit_scopes",
    "unit_series",
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
