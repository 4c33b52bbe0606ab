"""``PredictionService``: one image in, one recorded answer out, for pages, API and CLI alike.

preprocess -> resolve the strategy (ensemble, or experiment -> router -> arm) -> one batched
forward -> record one row -> the contract body. Shadows run later, when the caller invokes
``Served.run_after`` (the views do so after the response is sent). Errors come out typed:
``PreprocessError`` for a bad upload, ``serving.errors`` for the rest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ensembles.base import EnsembleError, Result
from ensembles.bundle import EnsembleBundle
from ensembles.composite import Node, predict_node
from experiments.assignment import hash_client_id
from models.preprocess import DEFAULT_MAX_PIXELS, Preprocessed, analyse
from models.tensor import to_tensor
from serving.contract import STORED_FIELDS, prediction_body
from serving.deferred import DeferredRunner
from serving.engine import ExperimentEngine, LiveExperiment
from serving.errors import Conflict, InvalidRequest, NotFound, TooManyRequests, Unavailable
from serving.recorder import Recorder
from store.feedback import FeedbackLimitReached, Verdict
from store.models import new_id

log = logging.getLogger(__name__)

MAX_CLIENT_ID_LENGTH = 200
MAX_FEATURES = 32
MAX_FEATURE_TEXT = 200
MAX_FEATURES_TEXT = 4096
_FEATURE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
#: A class index written as text: a few ASCII digits.
_INDEX_TEXT = re.compile(r"[0-9]{1,4}")
_PREDICTION_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class ModelHolder:
    """The bundle this process serves, or why it has none."""

    bundle: EnsembleBundle | None
    error: str | None = None


@dataclass
class Served:
    """A served prediction: the contract body, the 28x28 canvas, and work for after the answer."""

    body: dict[str, Any]
    canvas: np.ndarray
    after: list[Callable[[], None]] = field(default_factory=list)
    runner: DeferredRunner | None = None

    def run_after(self) -> None:
        """Hand the deferred work (shadow arms) over, once the answer is out; never raises."""
        runner = self.runner or DeferredRunner(inline=True)
        for job in self.after:
            runner.submit(job)
        self.after.clear()


def parse_features(raw: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """The request's own ``features``: a flat JSON object of scalars, for feature rules."""
    if raw is None or raw == "":
        return {}
    if isinstance(raw, str):
        if len(raw) > MAX_FEATURES_TEXT:
            raise InvalidRequest(
                f"features is longer than {MAX_FEATURES_TEXT} characters", field="features"
            )
        try:
            raw = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise InvalidRequest(
                f'features must be a JSON object as text, e.g. {{"segment": "enterprise"}} ({exc})',
                field="features",
            ) from None
    if not isinstance(raw, Mapping):
        raise InvalidRequest(
            'features must be a JSON object, e.g. {"segment": "enterprise"}', field="features"
        )
    if len(raw) > MAX_FEATURES:
        raise InvalidRequest(f"features may hold at most {MAX_FEATURES} keys", field="features")
    clean: dict[str, Any] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not _FEATURE_KEY.fullmatch(key):
            raise InvalidRequest(
                f"features key {str(key)[:70]!r} must be a name of letters, digits and _",
                field="features",
            )
        if isinstance(value, str) and len(value) > MAX_FEATURE_TEXT:
            raise InvalidRequest(
                f"features.{key} is longer than {MAX_FEATURE_TEXT} characters", field="features"
            )
        if not (value is None or isinstance(value, str | bool | int | float)):
            raise InvalidRequest(
                f"features.{key} must be a string, number, boolean or null", field="features"
            )
        if isinstance(value, float) and not np.isfinite(value):
            raise InvalidRequest(f"features.{key} must be a finite number", field="features")
        clean[key] = value
    return clean


def check_client_id(client_id: str | None) -> str | None:
    """Blank means anonymous; overly long ids are refused rather than silently truncated."""
    if client_id is None or not client_id.strip():
        return None
    if len(client_id) > MAX_CLIENT_ID_LENGTH:
        raise InvalidRequest(
            f"client_id is longer than {MAX_CLIENT_ID_LENGTH} characters.", field="client_id"
        )
    return client_id


def parse_label(value: Any, classes: tuple[str, ...]) -> int:
    """A class name (any case) or index -> index; anything else is a 400 listing the classes."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(classes):
        return value
    if isinstance(value, str):
        text = value.strip()
        # ASCII digits only, and short: str.isdigit() accepts "²", which int() then refuses.
        if _INDEX_TEXT.fullmatch(text) and int(text) < len(classes):
            return int(text)
        lowered = [name.lower() for name in classes]
        if text.lower() in lowered:
            return lowered.index(text.lower())
    raise InvalidRequest(
        f'"label" must be a class name or an index 0-{len(classes) - 1}; the classes are: '
        + ", ".join(classes)
        + ".",
        field="label",
    )


def _milliseconds(started: float) -> float:
    return round((time.perf_counter() - started) * 1000.0, 3)


class PredictionService:
    """The data plane: predictions and feedback, with every collaborator given up front."""

    def __init__(
        self,
        *,
        models: ModelHolder,
        engine: ExperimentEngine,
        recorder: Recorder,
        preprocess: Callable[[bytes, int], Preprocessed] = analyse,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        deferred: DeferredRunner | None = None,
        on_outcome: Callable[[str | None], None] | None = None,
    ) -> None:
        self.models = models
        #: Told the experiment (or None) of every recorded outcome: the guardian's trigger.
        self.on_outcome = on_outcome or (lambda name: None)
        self.engine = engine
        self.recorder = recorder
        self.preprocess = preprocess
        self.max_pixels = max_pixels
        self.deferred = deferred or DeferredRunner(inline=True)

    def bundle(self) -> EnsembleBundle:
        """The loaded ensembles, or a 503 saying why there are none."""
        if self.models.bundle is None:
            raise Unavailable(
                f"No model is loaded ({self.models.error}). Ask the operator to train or install "
                "an artifact (make train) and restart the service."
            )
        return self.models.bundle

    def strategies(self) -> tuple[str, ...]:
        """Every name a client may ask for now: built-in and created ensembles, experiments."""
        snap = self.engine.snapshot()
        bundle = self.bundle()
        created = [n for n in snap.ensembles if n in snap.nodes]
        return tuple(bundle.ensembles) + tuple(snap.experiments) + tuple(sorted(created))

    def _target(self, strategy: str | None) -> tuple[Node | None, LiveExperiment | None]:
        if not strategy:
            raise InvalidRequest(
                f'"strategy" is required: choose one of {", ".join(self.strategies())}.',
                field="strategy",
            )
        snap = self.engine.snapshot()
        if strategy in snap.experiments:
            return None, snap.experiments[strategy]
        if strategy in snap.broken:
            raise Conflict(f"{snap.broken[strategy]}. Choose another strategy.", field="strategy")
        created_or_builtin = strategy in snap.ensembles or strategy in self.bundle().ensembles
        if created_or_builtin and strategy in snap.nodes:
            return snap.nodes[strategy], None
        raise InvalidRequest(
            f"Unknown strategy {strategy[:40]!r}: choose one of {', '.join(self.strategies())}.",
            field="strategy",
        )

    def predict(
        self,
        data: bytes,
        strategy: str | None,
        client_id: str | None = None,
        features: Mapping[str, Any] | str | None = None,
    ) -> Served:
        """Classify one uploaded image with the requested strategy and record the outcome."""
        client_id = check_client_id(client_id)
        user_features = parse_features(features)
        bundle = self.bundle()
        node, experiment = self._target(strategy)
        started = time.perf_counter()
        pre = self.preprocess(data, self.max_pixels)
        request_features = {**user_features, **pre.features}
        route = None
        if experiment is not None:
            route = self.engine.route(experiment, client_id, request_features)
            node = self.engine.snapshot().nodes.get(route.arm)
            if node is None:
                raise Unavailable(
                    f"Experiment {experiment.name} routed to {route.arm}, which cannot be served "
                    "with the loaded model version. Ask the operator to check the experiment."
                )
        assert node is not None and strategy is not None
        row: dict[str, Any] = {
            "id": new_id(),
            "strategy": strategy,
            "experiment": experiment.name if experiment else None,
            "arm": node.name,
            "route_reason": route.reason[:32] if route else None,
            "model_version": bundle.version,
            "client_hash": hash_client_id(client_id) if client_id else None,
            "image_sha256": hashlib.sha256(data).hexdigest(),
            "features": request_features,
        }
        x = to_tensor(pre.canvas[None])
        result = self._run(node, bundle, x, row, started)
        body = prediction_body(
            result,
            prediction_id=row["id"],
            strategy=strategy,
            experiment=row["experiment"],
            version=bundle.version,
            latency_ms=_milliseconds(started),
        )
        self.recorder.prediction(**row, **{k: body.get(k) for k in STORED_FIELDS})
        self.on_outcome(row["experiment"])
        log.info(
            "prediction %s: %s via %s -> %s (%.3f) in %.1f ms%s",
            row["id"],
            strategy,
            node.name,
            body["label"],
            body["confidence"],
            body["latency_ms"],
            f", fallback {body['fallback']['model']}" if body["fallback"] else "",
        )
        served = Served(body=body, canvas=pre.canvas, runner=self.deferred)
        if route is not None and route.shadows:
            served.after.append(lambda: self._shadows(route.shadows, x, row, body))
        return served

    def _run(
        self, node: Node, bundle: EnsembleBundle, x: torch.Tensor, row: dict, started: float
    ) -> Result:
        """One forward; a failure is recorded as a failed prediction before it is raised."""
        try:
            return predict_node(node, bundle.bank, x)
        except Exception as exc:
            self.recorder.prediction(
                **row, latency_ms=_milliseconds(started), error=f"{type(exc).__name__}: {exc}"
            )
            self.on_outcome(row["experiment"])
            if isinstance(exc, EnsembleError):
                log.error("prediction %s failed (%s): %s", row["id"], node.name, exc)
                raise Unavailable(
                    f"The {node.name} ensemble could not answer: {exc}. Try another strategy, "
                    "or ask the operator to check the model artifact."
                ) from exc
            raise

    def _shadows(self, shadows: tuple[str, ...], x: torch.Tensor, served: dict, body: dict) -> None:
        """Run each shadow arm on the served request's input and store it linked to it."""
        bundle = self.bundle()
        nodes = self.engine.snapshot().nodes
        for name in shadows:
            node = nodes.get(name)
            started = time.perf_counter()
            fields = {
                **{
                    k: served[k]
                    for k in (
                        "strategy",
                        "experiment",
                        "model_version",
                        "client_hash",
                        "image_sha256",
                    )
                },
                "id": new_id(),
                "arm": name,
                "shadow_of": body["prediction_id"],
                "route_reason": "shadow",
            }
            try:
                if node is None:
                    raise LookupError(f"shadow model {name} is not in the loaded artifact")
                result = predict_node(node, bundle.bank, x)
            except Exception as exc:
                log.warning("shadow %s of %s failed: %s", name, body["prediction_id"], exc)
                self.recorder.shadow(
                    **fields,
                    latency_ms=_milliseconds(started),
                    error=f"{type(exc).__name__}: {exc}",
                )
                continue
            shadow = prediction_body(
                result,
                prediction_id=fields["id"],
                strategy=served["strategy"],
                experiment=served["experiment"],
                version=bundle.version,
                latency_ms=_milliseconds(started),
            )
            self.recorder.shadow(**fields, **{k: shadow.get(k) for k in STORED_FIELDS})

    # -- feedback ------------------------------------------------------------------------------
    def find_prediction(self, prediction_id: str) -> Any:
        """The stored prediction, or a 404 that says what to check."""
        prediction = None
        if _PREDICTION_ID.fullmatch(prediction_id):
            prediction = self.recorder.get(prediction_id)
        if prediction is None or prediction.shadow_of is not None:
            raise NotFound(
                f"No prediction with id {prediction_id[:64]!r}. Use the prediction_id that "
                "POST /api/v1/predict returned."
            )
        return prediction

    @staticmethod
    def check_answered(prediction: Any) -> None:
        """A failed prediction has no answer to judge: 409."""
        if prediction.error is not None or prediction.class_index is None:
            raise Conflict(
                "This prediction failed, so there is no answer to judge. Predict again and give "
                "feedback on the new prediction."
            )

    def record_verdict(self, prediction: Any, label: Any) -> Verdict:
        """Keep a client's true class for a loaded prediction (``store.feedback``'s rules: the
        first verdict counts, later or over-the-cap ones are kept uncounted); 429 past the
        per-prediction limit."""
        self.check_answered(prediction)
        true_class_index = parse_label(label, tuple(prediction.probabilities or ()))
        try:
            verdict = self.recorder.feedback(prediction, true_class_index)
        except FeedbackLimitReached as exc:
            raise TooManyRequests(
                f"Prediction {prediction.id} already has {exc.limit} verdicts, the most kept for "
                "one prediction, so this one was not recorded. Its first verdict stands; if it "
                "is wrong, ask an admin to correct it."
            ) from exc
        log.info(
            "feedback on %s: true class %d, correct=%s, counted=%s (%s)",
            prediction.id,
            true_class_index,
            verdict.correct,
            verdict.counted,
            verdict.outcome,
        )
        if verdict.counted:
            self.on_outcome(prediction.experiment)
        return verdict

    def feedback(self, prediction_id: str, label: Any) -> Verdict:
        """Record the true class (name or index) of a prediction's image, by its id."""
        return self.record_verdict(self.find_prediction(prediction_id), label)

    def correct(
        self, prediction_id: str, label: Any, actor: str, note: str | None = None
    ) -> Verdict:
        """An admin's correction: it replaces the effective verdict, kept with who and when."""
        prediction = self.find_prediction(prediction_id)
        self.check_answered(prediction)
        true_class_index = parse_label(label, tuple(prediction.probabilities or ()))
        verdict = self.recorder.correction(prediction, true_class_index, actor, note)
        log.info(
            "feedback on %s corrected by %s: true class %d, correct=%s",
            prediction.id,
            actor,
            true_class_index,
            verdict.correct,
        )
        self.on_outcome(prediction.experiment)
        return verdict
