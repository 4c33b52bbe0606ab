"""The numbers behind the admin console and the admin JSON endpoints, computed in one place.

Experiment results generalise the first release's A/B numbers to N arms and shadows: per arm
counts from SQL aggregates, every non-control arm against the control, the sample-ratio check
against the configured shares, shadow agreement. For ``ab`` the first release's keys stay.
Everything is read fresh from the store: no stale caches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from scipy import stats as scipy_stats

import store
from experiments.routers import build_router
from experiments.spec import served_arms, shadow_arms
from experiments.stats import (
    ab_comparison,
    percentile,
    prob_b_better,
    two_proportion_test,
    wilson_interval,
)
from serving.catalogue import AB, AB_ARMS
from store.db import Store

DEFAULT_MDE = 0.02
#: Events after which the configured shares differ from before.
SHARE_CHANGES = ("weights_changed", "canary_changed")
SRM_ALPHA = 0.001


def _arm(outcome: dict[str, Any] | None, latencies: list[float]) -> dict[str, Any]:
    """One arm's row of the results contract."""
    o = outcome or {}
    labelled, correct = int(o.get("labelled", 0)), int(o.get("correct", 0))
    ci_low, ci_high = wilson_interval(correct, labelled)
    return {
        "served": int(o.get("served", 0)),
        "labelled": labelled,
        "correct": correct,
        "accuracy": correct / labelled if labelled else None,
        "ci_low": ci_low,
        "ci_high": ci_high,
        "mean_confidence": o.get("mean_confidence"),
        "latency_p50_ms": percentile(latencies, 50),
        "latency_p95_ms": percentile(latencies, 95),
        "fallbacks": int(o.get("fallbacks", 0)),
        "errors": int(o.get("errors", 0)),
    }


def srm(served: dict[str, int], expected: dict[str, float] | None) -> tuple[float | None, bool]:
    """χ² goodness of fit of served counts against the expected shares; (p, detected)."""
    if not expected:
        return None, False
    arms = [a for a in expected if expected[a] > 0]
    total = sum(served.get(a, 0) for a in expected)
    stray = sum(served.get(a, 0) for a in expected if expected[a] <= 0)
    if total == 0 or len(arms) < 2:
        return None, False
    if stray:  # traffic where none was expected is a mismatch whatever the rest says
        return 0.0, True
    observed = [served.get(a, 0) for a in arms]
    weight = math.fsum(expected[a] for a in arms)
    f_exp = [total * expected[a] / weight for a in arms]
    p = float(scipy_stats.chisquare(observed, f_exp).pvalue)
    return p, p < SRM_ALPHA


def compare(control: dict[str, Any], arm: dict[str, Any]) -> dict[str, Any]:
    """``arm`` against the control on labelled accuracy: difference, interval, p, chance to win."""
    x1, n1 = control["correct"], control["labelled"]
    x2, n2 = arm["correct"], arm["labelled"]
    test = two_proportion_test(x1, n1, x2, n2)
    return {
        "absolute": {
            "difference": test["difference"],
            "ci_low": test["ci_low"],
            "ci_high": test["ci_high"],
            "p_value": test["p_value"],
        },
        "chance_to_win": prob_b_better(x1, n1, x2, n2) if n1 and n2 else None,
    }


class Reports:
    """Results, stats and the console's numbers over the store."""

    def __init__(
        self,
        db: Store,
        events: Callable[[str], list[dict[str, Any]]],
    ) -> None:
        self.db = db
        self.events = events

    def results(self, name: str, mde: float = DEFAULT_MDE) -> dict[str, Any]:
        """``GET /api/v1/experiments/<name>/results``."""
        session = self.db.sessions()
        row = store.get_experiment(session, name)
        if row is None:
            raise LookupError(name)
        definition = row.definition
        # SRM is judged against the shares the router is configured with (None: adaptive).
        try:
            expected = build_router(definition, row.state or {}).expected_shares()
        except Exception:  # a definition this code cannot build: no expectation to test
            expected = None
        arms = list(served_arms(definition))
        outcomes = store.arm_outcomes(session, name)
        latencies = store.arm_latencies(session, name)
        for extra in outcomes:  # an arm served earlier under another definition still shows
            if extra not in arms and extra not in shadow_arms(definition):
                arms.append(extra)
        table = {arm: _arm(outcomes.get(arm), latencies.get(arm, [])) for arm in arms}
        total = sum(a["served"] for a in table.values())
        for arm, numbers in table.items():
            numbers["share"] = numbers["served"] / total if total else None
            numbers["expected_share"] = (expected or {}).get(arm)
        control = row.control
        comparisons = {
            arm: compare(table[control], numbers)
            for arm, numbers in table.items()
            if arm != control and control in table
        }
        shadows = {}
        for arm, o in store.shadow_outcomes(session, name).items():
            ok = o["runs"] - o["errors"]
            shadows[arm] = {
                "runs": o["runs"],
                "errors": o["errors"],
                "agreement": o["agreement"] / ok if ok else None,
                "labelled": o["labelled"],
                "accuracy": o["correct"] / o["labelled"] if o["labelled"] else None,
                "latency_p50_ms": percentile(o["latencies"], 50),
            }
        # Shares apply from their last change on: SRM counts only the traffic routed since.
        events = self.events(name)
        changed = next((e["at_time"] for e in events if e["kind"] in SHARE_CHANGES), None)
        # Served (successful) requests, as the first release counted: an arm that loses requests
        # to errors loses data the comparison needs, which SRM should flag. Requests a pause or
        # a decision sent to one model are no assignment and stay out.
        assigned = store.arm_outcomes(session, name, changed, routed_only=True)
        srm_counts = {a: o["served"] for a, o in assigned.items()}
        p, detected = srm(srm_counts, expected)
        out: dict[str, Any] = {
            "experiment": name,
            "router": row.router,
            "status": row.status,
            "control": control,
            "arms": table,
            "comparisons": comparisons,
            "shadows": shadows,
            "srm_p_value": p,
            "srm_detected": detected,
            "srm_since": changed.isoformat(timespec="seconds") if changed else None,
            "guardrails": definition.get("guardrails", {}),
            "decision": row.decision,
            "events": [{k: v for k, v in e.items() if k != "at_time"} for e in events],
        }
        if name == AB.name and set(AB_ARMS) <= set(table):
            out.update(ab_compatible(table, mde, p, detected))
        session.rollback()
        return out

    def stats(self, names: Iterable[str] = ()) -> dict[str, Any]:
        """``GET /api/v1/stats``: totals and per-requested-strategy outcomes (every strategy in
        ``names`` appears, with zeros before its first request)."""
        session = self.db.sessions()
        by_strategy = store.strategy_outcomes(session)
        latencies = store.strategy_latencies(session)
        ordered = list(dict.fromkeys([*names, *sorted(by_strategy)]))
        body = {
            "total_predictions": store.total_predictions(session),
            "by_strategy": {
                name: _arm(by_strategy.get(name), latencies.get(name, [])) for name in ordered
            },
        }
        session.rollback()
        return body

    def accuracy_series(
        self, name: str, max_points: int = 40
    ) -> dict[str, list[tuple[datetime, float, int]]]:
        """Cumulative labelled accuracy per arm of an experiment, for the console's chart."""
        series: dict[str, list[tuple[datetime, float, int]]] = {}
        for arm, outcomes in store.accuracy_points(self.db.sessions(), name).items():
            step = max(1, math.ceil(len(outcomes) / max_points))
            correct = 0
            points = []
            for n, (created_at, ok) in enumerate(outcomes, start=1):
                correct += ok
                if n % step == 0 or n == len(outcomes):
                    points.append((created_at, correct / n, n))
            series[arm] = points
        return series


def ab_compatible(
    table: dict[str, dict[str, Any]], mde: float, srm_p: float | None, srm_detected: bool
) -> dict[str, Any]:
    """The first release's ``ab`` keys, kept for its clients."""
    bagging, boosting = (table[a] for a in AB_ARMS)
    return {
        **ab_comparison(bagging, boosting, mde),
        "srm_ok": None if srm_p is None else not srm_detected,
    }
