"""The guardian: evaluates running experiments as outcomes arrive and applies the decisions.

After each recorded prediction or verdict the prediction service calls :meth:`Guardian.observe`
with the experiment's name; at most once per ``interval`` per experiment and worker, the
guardian gathers each arm's numbers from the store, asks ``experiments.decisions.evaluate`` and
acts: a guardrail breach or a losing canary rolls the experiment back to its control, a winning
canary is promoted, a canary that has earned it ramps up one step, one past ``max_samples``
stops as inconclusive. Changes go through ``DefinitionService`` (one transaction with an event,
revision-checked), so when two workers decide at once one wins and the other sees a conflict and
does nothing; every worker follows within the engine's one-second cache.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import store
from experiments.decisions import ArmInputs, Verdict, evaluate
from experiments.routers import apply_patch
from experiments.spec import served_arms
from serving.deferred import DeferredRunner
from serving.definitions import DefinitionService
from serving.errors import Conflict, NotFound
from serving.metrics import Metrics
from serving.reports import routed_inputs
from store.db import Store

log = logging.getLogger(__name__)

ACTOR = "guardian"


@dataclass(frozen=True)
class Evaluated:
    """The experiment row as it was when its numbers were judged."""

    name: str
    revision: int
    control: str
    definition: dict[str, Any]
    state: dict[str, Any]


class Guardian:
    """Applies guardrails, canary promotion and ramp steps to running experiments."""

    def __init__(
        self,
        db: Store,
        definitions: DefinitionService,
        *,
        interval: float = 1.0,
        deferred: DeferredRunner | None = None,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        self.db = db
        self.metrics = metrics or Metrics()
        self.definitions = definitions
        self.interval = interval
        self.deferred = deferred or DeferredRunner(inline=True)
        self.clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}

    def observe(self, name: str | None) -> None:
        """An outcome of ``name`` arrived: evaluate it soon, at most once per interval."""
        if not name:
            return
        now = self.clock()
        with self._lock:
            if now - self._last.get(name, -float("inf")) < self.interval:
                return
            self._last[name] = now
        self.deferred.submit(lambda: self.check(name))

    def check(self, name: str) -> Verdict | None:
        """Evaluate one experiment now and apply the verdict; never raises (logs instead)."""
        try:
            return self._check(name)
        except Exception:
            log.exception("guardian: evaluating experiment %s failed", name)
            return None

    def _check(self, name: str) -> Verdict | None:
        session = self.db.sessions()
        session.rollback()  # a fresh transaction: never judge a row another worker overtook
        session.expire_all()
        row = store.get_experiment(session, name)
        if row is None or row.status != "running" or row.builtin:
            return None
        # What was evaluated, copied out now: after the rollback below the row's attributes
        # would reload, and a revision read then could already be another worker's decision.
        seen = Evaluated(
            name, row.revision, row.control, dict(row.definition), dict(row.state or {})
        )
        definition = seen.definition
        arms = routed_inputs(session, name, definition)
        session.rollback()
        for arm in served_arms(definition):
            arms.setdefault(arm, ArmInputs())
        verdict, _ = evaluate(definition, seen.control, arms)
        if verdict.action is None:
            return verdict
        try:
            self._apply(seen, verdict)
        except (Conflict, NotFound) as exc:  # another worker decided first, or it was deleted
            log.info("guardian: %s on %s not applied: %s", verdict.action, name, exc)
            return None
        self.metrics.decided(name, verdict.action, verdict.evidence)
        return verdict

    def _apply(self, row: Evaluated, verdict: Verdict) -> None:
        name = row.name
        if verdict.action == "step":
            definition, state = apply_patch(
                row.definition, row.state, {"canary_percentage": verdict.percentage}
            )
            definition.setdefault("initial_canary_percentage", row.definition["canary_percentage"])
            self.definitions.change(
                name,
                row.revision,
                ACTOR,
                "canary_stepped",
                verdict.reason,
                {"definition": definition, "state": state},
            )
            log.info("experiment %s: %s", name, verdict.reason)
            return
        verb = {"rollback": "rollback", "promote": "promote", "inconclusive": "stop"}[
            verdict.action
        ]
        if verdict.action == "rollback" and "checks" in verdict.evidence:
            log.warning("experiment %s rolled back by its guardrails: %s", name, verdict.reason)
        else:
            log.info("experiment %s: %s (%s)", name, verdict.action, verdict.reason)
        self.definitions.decide(
            name,
            verb,
            ACTOR,
            model=verdict.model,
            reason=verdict.reason,
            evidence=verdict.evidence,
            outcome="inconclusive" if verdict.action == "inconclusive" else None,
            revision=row.revision,
        )
