"""The experiment engine: definitions from the database, routers built from them, per worker.

Ensembles and experiments are rows, so every worker and every instance must follow a change.
The engine re-reads the definitions at most once a second (``ttl``) and rebuilds only what
changed (by revision); bandit rewards and latency medians are read on the same clock. A change
made through this worker is seen at once (``invalidate``).
"""

from __future__ import annotations

import logging
import os
import random
import statistics
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import store
from ensembles.bundle import EnsembleBundle
from ensembles.composite import BuiltinNode, CombinedNode, MemberNode, Node
from ensembles.stacking import MetaModel
from experiments.routers import ArmStats, Route, Router, RoutingContext, build_router
from serving.errors import Unavailable
from store.db import Store

log = logging.getLogger(__name__)

#: Statuses in which the router decides; otherwise traffic goes to the decided model.
RUNNING = "running"


class MissingModelError(LookupError):
    """A definition names a model the loaded artifact does not have."""


@dataclass
class LiveExperiment:
    """One experiment as this worker currently knows it."""

    name: str
    definition: dict[str, Any]
    state: dict[str, Any]
    status: str
    control: str
    decision: dict[str, Any] | None
    revision: int
    router: Router
    builtin: bool = False

    @property
    def serving_model(self) -> str | None:
        """Where all traffic goes when the router is not deciding (paused or decided)."""
        if self.status == RUNNING:
            return None
        if self.decision and self.decision.get("model"):
            return str(self.decision["model"])
        return self.control


@dataclass
class Snapshot:
    """Definitions read at ``at``: nodes for every model name, experiments by name."""

    at: float
    version: str
    nodes: dict[str, Node]
    ensembles: dict[str, dict[str, Any]]  # created ensembles: name -> row facts
    experiments: dict[str, LiveExperiment]
    broken: dict[str, str] = field(default_factory=dict)  # name -> why it cannot be served
    #: The bundle these nodes were built from: a request uses it throughout, so a version
    #: swapped in mid-request never mixes two versions' members in one answer.
    bundle: EnsembleBundle | None = None


def builtin_nodes(bundle: EnsembleBundle) -> dict[str, Node]:
    """Members and built-in ensembles, by the names a definition may use."""
    nodes: dict[str, Node] = {
        name: MemberNode(name=name, classes=bundle.classes) for name in bundle.bank.names
    }
    for name, ensemble in bundle.ensembles.items():
        nodes[name] = BuiltinNode(ensemble, name=name)
    return nodes


def build_created_node(
    name: str, definition: Mapping[str, Any], nodes: Mapping[str, Node], classes: tuple[str, ...]
) -> CombinedNode:
    """A created ensemble over models already built (members, built-ins, earlier creations)."""
    children = []
    for entry in definition["models"]:
        child = nodes.get(entry["model_id"])
        if child is None:
            raise MissingModelError(f"model {entry['model_id']!r} is not in the loaded artifact")
        children.append(child)
    meta = definition.get("meta") or {}
    return CombinedNode(
        name=name,
        classes=classes,
        children=children,
        aggregation=definition["aggregation"],
        weights=np.array([float(m["weight"]) for m in definition["models"]]),
        meta=(
            MetaModel(coef=np.asarray(meta["coef"]), intercept=np.asarray(meta["intercept"]))
            if meta.get("coef") is not None
            else None
        ),
        child_accuracy=meta.get("child_accuracy", [1.0] * len(children)),
        threshold=float(definition.get("threshold") or 1.0),
    )


class ExperimentEngine:
    """Routes requests of experiments and resolves every model name to a node."""

    def __init__(
        self,
        db: Store,
        bundle: Callable[[], EnsembleBundle | None],
        ttl: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.db = db
        self._bundle = bundle
        self.ttl = ttl
        self.clock = clock
        self.rng = rng or random.Random()
        if rng is None and hasattr(os, "register_at_fork"):
            # Forked workers (gunicorn preload) must not repeat each other's draws.
            os.register_at_fork(after_in_child=self.rng.seed)
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._routers: dict[tuple[str, int], Router] = {}
        self._stats: dict[str, tuple[float, dict[str, ArmStats]]] = {}
        #: Bumped by ``invalidate``: a stats read begun before it must not be cached after it.
        self._generation = 0

    # -- definitions -------------------------------------------------------------------------
    def invalidate(self) -> None:
        """Forget the cached definitions, so the next request reads them again."""
        with self._lock:
            self._snapshot = None
            self._stats.clear()
            self._generation += 1

    def snapshot(self) -> Snapshot:
        """The definitions, read again when older than ``ttl`` or the model version changed."""
        bundle = self._bundle()
        if bundle is None:
            raise Unavailable("No model is loaded, so no ensemble or experiment can answer.")
        now = self.clock()
        current = self._snapshot
        if self._fresh(current, now, bundle.version):
            return current  # type: ignore[return-value]
        with self._lock:
            current = self._snapshot
            if not self._fresh(current, now, bundle.version):
                current = self._read(bundle, now)
                self._snapshot = current
            return current  # type: ignore[return-value]

    def _fresh(self, snapshot: Snapshot | None, now: float, version: str) -> bool:
        return snapshot is not None and now - snapshot.at < self.ttl and snapshot.version == version

    def _read(self, bundle: EnsembleBundle, now: float) -> Snapshot:
        # A session of its own, closed at once (no read transaction held between requests):
        # ending the request's session instead would expire what the request has loaded, such
        # as the prediction a result page is rendering. Closing keeps the rows' loaded values.
        with self.db.sessions.session_factory() as session:
            ensemble_rows, experiment_rows = store.list_definitions(session)
        nodes = builtin_nodes(bundle)
        ensembles: dict[str, dict[str, Any]] = {}
        broken: dict[str, str] = {}
        # Created ensembles may use earlier ones: build in creation order until nothing moves.
        for row in sorted(ensemble_rows, key=lambda r: (r.created_at, r.name)):
            ensembles[row.name] = {
                "status": row.status,
                "definition": row.definition,
                "created_at": row.created_at,
                "model_version": row.model_version,
            }
            if row.status != "active":
                broken[row.name] = f"ensemble {row.name} is {row.status}"
                continue
            try:
                nodes[row.name] = build_created_node(
                    row.name, row.definition, nodes, bundle.classes
                )
            except (MissingModelError, KeyError, ValueError) as exc:
                broken[row.name] = f"ensemble {row.name} cannot be served: {exc}"
                log.warning("%s", broken[row.name])
        experiments = {}
        for row in experiment_rows:
            key = (row.name, row.revision)
            router = self._routers.get(key)
            if router is None:
                try:
                    router = build_router(row.definition, row.state or {}, key=row.assignment_key)
                except Exception as exc:  # a stored definition this code cannot build
                    broken[row.name] = f"experiment {row.name} cannot be routed: {exc}"
                    log.exception("experiment %s: router build failed", row.name)
                    continue
                self._routers = {k: v for k, v in self._routers.items() if k[0] != row.name}
                self._routers[key] = router
            experiments[row.name] = LiveExperiment(
                name=row.name,
                definition=row.definition,
                state=row.state or {},
                status=row.status,
                control=row.control,
                decision=row.decision,
                revision=row.revision,
                router=router,
                builtin=bool(row.builtin),
            )
        return Snapshot(now, bundle.version, nodes, ensembles, experiments, broken, bundle)

    # -- routing -----------------------------------------------------------------------------
    def _arm_stats(self, experiment: LiveExperiment) -> dict[str, ArmStats]:
        """Rewards or latency medians per arm, read at most once per ``ttl``."""
        kind = experiment.router.needs_stats
        if kind is None:
            return {}
        now = self.clock()
        cached = self._stats.get(experiment.name)
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1]
        generation = self._generation
        definition = experiment.definition
        with self.db.sessions.session_factory() as session:  # as in _read
            if kind == "reward":
                window = int(definition.get("reward_window", 1000))
                counts = store.reward_window(session, experiment.name, window)
                stats = {arm: ArmStats(labelled=n, correct=k) for arm, (n, k) in counts.items()}
            else:
                window = int(definition.get("latency_window", 200))
                latencies = store.latency_window(session, experiment.name, window)
                stats = {
                    arm: ArmStats(
                        latency_median_ms=statistics.median(values) if values else None,
                        latency_samples=len(values),
                    )
                    for arm, values in latencies.items()
                }
        with self._lock:
            if generation == self._generation:  # else invalidated meanwhile: the read is old
                self._stats[experiment.name] = (now, stats)
        return stats

    def route(
        self,
        experiment: LiveExperiment,
        client_id: str | None,
        features: Mapping[str, Any],
    ) -> Route:
        """The arm (and shadows) for one request of ``experiment``."""
        fixed = experiment.serving_model
        if fixed is not None:
            return Route(arm=fixed, reason=experiment.status)
        router = experiment.router
        ticket = None
        if router.needs_ticket and not (router.sticky and client_id):
            session = self.db.sessions()
            ticket = store.next_ticket(session, experiment.name)
        context = RoutingContext(
            client_id=client_id,
            features=features,
            rng=self.rng,
            stats=self._arm_stats(experiment),
            ticket=ticket,
        )
        return router.route(context)
