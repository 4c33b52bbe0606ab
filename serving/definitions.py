"""``DefinitionService``: ensembles and experiments as data — create, read, change, decide.

Every change is one store transaction that also writes an event (who, when, before/after), and
then invalidates this worker's engine cache; other workers follow within the engine's TTL.
Stacking meta-models and cascade thresholds of created ensembles are fitted here, at creation,
on the artifact's blend split (images no member trained on), never on test data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np

import store
from ensembles.bundle import EnsembleBundle
from ensembles.cascade import CHOSEN_ON, choose_threshold
from ensembles.composite import Node
from ensembles.stacking import tied_meta_model
from experiments.assignment import new_key
from experiments.routers import apply_patch, build_router, initial_state
from experiments.spec import SpecError, served_arms, shadow_arms
from serving import catalogue
from serving.engine import ExperimentEngine, build_created_node
from serving.errors import Conflict, InvalidRequest, NotFound, Unavailable
from serving.specs import parse_body
from store.db import Store
from store.errors import ConcurrentChangeError, DefinitionNotFound, NameTakenError

log = logging.getLogger(__name__)

#: Lifecycle verbs -> the status and decision word they leave behind.
DECISIONS = {"promote": "promoted", "rollback": "rolled_back", "stop": "stopped"}
_STATUS_AFTER = {"promote": "completed", "rollback": "rolled_back", "stop": "completed"}


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat(timespec="seconds") if value else None


def now() -> datetime:
    """Aware UTC now (one clock for decisions and events)."""
    return datetime.now(UTC)


class DefinitionService:
    """Creates and changes ensembles and experiments; views and the console call it."""

    def __init__(
        self,
        *,
        db: Store,
        engine: ExperimentEngine,
        bundle: Callable[[], EnsembleBundle | None],
        results: Callable[[str], dict[str, Any]] | None = None,
    ) -> None:
        self.db = db
        self.engine = engine
        self._bundle = bundle
        #: Computes an experiment's live results (frozen into the report at a decision).
        self.results = results

    def bundle(self) -> EnsembleBundle:
        """The serving bundle, or 503 while no model version is loaded."""
        bundle = self._bundle()
        if bundle is None:
            raise Unavailable("No model is loaded, so nothing can be created or changed now.")
        return bundle

    # -- built-ins ----------------------------------------------------------------------------
    def ensure_builtins(self, ab_split: float) -> None:
        """Create the first release's ``ab`` experiment once, with Boosting's share AB_SPLIT
        and its own secret assignment key."""
        from experiments.spec import ab_definition

        definition = ab_definition(ab_split)
        store.ensure_builtin_experiment(
            self.db.sessions(),
            catalogue.AB.name,
            definition=definition,
            router=definition["strategy"],
            state=initial_state(definition),
            control=definition["control"],
            assignment_key=new_key(),
        )

    # -- create / read / delete ---------------------------------------------------------------
    def known_models(self) -> list[str]:
        """Names a definition may use as a model: members, built-ins, created ensembles."""
        snap = self.engine.snapshot()
        bundle = self.bundle()
        created = [name for name in snap.ensembles if name in snap.nodes]
        return list(bundle.bank.names) + list(bundle.ensembles) + sorted(created)

    def create(self, body: Any, actor: str) -> dict[str, Any]:
        """Validate, fit what needs fitting, store; 400 on a bad field, 409 on a taken name."""
        self.engine.invalidate()
        snap = self.engine.snapshot()
        name = body.get("name") if isinstance(body, Mapping) else None
        if isinstance(name, str) and (name in snap.ensembles or name in snap.experiments):
            raise Conflict(f"The name {name!r} is taken; choose another or DELETE it first.")
        if isinstance(name, str) and store.experiment_events(self.db.sessions(), name, limit=1):
            # Predictions keep the name they were served under: a new definition with a
            # deleted one's name would inherit its traffic and its history.
            raise Conflict(
                f"The name {name!r} belonged to an ensemble or experiment that was deleted, and "
                "its records keep that name; choose another name."
            )
        parsed = parse_body(
            body,
            known=self.known_models(),
            reserved=catalogue.RESERVED_NAMES | frozenset(self.bundle().bank.names),
        )
        bundle = self.bundle()
        session = self.db.sessions()
        if parsed.kind == "ensemble":
            definition = self._fit(parsed.name, parsed.definition, snap.nodes, bundle)
            extra: dict[str, Any] = {}
        else:
            definition = parsed.definition
            state = initial_state(definition)
            key = new_key()  # the secret of its sticky assignment: stored, never shown
            build_router(definition, state, key=key)  # a definition that cannot route fails now
            extra = {
                "router": definition["strategy"],
                "state": state,
                "status": "running",
                "control": definition["control"],
                "assignment_key": key,
            }
        try:
            store.create_definition(
                session,
                kind=parsed.kind,
                name=parsed.name,
                definition=definition,
                actor=actor,
                model_version=bundle.version,
                **extra,
            )
        except NameTakenError as exc:
            raise Conflict(f"The name {parsed.name!r} is taken; choose another.") from exc
        self.engine.invalidate()
        log.info("%s created %s %s", actor, parsed.kind, parsed.name)
        return self.get(parsed.name)

    def _fit(
        self,
        name: str,
        definition: dict[str, Any],
        nodes: Mapping[str, Node],
        bundle: EnsembleBundle,
    ) -> dict[str, Any]:
        """Stacking's meta-model and a cascade's default threshold, fitted on the blend split."""
        aggregation = definition["aggregation"]
        needs_blend = aggregation == "stacking" or (
            aggregation == "cascade" and definition.get("threshold") is None
        )
        if not needs_blend:
            build_created_node(name, definition, nodes, bundle.classes)
            return definition
        blend = getattr(bundle, "blend", None)
        if blend is None:
            raise InvalidRequest(
                f"The loaded artifact has no blend-split predictions, so {aggregation} cannot be "
                "fitted here"
                + ("; give a threshold." if aggregation == "cascade" else "; retrain it."),
                field="aggregation",
            )
        outputs = dict(zip(blend.members, blend.probabilities, strict=True))
        node = build_created_node(name, definition, nodes, bundle.classes)
        child_probs = np.stack([child.evaluate(outputs).probabilities for child in node.children])
        labels = blend.labels
        accuracy = (child_probs.argmax(-1) == labels).mean(axis=1)
        fitted = dict(definition)
        if aggregation == "stacking":
            meta = tied_meta_model(child_probs, labels)
            fitted["meta"] = {
                "type": "tied logistic regression on log-probabilities",
                "coef": meta.coef.tolist(),
                "intercept": meta.intercept.tolist(),
                "child_accuracy": [round(float(a), 6) for a in accuracy],
                "fitted_on": f"blend split of {bundle.version} ({len(labels)} images)",
            }
        else:
            weights = np.asarray(node.weights, dtype=np.float64)
            fitted["threshold"], fitted["threshold_sweep"] = choose_threshold(
                child_probs, labels, weights
            )
            fitted["threshold_chosen_on"] = CHOSEN_ON
        return fitted

    def _row(self, name: str) -> Any:
        session = self.db.sessions()
        row = store.get_experiment(session, name) or store.get_ensemble(session, name)
        if row is None:
            raise NotFound(
                f"No ensemble or experiment is named {name[:64]!r}. GET "
                "/api/v1/inference/ensemble lists them."
            )
        return row

    def describe(self, row: Any) -> dict[str, Any]:
        """The stored definition plus kind, status and dates (the create answer's shape)."""
        out = dict(row.definition)
        out["kind"] = row.kind
        out["status"] = row.status
        out["created_at"] = _iso(row.created_at)
        out["created_by"] = row.created_by
        if row.kind == "experiment":
            out["control"] = row.control
            out["builtin"] = bool(row.builtin)
            out["shares"] = self.shares(row)
            if row.router == "canary":
                out["canary_progress"] = canary_progress(row)
            out["decision"] = row.decision
            out["revision"] = row.revision
            out["updated_at"] = _iso(row.updated_at)
            out["started_at"] = _iso(row.started_at)
            out["ended_at"] = _iso(row.ended_at)
        else:
            out["model_version"] = row.model_version
        return out

    def get(self, name: str) -> dict[str, Any]:
        """One definition by name, or 404."""
        return self.describe(self._row(name))

    def list(self) -> dict[str, list[dict[str, Any]]]:
        """Every created ensemble and every experiment (the built-in ``ab`` included)."""
        ensembles, experiments = store.list_definitions(self.db.sessions())
        return {
            "ensembles": [self.describe(r) for r in sorted(ensembles, key=lambda r: r.name)],
            "experiments": [self.describe(r) for r in sorted(experiments, key=lambda r: r.name)],
        }

    def delete(self, name: str, actor: str) -> None:
        """Delete a created ensemble or experiment; built-ins and models in use are refused."""
        row = self._row(name)
        if getattr(row, "builtin", False):
            raise Conflict(f"{name} is built in; stop it instead of deleting it.")
        users = self._users_of(name)
        if users:
            raise Conflict(f"{name} is used by {', '.join(users)}; delete or stop those first.")
        store.delete_definition(self.db.sessions(), name, actor)
        self.engine.invalidate()

    def _users_of(self, name: str) -> list[str]:
        """Created ensembles and running experiments that use ``name`` as a model."""
        ensembles, experiments = store.list_definitions(self.db.sessions())
        users = [
            r.name
            for r in ensembles
            if any(m["model_id"] == name for m in r.definition.get("models", []))
        ]
        users += [
            r.name
            for r in experiments
            if (r.status in ("running", "paused") and name in r.definition.get("models", []))
            or name in (r.control, (r.decision or {}).get("model"))  # a decided one serves it
        ]
        return sorted(users)

    # -- experiments --------------------------------------------------------------------------
    def shares(self, row: Any) -> dict[str, float] | None:
        """Each served arm's configured share of traffic now (None when the router adapts)."""
        if row.status != "running":
            target = (row.decision or {}).get("model") or row.control
            return {arm: float(arm == target) for arm in served_arms(row.definition)}
        try:
            return build_router(row.definition, row.state or {}).expected_shares()
        except Exception as exc:  # a definition this code cannot build is reported elsewhere
            log.warning(
                "experiment %s: shares unknown, its router does not build: %s", row.name, exc
            )
            return None

    def experiment(self, name: str) -> Any:
        """The experiment row, or 404 (an ensemble by that name is not an experiment)."""
        row = store.get_experiment(self.db.sessions(), name)
        if row is None:
            raise NotFound(
                f"No experiment is named {name[:64]!r}. GET /api/v1/experiments lists them."
            )
        return row

    def patch(self, name: str, body: Any, actor: str) -> dict[str, Any]:
        """``{"weights"}``, ``{"canary_percentage"}`` or ``{"status": paused|running}``."""
        row = self.experiment(name)
        if not isinstance(body, Mapping) or not body:
            raise InvalidRequest(
                'Send a JSON object with one of: {"weights": {model: w}}, '
                '{"canary_percentage": p}, {"status": "paused"|"running"}.',
                field="body",
            )
        if row.status in ("completed", "rolled_back"):
            raise Conflict(
                f"Experiment {name} is {row.status}; a decided experiment cannot change. "
                "Create a new one."
            )
        changes: dict[str, Any] = {}
        kind = "changed"
        status = body.get("status")
        if status is not None:
            if status not in ("paused", "running"):
                raise InvalidRequest(
                    'status must be "paused" or "running"; use /promote, /rollback or /stop '
                    "to end an experiment",
                    field="status",
                )
            if status != row.status:
                changes["status"] = status
                kind = "paused" if status == "paused" else "resumed"
        routing = {k: v for k, v in body.items() if k != "status" and v is not None}
        if routing:
            definition, state = apply_patch(row.definition, row.state or {}, routing)
            changes["definition"] = definition
            changes["state"] = state
            kind = "canary_changed" if "canary_percentage" in routing else "weights_changed"
        if not changes:
            return self.describe(row)
        self._update(name, row.revision, actor, kind, None, changes)
        return self.get(name)

    def decide(
        self,
        name: str,
        verb: str,
        actor: str,
        model: Any = None,
        reason: str | None = None,
        *,
        evidence: Mapping[str, Any] | None = None,
        outcome: str | None = None,
        revision: int | None = None,
    ) -> dict[str, Any]:
        """promote (a model), rollback (to the control) or stop: all traffic goes to one model.

        ``evidence`` (the numbers behind an automatic decision) is kept in the decision and its
        event; ``outcome`` overrides the decision word (a stop is ``inconclusive`` when the
        guardian ends a canary at ``max_samples``); ``revision`` makes it conditional on the row
        the caller evaluated, so a decision is never taken on numbers someone else overtook."""
        row = self.experiment(name)
        # The revision judged, kept now: building the report below ends this transaction, and
        # a revision re-read after it could be another worker's decision (two rollbacks).
        expected = row.revision
        if revision is not None and expected != revision:
            raise Conflict(f"Experiment {name} changed while it was being evaluated.")
        if row.builtin:
            raise Conflict(
                f"{name} is the built-in experiment of the first release and cannot end; pause "
                "it, or change its weights, instead."
            )
        if row.status in ("completed", "rolled_back"):
            raise Conflict(
                f"Experiment {name} is already {row.status} ({(row.decision or {}).get('status')})."
            )
        arms = served_arms(row.definition) + shadow_arms(row.definition)
        if verb == "promote":
            if model is None:
                raise InvalidRequest(
                    'Send {"model": <arm>} naming the arm to promote.', field="model"
                )
            if model not in arms:
                raise InvalidRequest(
                    f"model must be one of the experiment's models ({', '.join(arms)}); "
                    f"got {str(model)[:64]!r}",
                    field="model",
                )
            target = str(model)
        else:
            target = row.control
        started_at, at = row.started_at, now()
        decision: dict[str, Any] = {
            "status": outcome or DECISIONS[verb],
            "model": target,
            "reason": reason or f"{verb} by {actor}",
            "at": _iso(at),
            "by": actor,
        }
        if evidence:
            decision["evidence"] = dict(evidence)
        report = None
        if self.results is not None:
            report = self.results(name)
            report["status"] = _STATUS_AFTER[verb]
            report["decision"] = decision
            report["started_at"] = _iso(started_at)
            report["ended_at"] = _iso(at)
        changes = {
            "status": _STATUS_AFTER[verb],
            "decision": decision,
            "report": report,
            "ended_at": at,
        }
        self._update(name, expected, actor, decision["status"], decision["reason"], changes)
        return self.get(name)

    def change(
        self, name: str, revision: int, actor: str, kind: str, reason: str | None, changes: dict
    ) -> None:
        """A revision-checked change with its event (the guardian's ramp steps)."""
        self._update(name, revision, actor, kind, reason, changes)

    def _update(
        self, name: str, revision: int, actor: str, kind: str, reason: str | None, changes: dict
    ) -> None:
        try:
            store.update_experiment(
                self.db.sessions(),
                name,
                actor=actor,
                kind=kind,
                reason=reason,
                expected_revision=revision,
                **changes,
            )
        except ConcurrentChangeError as exc:
            raise Conflict(f"{exc}.") from exc
        except DefinitionNotFound as exc:
            raise NotFound(str(exc)) from exc
        self.engine.invalidate()
        log.info("%s: experiment %s %s", actor, name, kind)

    def events(self, name: str, limit: int = 200) -> list[dict[str, Any]]:
        """The experiment's history, newest first."""
        rows = store.experiment_events(self.db.sessions(), name, limit=limit)
        return [
            {
                "kind": e.kind,
                "actor": e.actor,
                "at": _iso(e.at),
                "at_time": e.at,
                "summary": change_summary(e.kind, e.before, e.after),
                "before": e.before,
                "after": e.after,
                "reason": e.reason,
            }
            for e in rows
        ]


def canary_progress(row: Any) -> float:
    """How far a canary has ramped: its share of traffic now over the most it may get (0 to 1);
    1 once promoted to the canary, 0 after a rollback or a stop (the value
    ``ensemble_canary_progress`` exports)."""
    definition = row.definition
    if row.status != "running" and row.status != "paused":
        won = (row.decision or {}).get("model") == definition.get("canary_model")
        return 1.0 if won else 0.0
    maximum = float(definition.get("max_percentage") or 100)
    return float(definition.get("canary_percentage") or 0) / maximum if maximum else 0.0


def _short(value: Any) -> str:
    """A compact rendering of an event value (weights as ``name=0.5``)."""
    if isinstance(value, dict):
        return ", ".join(f"{k}={_short(v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:.4g}"
    return "—" if value is None else str(value)


def change_summary(kind: str, before: Any, after: Any) -> str:
    """What an event changed, field by field, for people (the JSON keeps the full record)."""
    if before is None or after is None:
        return kind.replace("_", " ")
    parts = []
    for field in after:
        b, a = before.get(field), after.get(field)
        if field == "state" and "definition" in after:
            continue  # the definition already shows the new weights; state adds the ranges
        if isinstance(a, dict) and isinstance(b, dict):
            for key in a:
                if a.get(key) != b.get(key) and key != "segments":
                    parts.append(f"{key}: {_short(b.get(key))} → {_short(a.get(key))}")
        elif a != b and field not in ("report", "ended_at"):
            parts.append(f"{field}: {_short(b)} → {_short(a)}")
    return "; ".join(parts) or kind.replace("_", " ")


__all__ = ["DefinitionService", "SpecError"]
