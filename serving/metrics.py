"""Prometheus metrics: the definitions and the recording calls of the prediction path, Flask-free.

One ``Metrics`` per app (``serving.container`` builds it). In one process (tests, ``flask run``)
the metrics live in the app's own registry. Under gunicorn, ``gunicorn.conf.py`` points
``PROMETHEUS_MULTIPROC_DIR`` at a directory of this server's own before the app is imported, so
``prometheus_client`` keeps every worker's samples in files there and :func:`exposition` sums
them (``child_exit`` marks a dead worker's live gauges dead). Every label value is bounded: a
name from the artifact, the code or the definitions admins create, never a client's text.
Recording never raises: a metric that fails is logged and the prediction goes on.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ParamSpec

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

import store
from serving.errors import Conflict, InvalidRequest, NotFound, TooManyRequests, Unavailable
from store.models import Feedback, Prediction

log = logging.getLogger(__name__)

P = ParamSpec("P")

# ``*_created`` series exist only in-process (multiprocess mode has none): drop them, so a scrape
# looks the same under gunicorn and in tests.
disable_created_metrics()

#: Where prometheus_client's multiprocess mode keeps the workers' files (set by gunicorn.conf.py).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Labelled verdicts per model that ``ensemble_model_accuracy`` is taken over (newest first).
ACCURACY_WINDOW = 300
#: Milliseconds, as the router spec names the latency metric.
LATENCY_BUCKETS_MS = (5, 10, 25, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 2000, 5000)
HTTP_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
AGREEMENT_BUCKETS = (0.2, 0.4, 0.5, 0.6, 0.8, 0.9, 1.0)
#: HTTP methods kept as label values; anything else a client invents is "OTHER".
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: Errors that mean the request was bad (4xx); a bad upload (``PreprocessError``) carries its own
#: 4xx ``status_code``.
REJECTED_ERRORS: tuple[type[BaseException], ...] = (
    InvalidRequest,
    NotFound,
    Conflict,
    TooManyRequests,
)


def multiprocess_dir() -> str | None:
    """The multiprocess directory when running under gunicorn.conf.py, else None (in-process)."""
    return os.environ.get(MULTIPROC_ENV) or None


def never_raises(method: Callable[P, None]) -> Callable[P, None]:
    """Metrics must never break a prediction: log a failure to record, do not raise it."""

    @functools.wraps(method)
    def safe(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            method(*args, **kwargs)
        except Exception:
            log.warning("metrics: recording %s failed; carrying on", method.__name__, exc_info=True)

    return safe


def fallback_kind(reason: str) -> str:
    """A bounded label for stacking's free-text fallback reason (it may quote an exception)."""
    if reason.startswith("member(s)"):
        return "member_failed"
    if reason.startswith("meta-model raised"):
        return "meta_model_error"
    if "not a finite probability distribution" in reason:
        return "meta_model_invalid_output"
    return "meta_model_unavailable"


def prediction_status(error: BaseException) -> str:
    """``rejected`` (the request was bad: 4xx), ``unavailable`` (503) or ``error``."""
    status_code = getattr(error, "status_code", None)
    if isinstance(error, REJECTED_ERRORS) or (isinstance(status_code, int) and status_code < 500):
        return "rejected"
    if isinstance(error, Unavailable):
        return "unavailable"
    return "error"


class Metrics:
    """Every Chorus metric, registered in one registry, with the calls that record them."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._version: tuple[int, str] | None = None
        r = self.registry
        self.routing_decisions = Counter(
            "ensemble_routing_decisions",
            "Requests an experiment routed, by experiment, router strategy and the model served.",
            ["experiment", "strategy", "model"],
            registry=r,
        )
        self.model_latency = Histogram(
            "ensemble_model_latency_ms",
            "Prediction latency in milliseconds (ms, not seconds: the router spec's unit), "
            "upload decoding to answer, per served ensemble or experiment arm.",
            ["model"],
            buckets=LATENCY_BUCKETS_MS,
            registry=r,
        )
        self.model_accuracy = Gauge(
            "ensemble_model_accuracy",
            f"Share of correct answers among each model's last {ACCURACY_WINDOW} labelled "
            "predictions (feedback), refreshed at each scrape.",
            ["model"],
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.canary_progress = Gauge(
            "ensemble_canary_progress",
            "How far a canary experiment has ramped: its traffic share over its maximum "
            "(0 to 1; 1 once promoted, 0 after a rollback).",
            ["experiment"],
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.predictions = Counter(
            "ensemble_predictions",
            "Predictions by requested strategy and outcome (ok, rejected: a bad request, "
            "unavailable: no model or the ensemble failed, error); an inference-protocol batch "
            "counts once per image, answered or failed.",
            ["strategy", "status"],
            registry=r,
        )
        self.errors = Counter(
            "ensemble_prediction_errors",
            "Failed predictions by requested strategy and error type; a failed "
            "inference-protocol batch counts once per image it carried.",
            ["strategy", "error"],
            registry=r,
        )
        self.fallbacks = Counter(
            "ensemble_fallbacks",
            "Answers given by a fallback member instead of the stacking meta-model, by reason.",
            ["model", "reason"],
            registry=r,
        )
        self.dropped_members = Counter(
            "ensemble_dropped_members",
            "Members dropped from an answer (failed or non-finite output: a degraded answer).",
            ["model", "member"],
            registry=r,
        )
        self.member_agreement = Histogram(
            "ensemble_member_agreement_ratio",
            "Share of an answer's members whose own vote is the ensemble's answer.",
            ["model"],
            buckets=AGREEMENT_BUCKETS,
            registry=r,
        )
        self.guardrail_breaches = Counter(
            "ensemble_guardrail_breaches",
            "Guardrails found breached (with statistical confidence) when the guardian rolled an "
            "experiment back, by experiment, arm and guardrail metric.",
            ["experiment", "arm", "metric"],
            registry=r,
        )
        self.rollbacks = Counter(
            "ensemble_rollbacks",
            "Experiments the guardian rolled back to their control (reason: guardrail or canary).",
            ["experiment", "reason"],
            registry=r,
        )
        self.decisions = Counter(
            "ensemble_experiment_decisions",
            "Changes the guardian applied: promote, rollback, step (canary ramp), inconclusive.",
            ["experiment", "action"],
            registry=r,
        )
        self.drift_p_value = Gauge(
            "ensemble_drift_p_value",
            "Drift test p-value of a model's recent traffic against its training reference, "
            "by feature (Bonferroni-corrected).",
            ["model", "feature"],
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.drift_detected = Gauge(
            "ensemble_drift_detected",
            "1 while the newest drift check found drift (any test under its corrected level).",
            [],
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.http_duration = Histogram(
            "ensemble_http_request_duration_seconds",
            "HTTP request duration in seconds by Flask endpoint, method and status code.",
            ["endpoint", "method", "status"],
            buckets=HTTP_BUCKETS_S,
            registry=r,
        )
        self.version_info = Gauge(
            "ensemble_model_version_info",
            "The model version (artifact) live workers serve: 1 while any live worker serves it.",
            ["version"],
            multiprocess_mode="livemax",
            registry=r,
        )

    # -- recording -----------------------------------------------------------------------------
    @never_raises
    def routed(self, experiment: str, router: str, model: str) -> None:
        """An experiment's router sent a request to ``model`` (counted whatever came of it)."""
        self.routing_decisions.labels(experiment, router, model).inc()

    @never_raises
    def served(self, *, strategy: str, model: str, version: str, body: Mapping[str, Any]) -> None:
        """One answered prediction: its latency, fallback, dropped members, member agreement."""
        self.serving_version(version)
        self.predictions.labels(strategy, "ok").inc()
        self.model_latency.labels(model).observe(float(body["latency_ms"]))
        fallback = body.get("fallback")
        if fallback:
            self.fallbacks.labels(model, fallback_kind(str(fallback.get("reason", "")))).inc()
        for member in body.get("degraded") or ():
            self.dropped_members.labels(model, member).inc()
        votes = body.get("members") or []
        if votes:
            agreeing = sum(1 for vote in votes if vote.get("label") == body["label"])
            self.member_agreement.labels(model).observe(agreeing / len(votes))

    @never_raises
    def failed(self, strategy: str | None, error: BaseException, images: int = 1) -> None:
        """A prediction request that ended in an error (``strategy`` None: not a known name);
        a failed batch counts each of its ``images``, as an answered one counts each answer."""
        label = strategy or "unknown"
        self.predictions.labels(label, prediction_status(error)).inc(images)
        self.errors.labels(label, type(error).__name__).inc(images)

    @never_raises
    def decided(self, experiment: str, action: str, evidence: Mapping[str, Any]) -> None:
        """The guardian applied a verdict; a rollback counts its breached guardrails."""
        self.decisions.labels(experiment, action).inc()
        if action != "rollback":
            return
        checks = [c for c in evidence.get("checks") or () if c.get("breached")]
        self.rollbacks.labels(experiment, "guardrail" if checks else "canary").inc()
        for check in checks:
            self.guardrail_breaches.labels(
                experiment, str(check.get("arm")), str(check.get("metric"))
            ).inc()

    @never_raises
    def drift_checked(self, found: Mapping[str, Any]) -> None:
        """A drift check's outcome (``serving.monitoring``): each test's p-value, and the alarm.

        Input statistics are tests of every model's traffic (``model="inputs"``); a test named
        ``confidence[bagging]`` is ``feature="confidence"`` of ``model="bagging"``."""
        judged = found.get("detected") is not None  # null: too few predictions to judge
        for test in found.get("tests") or ():
            if not judged or test.get("p_value") is None:
                continue
            feature, _, model = str(test["feature"]).partition("[")
            self.drift_p_value.labels(model.rstrip("]") or "inputs", feature).set(test["p_value"])
        self.drift_detected.set(1 if found.get("detected") else 0)

    @never_raises
    def http_request(self, endpoint: str | None, method: str, status: int, seconds: float) -> None:
        """One HTTP request, labelled by its endpoint name (never the raw path: bounded)."""
        method = method.upper() if method.upper() in HTTP_METHODS else "OTHER"
        self.http_duration.labels(endpoint or "unmatched", method, str(status)).observe(seconds)

    @never_raises
    def serving_version(self, version: str) -> None:
        """Mark ``version`` as what this process serves (the old one, if any, goes to 0)."""
        pid = os.getpid()
        if self._version == (pid, version):
            return
        if self._version is not None and self._version[0] == pid:
            self.version_info.labels(self._version[1]).set(0)
        self.version_info.labels(version).set(1)
        self._version = (pid, version)

    @never_raises
    def refresh(
        self, session: Session, version: str | None = None, window: int = ACCURACY_WINDOW
    ) -> None:
        """Gauges read from the database at scrape time: accuracy per model, canary progress."""
        from serving.definitions import canary_progress  # the ensembles stack: only when scraped

        if version is not None:
            self.serving_version(version)
        for model, accuracy in recent_accuracy(session, window).items():
            self.model_accuracy.labels(model).set(accuracy)
        _, experiments = store.list_definitions(session)
        for row in experiments:
            if row.router == "canary":
                self.canary_progress.labels(row.name).set(canary_progress(row))
        session.rollback()  # end the read transaction: hold no snapshot between scrapes

    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text of every worker (multiprocess) or of this registry, and its type."""
        return generate_latest(scrape_registry(self.registry)), CONTENT_TYPE_LATEST

    def names(self) -> set[str]:
        """Every sample name this app may export (``_total``, ``_bucket``, ... included)."""
        return set(sample_names(self.registry))


def scrape_registry(registry: CollectorRegistry) -> CollectorRegistry:
    """What a scrape reads: all workers' files under gunicorn, else the app's own registry."""
    path = multiprocess_dir()
    if path is None:
        return registry
    merged = CollectorRegistry()
    MultiProcessCollector(merged, path=path)
    return merged


def sample_names(registry: CollectorRegistry) -> Iterable[str]:
    """Names of the series a registry's metrics produce, children or not."""
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_count", "_sum"),
        "gauge": ("",),
    }
    for family in registry.collect():
        for suffix in suffixes.get(family.type, ("",)):
            yield family.name + suffix


def recent_accuracy(session: Session, window: int = ACCURACY_WINDOW) -> dict[str, float]:
    """Accuracy of each served model over its newest ``window`` effective verdicts (feedback)."""
    newest = func.row_number().over(
        partition_by=Prediction.arm, order_by=(Feedback.created_at.desc(), Feedback.id.desc())
    )
    ranked = (
        select(
            Prediction.arm.label("arm"),
            Feedback.correct.label("correct"),
            newest.label("rank"),
        )
        .join(Feedback, Feedback.prediction_id == Prediction.id)
        .where(Prediction.shadow_of.is_(None), Prediction.error.is_(None))
        .subquery()
    )
    correct = func.sum(case((ranked.c.correct.is_(True), 1), else_=0))
    query = (
        select(ranked.c.arm, func.count(), correct)
        .where(ranked.c.rank <= window)
        .group_by(ranked.c.arm)
    )
    return {
        arm: int(right) / int(labelled)
        for arm, labelled, right in session.execute(query)
        if labelled
    }


def mark_worker_dead(pid: int) -> None:
    """gunicorn's ``child_exit``: drop a dead worker's live gauges from the sums."""
    path = multiprocess_dir()
    if path is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, path)
