"""The numbers behind /admin and the admin JSON endpoints, computed in one place so they agree."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from flask import current_app

import store
from experiments.assignment import ARMS
from experiments.stats import ab_results, arm_summary

DEFAULT_MDE = 0.02
DIRECT = ("bagging", "boosting", "stacking")


def ab_report(mde: float = DEFAULT_MDE) -> dict[str, Any]:
    """``GET /api/v1/experiments/ab/results``: A/B traffic only, split by the arm that served."""
    records = store.records_by(store.get_session(), ab=True)
    by_arm = {arm: records.get(arm, []) for arm in ARMS}
    return ab_results(by_arm, expected_share_boosting=current_app.config["AB_SPLIT"], mde=mde)


def direct_report() -> dict[str, dict[str, Any]]:
    """Per-strategy outcomes of direct (non-A/B) traffic."""
    records = store.records_by(store.get_session(), ab=False)
    return {name: arm_summary(records.get(name, [])) for name in DIRECT}


def stats_report() -> dict[str, Any]:
    """``GET /api/v1/stats``: every request, grouped by the strategy the client asked for.

    ``by_strategy`` has bagging, boosting and stacking (direct traffic) and ab (both arms
    together); each entry is ``experiments.stats.arm_summary``, so ``served + errors`` of all
    entries adds up to ``total_predictions``.
    """
    session = store.get_session()
    by_strategy: dict[str, Any] = direct_report()
    ab = store.records_by(session, ab=True)
    by_strategy["ab"] = arm_summary([r for arm in ARMS for r in ab.get(arm, [])])
    return {"total_predictions": store.total_predictions(session), "by_strategy": by_strategy}


def accuracy_series(max_points: int = 40) -> dict[str, list[tuple[datetime, float, int]]]:
    """Cumulative labelled accuracy per A/B arm, sampled every ``ceil(n / max_points)`` labels.

    Buckets count predictions rather than hours, so a burst (a demo, ``flask simulate``) still
    draws a curve; each point is (time of the bucket's last prediction, accuracy so far, n).
    """
    series: dict[str, list[tuple[datetime, float, int]]] = {}
    for arm, outcomes in store.accuracy_points(store.get_session()).items():
        step = max(1, math.ceil(len(outcomes) / max_points))
        correct = 0
        points = []
        for n, (created_at, ok) in enumerate(outcomes, start=1):
            correct += ok
            if n % step == 0 or n == len(outcomes):
                points.append((created_at, correct / n, n))
        series[arm] = points
    return series
