"""The numbers behind the admin console and the admin JSON endpoints, computed in one place.

Experiment results generalise the first release's A/B numbers to N arms and shadows: per-arm
counts from SQL aggregates; every non-control arm against the control with GrowthBook's
statistics (``experiments.stats.compare_all``); the sample-ratio check against the configured
shares; guardrail status; shadow agreement; a one-line verdict per comparison.

The unit of analysis is the randomisation unit, not the request (``store.units``): with sticky
assignment a client's requests all go to one arm, so SRM counts distinct units and accuracy is
a ratio metric over units (correct / labelled per unit, delta-method variance), which keeps
clustered traffic from overstating significance. For ``ab`` the first release's keys stay.
Everything is read fresh from the store's roll-ups (``store.rollups``), kept up to date in the
transaction of each write: no stale caches, and no read that grows with the history. Latency
percentiles are over each arm's or strategy's newest ``LATENCY_ROWS`` (10,000) successful
requests, read down an index.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sqlalchemy.orm import Session

import store
from experiments.decisions import DEFAULT_MIN_SAMPLES, ArmInputs, guardrail_checks
from experiments.routers import build_router
from experiments.spec import served_arms, shadow_arms
from experiments.stats import (
    RatioStats,
    compare,
    compare_all,
    sample_size,
    srm,
    wilson_interval,
)
from serving.catalogue import AB, AB_ARMS
from store import queries, rollups
from store.db import Store
from store.rollups import SHARE_CHANGES
from store.units import RATIO_FIELDS

log = logging.getLogger(__name__)

DEFAULT_MDE = 0.02
DEFAULT_TUNING = 5000
ALPHA = 0.05
#: Events a report lists as its guardrail history.
GUARDRAIL_EVENTS = ("guardrail_breached", "rolled_back")
#: Points of the lift and accuracy charts, whatever the traffic.
SERIES_POINTS = 50
#: Latencies per arm behind the table's p50/p95: the newest ones (a bounded read at any size).
LATENCY_ROWS = 10_000
#: Latencies per arm behind the p95 guardrail: the newest ones, as the guardian reads them.
LATENCY_WINDOW = 1000


def format_p(value: float | None, name: str = "p") -> str:
    """``p = 0.042``, ``p < 0.001`` (never the misleading ``p = 0.000``), ``p n/a``."""
    if value is None:
        return f"{name} n/a"
    return f"{name} < 0.001" if value < 0.001 else f"{name} = {value:.3f}"


def randomises_clients(definition: Mapping[str, Any]) -> bool:
    """Sticky routers randomise clients (the unit of analysis); the others every request."""
    return bool(definition.get("sticky", True))


def routed_inputs(
    session: Session, name: str, definition: Mapping[str, Any]
) -> dict[str, ArmInputs]:
    """What the guardrails judge per arm, read from the store's roll-ups and the newest
    latencies (bounded reads: the guardian runs this every second per experiment)."""
    routed = store.arm_scopes(session, name, by_client=randomises_clients(definition))["routed"]
    arms = list(dict.fromkeys([*served_arms(definition), *routed]))
    return arm_inputs(routed, _guardrail_latencies(session, name, arms))


def _guardrail_latencies(session: Session, name: str, arms: list[str]) -> dict[str, Any]:
    """Each arm's p95 over its newest ``LATENCY_WINDOW`` latencies, as the guardian judges."""
    return queries.arm_latency_percentiles(session, name, arms, LATENCY_WINDOW, (95,))


def ratio_stats(numbers: Mapping[str, Any] | None) -> RatioStats:
    """``RatioStats`` from a row of ``store.unit_outcomes`` (zeros when the arm has none)."""
    o = numbers or {}
    return RatioStats(
        n=int(o.get("n", 0)), **{key: float(o.get(key, 0)) for key in RATIO_FIELDS[1:]}
    )


def design_effect(stats: RatioStats) -> float:
    """How much clustering inflates the variance of the accuracy over treating labels as
    independent (Kish's design effect), at least 1; 1 when undefined or unclustered."""
    p, variance = stats.mean, stats.variance
    if stats.is_proportion or p is None or variance is None or not 0.0 < p < 1.0:
        return 1.0
    deff = (variance / stats.n) / (p * (1.0 - p) / stats.d_sum)
    return max(1.0, round(deff, 6)) if math.isfinite(deff) else 1.0


def accuracy_interval(stats: RatioStats) -> tuple[float | None, float | None]:
    """95% Wilson interval of an arm's accuracy over its effective number of labels (labels over
    the design effect): the Wilson interval itself for unclustered traffic, wider when clustered."""
    if stats.d_sum <= 0:
        return None, None
    n_eff = stats.d_sum / design_effect(stats)
    return wilson_interval(stats.m_sum / stats.d_sum * n_eff, n_eff)


def _arm(
    outcome: Mapping[str, Any] | None, latency: Mapping[Any, Any], by_unit: bool = False
) -> dict[str, Any]:
    """One arm's row of the results contract (``latency``: its window's percentiles); with
    ``by_unit`` (``outcome`` from ``store.arm_scopes``) the interval is unit-level and the row
    counts units."""
    o = outcome or {}
    labelled, correct = int(o.get("labelled", 0)), int(o.get("correct", 0))
    if by_unit:
        ci_low, ci_high = accuracy_interval(ratio_stats(o))
    else:
        ci_low, ci_high = wilson_interval(correct, labelled)
    row = {
        "served": int(o.get("served", 0)),
        "labelled": labelled,
        "correct": correct,
        "accuracy": correct / labelled if labelled else None,
        "ci_low": ci_low,
        "ci_high": ci_high,
        "mean_confidence": o.get("mean_confidence"),
        "latency_p50_ms": latency.get(50),
        "latency_p95_ms": latency.get(95),
        "fallbacks": int(o.get("fallbacks", 0)),
        "errors": int(o.get("errors", 0)),
    }
    if by_unit:
        row["units"] = int(o.get("units", 0))
        row["labelled_units"] = int(o.get("n", 0))
    return row


def samples_needed(control: RatioStats, treatment: RatioStats, mde: float) -> int | None:
    """More labelled outcomes per arm to detect ``mde`` (α 0.05, power 80%) with the control's
    accuracy as the baseline, inflated by the control's design effect; None without a baseline."""
    p_base = control.mean
    if p_base is None:
        return None
    try:
        required = sample_size(p_base, mde, alpha=ALPHA, power=0.8)
    except ValueError:  # an effect the baseline cannot have
        return None
    required = math.ceil(round(required * design_effect(control), 6))
    return max(0, required - int(min(control.d_sum, treatment.d_sum)))


def readable_count(count: int) -> str:
    """940 for 937, 7,200 for 7,157: a count people read at a glance."""
    if count < 100:
        return str(count)
    digits = len(str(count)) - 2
    return f"{round(count, -digits):,}"


def _date(iso: str | None) -> str:
    """The day of an ISO time, which is all a verdict line needs."""
    return (iso or "")[:10] or "an unknown date"


def decision_line(decision: Mapping[str, Any]) -> str:
    """The experiment's outcome in a few words: ``boosting promoted on 2026-12-02``."""
    status, model, day = decision.get("status"), decision.get("model"), _date(decision.get("at"))
    if status == "promoted":
        return f"{model} promoted on {day}"
    if status == "rolled_back":
        return f"rolled back to {model} on {day}"
    if status == "inconclusive":
        return f"stopped as inconclusive on {day}; {model} serves"
    return f"stopped on {day}; {model} serves"


def verdict(
    arm: str, comparison: Mapping[str, Any], control: str, decision: Mapping[str, Any] | None
) -> str:
    """One line per comparison, judged on the always-valid sequential p-value (people peek)."""
    if decision:
        if decision.get("status") == "promoted" and decision.get("model") == arm:
            return f"promoted on {_date(decision.get('at'))}"
        return decision_line(decision)
    difference = comparison["absolute"]["difference"]
    if difference is None:
        return f"{arm}: too few labelled outcomes to compare with {control} yet"
    points = abs(difference) * 100
    if round(points, 1) == 0:
        lead = f"{arm} is level with {control}"
    else:
        lead = f"{arm} is {'ahead' if difference > 0 else 'behind'} by {points:.1f} points"
    p = comparison["sequential"]["p_value"]
    if p is not None and p < ALPHA:
        return f"{lead}; significant (sequential {format_p(p)})"
    needed = comparison.get("samples_needed_per_arm")
    if needed:
        about = readable_count(needed)
        return f"{lead}; not significant yet; about {about} more labels per arm needed"
    return f"{lead}; not significant"


def configured_mde(definition: Mapping[str, Any]) -> float:
    """The effect the experiment is sized for: a canary's ``min_improvement``, else 2 points."""
    criteria = definition.get("promotion_criteria") or {}
    improvement = criteria.get("min_improvement")
    return float(improvement) if improvement else DEFAULT_MDE


def arm_inputs(
    routed: Mapping[str, Mapping[str, Any]], latencies: Mapping[str, Mapping[Any, Any]]
) -> dict[str, ArmInputs]:
    """What the guardrails judge per arm: routed traffic (``store.arm_scopes``), unit-level
    accuracy, the p95 of the newest ``LATENCY_WINDOW`` latencies and how many there were."""
    inputs = {}
    for arm in dict.fromkeys([*latencies, *routed]):
        o = routed.get(arm, {})
        recent = latencies.get(arm, {})
        inputs[arm] = ArmInputs(
            served=int(o.get("served", 0)),
            errors=int(o.get("errors", 0)),
            fallbacks=int(o.get("fallbacks", 0)),
            latency_p95_ms=recent.get(95),
            latency_samples=int(recent.get("samples", 0)),
            accuracy=ratio_stats(o),
        )
    return inputs


def guardrails(
    definition: Mapping[str, Any], control: str, arms: Mapping[str, ArmInputs], tuning: int
) -> dict[str, Any]:
    """The definition's guardrails checked on ``arms`` as the guardian checks them."""
    limits = definition.get("guardrails") or {}
    return guardrail_checks(
        limits,
        arms,
        control,
        min_samples=int(limits.get("min_samples") or DEFAULT_MIN_SAMPLES),
        tuning=tuning,
    )


def _event(e: Mapping[str, Any]) -> dict[str, Any]:
    """An event as the results list it: the frozen report inside a decision stays at /report."""
    out = {k: v for k, v in e.items() if k != "at_time"}
    for side in ("before", "after"):
        if isinstance(out.get(side), dict) and "report" in out[side]:
            out[side] = {k: v for k, v in out[side].items() if k != "report"}
    return out


class Reports:
    """Results, reports, stats and the console's numbers over the store."""

    def __init__(
        self,
        db: Store,
        events: Callable[[str], list[dict[str, Any]]],
    ) -> None:
        self.db = db
        self.events = events

    def results(self, name: str, mde: float | None = None) -> dict[str, Any]:
        """``GET /api/v1/experiments/<name>/results``; ``mde`` defaults to the configured one."""
        session = self.db.sessions()
        row = store.get_experiment(session, name)
        if row is None:
            raise LookupError(name)
        definition = row.definition
        mde = configured_mde(definition) if mde is None else mde
        tuning = int(definition.get("sequential_tuning") or DEFAULT_TUNING)
        by_client = randomises_clients(definition)
        # SRM is judged against the shares the router is configured with (None: adaptive).
        try:
            expected = build_router(definition, row.state or {}).expected_shares()
        except Exception as exc:  # a definition this code cannot build: no expectation to test
            log.warning("experiment %s: no SRM check, its router does not build: %s", name, exc)
            expected = None
        # Shares apply from their last change on: SRM counts only the units routed since (the
        # share epoch the change started).
        events = self.events(name)
        changed = next((e["at_time"] for e in events if e["kind"] in SHARE_CHANGES), None)
        # Every arm's numbers over all traffic, and over routed traffic (requests a pause or a
        # decision sent to one model are no assignment): what the guardrails judge.
        scopes = store.arm_scopes(session, name, by_client=by_client)
        outcomes, routed_outcomes = scopes["all"], scopes["routed"]
        arms = list(served_arms(definition))
        for extra in outcomes:  # an arm served earlier under another definition still shows
            if extra not in arms and extra not in shadow_arms(definition):
                arms.append(extra)
        latencies = queries.arm_latency_percentiles(session, name, arms, LATENCY_ROWS)
        table = {arm: _arm(outcomes.get(arm), latencies[arm], by_unit=True) for arm in arms}
        total = sum(a["served"] for a in table.values())
        for arm, numbers in table.items():
            numbers["share"] = numbers["served"] / total if total else None
            numbers["expected_share"] = (expected or {}).get(arm)
        control = row.control
        stats = {arm: ratio_stats(outcomes.get(arm)) for arm in table}
        stats.setdefault(control, ratio_stats(None))
        compared = compare_all(stats, control, tuning=tuning)
        comparisons = {arm: c for arm, c in compared["comparisons"].items() if arm in table}
        for arm, c in comparisons.items():
            c["samples_needed_per_arm"] = samples_needed(stats[control], stats[arm], mde)
            c["verdict"] = verdict(arm, c, control, row.decision)
        shadows = {}
        shadow_runs = rollups.shadow_outcomes(session, name)
        shadow_latencies = queries.shadow_latency_percentiles(
            session, name, list(shadow_runs), LATENCY_ROWS
        )
        for arm, o in shadow_runs.items():
            ok = o["runs"] - o["errors"]
            shadows[arm] = {
                "runs": o["runs"],
                "errors": o["errors"],
                "agreement": o["agreement"] / ok if ok else None,
                "labelled": o["labelled"],
                "accuracy": o["correct"] / o["labelled"] if o["labelled"] else None,
                "latency_p50_ms": shadow_latencies[arm][50],
            }
        srm_units = store.srm_units(session, name, by_client=by_client)
        check = srm(srm_units, expected) if expected else {"p_value": None, "detected": False}
        out: dict[str, Any] = {
            "experiment": name,
            "router": row.router,
            "status": row.status,
            "control": control,
            "mde": mde,
            "sequential_tuning": tuning,
            "unit": "client" if by_client else "request",
            "arms": table,
            "comparisons": comparisons,
            "multiple_comparisons": compared["multiple_comparisons"],
            "shadows": shadows,
            "srm_p_value": check["p_value"],
            "srm_detected": check["detected"],
            "srm_since": changed.isoformat(timespec="seconds") if changed else None,
            "srm_units": srm_units,
            "guardrails": guardrails(
                definition,
                control,
                arm_inputs(routed_outcomes, _guardrail_latencies(session, name, arms)),
                tuning,
            ),
            "decision": row.decision,
            "events": [_event(e) for e in events],
        }
        if name == AB.name and set(AB_ARMS) <= set(table):
            out.update(ab_compatible(out))
        session.rollback()
        return out

    def report(self, name: str) -> dict[str, Any] | None:
        """``GET /api/v1/experiments/<name>/report``: the results frozen at the decision plus
        dates, duration, traffic per arm, the guardrail history and the outcome; None before."""
        session = self.db.sessions()
        row = store.get_experiment(session, name)
        if row is None:
            raise LookupError(name)
        frozen, started, ended = row.report, row.started_at, row.ended_at
        session.rollback()
        if frozen is None:
            return None
        out = dict(frozen)
        decision = out.get("decision") or row.decision or {}
        out["duration_seconds"] = (
            round((ended - started).total_seconds(), 3) if started and ended else None
        )
        out["traffic"] = {
            arm: {key: a.get(key) for key in ("served", "labelled", "units", "errors")}
            for arm, a in (out.get("arms") or {}).items()
        }
        # Events are append-only and a decided experiment cannot roll back again, so this
        # history is as frozen as the rest.
        out["guardrail_history"] = [
            {
                "kind": e["kind"],
                "actor": e["actor"],
                "at": e["at"],
                "reason": e["reason"],
                "evidence": ((e.get("after") or {}).get("decision") or {}).get("evidence"),
            }
            for e in self.events(name)
            if e["kind"] in GUARDRAIL_EVENTS
        ]
        out["verdict"] = decision_line(decision) if decision else None
        return out

    def lift_series(self, name: str, max_points: int = SERIES_POINTS) -> dict[str, Any]:
        """Per non-control arm, the difference from the control with its always-valid interval,
        and per arm the cumulative accuracy with its interval, at most ``max_points`` times
        (the series checkpoints, every ``store.rollups.CHECKPOINT_LABELS`` labels, spread
        evenly, and now; x = labelled outcomes so far, all arms)."""
        session = self.db.sessions()
        row = store.get_experiment(session, name)
        if row is None:
            raise LookupError(name)
        definition, control = row.definition, row.control
        tuning = int(definition.get("sequential_tuning") or DEFAULT_TUNING)
        by_client = randomises_clients(definition)
        points = store.series(session, name, max_points, by_client=by_client)
        session.rollback()
        seen = [arm for point in points for arm in point["arms"]]
        arms = list(dict.fromkeys([*served_arms(definition), *seen]))
        lift: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms if arm != control}
        accuracy: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
        labelled = 0
        for point in points:
            labelled = point["labelled"]
            stats = {arm: ratio_stats(point["arms"].get(arm)) for arm in arms}
            for arm, s in stats.items():
                if s.d_sum:
                    low, high = accuracy_interval(s)
                    accuracy[arm].append(
                        {
                            "labelled": labelled,
                            "arm_labelled": int(s.d_sum),
                            "accuracy": s.mean,
                            "ci_low": low,
                            "ci_high": high,
                        }
                    )
            for arm in lift:
                c = compare(stats[control], stats[arm], tuning=tuning)
                if c["absolute"]["difference"] is not None:
                    lift[arm].append(
                        {
                            "labelled": labelled,
                            "difference": c["absolute"]["difference"],
                            **c["sequential"],
                        }
                    )
        return {
            "experiment": name,
            "control": control,
            "labelled": labelled,
            "lift": lift,
            "accuracy": accuracy,
        }

    def overview(self) -> list[dict[str, Any]]:
        """Each experiment's verdicts for the console's front page: live while it runs, the
        frozen report's once decided."""
        _, rows = store.list_definitions(self.db.sessions())
        entries = []
        for row in sorted(rows, key=lambda r: r.name):
            entry: dict[str, Any] = {
                "name": row.name,
                "status": row.status,
                "control": row.control,
                "decision": row.decision,
                "verdict": decision_line(row.decision) if row.decision else None,
            }
            try:
                body = row.report if row.decision and row.report else self.results(row.name)
            except Exception:  # one broken experiment must not take the console down
                log.exception("results of experiment %s failed", row.name)
                body = None
            entry["comparisons"] = (body or {}).get("comparisons", {})
            entry["available"] = body is not None
            entries.append(entry)
        return entries

    def stats(self, names: Iterable[str] = ()) -> dict[str, Any]:
        """``GET /api/v1/stats``: totals and per-requested-strategy outcomes (every strategy in
        ``names`` appears, with zeros before its first request); p50/p95 over each strategy's
        newest ``LATENCY_ROWS`` (10,000) successful requests."""
        session = self.db.sessions()
        by_strategy = rollups.strategy_outcomes(session)
        latencies = queries.strategy_latency_percentiles(session, LATENCY_ROWS)
        ordered = list(dict.fromkeys([*names, *sorted(by_strategy)]))
        body = {
            "total_predictions": rollups.total_predictions(session),
            "by_strategy": {
                name: _arm(by_strategy.get(name), latencies.get(name, {})) for name in ordered
            },
        }
        session.rollback()
        return body


def ab_compatible(results: Mapping[str, Any]) -> dict[str, Any]:
    """The first release's ``ab`` keys, kept for its clients, now from the unit-level comparison.

    ``difference`` (``boosting_minus_bagging``, ``ci_low``, ``ci_high``, ``z``), ``p_value`` and
    ``prob_boosting_better`` are ``comparisons["boosting"]``'s absolute difference, its 95%
    interval, statistic and p-value and its chance to win: the first release's pooled z-test on
    requests counted every request of a sticky client as independent evidence, which clustered
    traffic turns into false significance. Without client ids every request is its own unit and
    the numbers are the Welch test on the two proportions, which differs from the pooled z-test
    only in the variance (unpooled) and in using t rather than normal tails.
    ``samples_needed_per_arm`` is the comparison's, for ``mde``; ``srm_ok`` is the unit-level SRM.
    """
    c = results["comparisons"]["boosting"]
    absolute = c["absolute"]
    difference, se = absolute["difference"], absolute["se"]
    return {
        "difference": {
            "boosting_minus_bagging": difference,
            "ci_low": absolute["ci_low"],
            "ci_high": absolute["ci_high"],
            "z": difference / se if difference is not None and se else None,
        },
        "p_value": absolute["p_value"],
        "prob_boosting_better": c["chance_to_win"],
        "samples_needed_per_arm": c["samples_needed_per_arm"],
        "mde": results["mde"],
        "srm_ok": None if results["srm_p_value"] is None else not results["srm_detected"],
    }
