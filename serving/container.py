"""Wire the serving objects once per app (``create_app`` keeps them in ``app.extensions``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from serving import catalogue
from serving.deferred import DeferredRunner
from serving.definitions import DefinitionService
from serving.engine import ExperimentEngine
from serving.guardian import Guardian
from serving.metrics import Metrics
from serving.monitoring import DEFAULT_WINDOW, Monitor
from serving.recorder import Recorder
from serving.reports import Reports
from serving.service import ModelHolder, PredictionService
from serving.versions import Loader, ModelVersions, status_changers
from store.db import Store


@dataclass
class Services:
    """Everything the views call, built from the loaded models and the store."""

    models: ModelHolder
    db: Store
    engine: ExperimentEngine
    prediction: PredictionService
    definitions: DefinitionService
    reports: Reports
    guardian: Guardian
    metrics: Metrics
    monitor: Monitor
    versions: ModelVersions

    def catalogue(self) -> catalogue.Catalogue:
        """Built-in and created strategies as they stand now (cached by the engine's TTL)."""
        bundle = self.models.bundle
        if bundle is None:
            return catalogue.Catalogue.build(s.name for s in catalogue.BUILTIN_ENSEMBLES)
        snap = self.engine.snapshot()
        created = [
            catalogue.created(
                name,
                "ensemble",
                f"{facts['definition']['aggregation']} of "
                + ", ".join(m["model_id"] for m in facts["definition"]["models"]),
            )
            for name, facts in snap.ensembles.items()
            if name in snap.nodes
        ]
        created += [
            catalogue.created(
                name,
                "experiment",
                f"{live.router.kind} experiment over " + ", ".join(live.router.arms),
            )
            for name, live in snap.experiments.items()
            if not live.builtin
        ]
        return catalogue.Catalogue.build(bundle.ensembles, created)


def build_services(
    models: ModelHolder,
    db: Store,
    *,
    max_pixels: int,
    ttl: float = 1.0,
    inline_after: bool = False,
    decision_interval: float = 1.0,
    client_label_cap: int | None = None,
    monitor_window: int = DEFAULT_WINDOW,
    loader: Loader,
    artifact_root: Path,
) -> Services:
    """The prediction service, the definition service and the reports over one engine.

    ``inline_after`` runs shadows in the request that closes (tests, CLI) rather than on the
    process's background thread; ``decision_interval`` is how often (seconds) the guardian may
    evaluate one experiment in this process; ``client_label_cap`` is how many counted verdicts
    one client may contribute to one experiment (``CLIENT_LABEL_CAP``; None: no cap);
    ``loader`` loads a model version under ``artifact_root`` for activations."""
    metrics = Metrics()
    engine = ExperimentEngine(db, lambda: models.bundle, ttl=ttl)
    recorder = Recorder(db, client_label_cap=client_label_cap)
    deferred = DeferredRunner(inline=inline_after)
    definitions = DefinitionService(db=db, engine=engine, bundle=lambda: models.bundle)
    guardian = Guardian(
        db, definitions, interval=decision_interval, deferred=deferred, metrics=metrics
    )
    monitor = Monitor(
        db,
        lambda: models.bundle,
        window=monitor_window,
        deferred=deferred,
        on_drift=metrics.drift_checked,
    )

    def on_outcome(name: str | None) -> None:
        guardian.observe(name)
        monitor.observe(name)

    prediction = PredictionService(
        models=models,
        engine=engine,
        recorder=recorder,
        max_pixels=max_pixels,
        deferred=deferred,
        on_outcome=on_outcome,
        metrics=metrics,
    )
    reports = Reports(db, events=definitions.events)
    definitions.results = reports.results
    versions = ModelVersions(
        models,
        db,
        engine,
        loader,
        artifact_root,
        background=not inline_after,
        **status_changers(definitions, db),
    )
    return Services(
        models, db, engine, prediction, definitions, reports, guardian, metrics, monitor, versions
    )
