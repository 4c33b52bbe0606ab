"""``PredictionService``: one image in, one recorded answer out, for pages, API and CLI alike.

preprocess -> resolve the strategy (ensemble, or experiment -> router -> arm) -> one batched
forward -> record one row -> the contract body. Shadows run later, when the caller invokes
``Served.run_after`` (the views do so after the response is sent). Errors come out typed:
``PreprocessError`` for a bad upload, ``serving.errors`` for the rest.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import numpy as np
import torch

from ensembles.base import EnsembleError, Result
from ensembles.bundle import EnsembleBundle
from ensembles.composite import Node, predict_node
from ensembles.uncertainty import assess_batch, assess_one
from experiments.assignment import hash_client_id
from experiments.routers import Route
from models.preprocess import (
    DEFAULT_MAX_PIXELS,
    ImageTooLargeError,
    Preprocessed,
    PreprocessError,
    analyse,
    declared_pixels,
)
from models.tensor import IMAGE_SIZE, to_tensor
from serving import jsontext
from serving.contract import STORED_FIELDS, prediction_body
from serving.deferred import DeferredRunner
from serving.engine import ExperimentEngine, LiveExperiment
from serving.errors import Conflict, InvalidRequest, NotFound, TooManyRequests, Unavailable
from serving.inference_protocol import MAX_BATCH
from serving.metrics import Metrics
from serving.recorder import Recorder
from store.feedback import FeedbackLimitReached, Verdict
from store.models import new_id

log = logging.getLogger(__name__)

MAX_CLIENT_ID_LENGTH = 200
MAX_FEATURES = 32
MAX_FEATURE_TEXT = 200
MAX_FEATURES_TEXT = 4096
#: A batch's files together may hold this many full-size uploads' pixels (``max_pixels`` each).
BATCH_PIXELS_PER_UPLOAD = 4
_FEATURE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
#: A class index written as text: a few ASCII digits.
_INDEX_TEXT = re.compile(r"[0-9]{1,4}")
_PREDICTION_ID = re.compile(r"^[0-9a-f]{32}$")

#: What one upload step of a batch gives back (its pixel count, its preprocessing).
T = TypeVar("T")


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
    #: The decoded upload (reduced, upright), for a page's thumbnail without a second decode.
    preview: Any = None

    def run_after(self) -> None:
        """Hand the deferred work (shadow arms) over, once the answer is out; never raises."""
        hand_over(self.after, self.runner)


@dataclass
class BatchServed:
    """A served batch: one contract body per image, in order, and work for after the answer."""

    bodies: list[dict[str, Any]]
    after: list[Callable[[], None]] = field(default_factory=list)
    runner: DeferredRunner | None = None

    def run_after(self) -> None:
        """Hand the deferred work (shadow arms) over, once the answer is out; never raises."""
        hand_over(self.after, self.runner)


def hand_over(after: list[Callable[[], None]], runner: DeferredRunner | None) -> None:
    """Submit deferred jobs (inline when no runner is given) and forget them."""
    runner = runner or DeferredRunner(inline=True)
    for job in after:
        runner.submit(job)
    after.clear()


def raw_features(canvas: np.ndarray) -> dict[str, Any]:
    """Request features of a 28x28 canvas sent as pixels (no file, so no format or size)."""
    return {
        "width": IMAGE_SIZE,
        "height": IMAGE_SIZE,
        "aspect": 1.0,
        "format": "raw",
        "mode": "L",
        "background": "dark",
        "brightness": round(float(canvas.mean()) / 255.0, 4),
        "bytes": int(canvas.size),
    }


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
            raw = jsontext.loads(raw)
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
        metrics: Metrics | None = None,
    ) -> None:
        self.models = models
        self.metrics = metrics or Metrics()
        #: Told the experiment (or None) of every recorded outcome: the guardian's trigger.
        self.on_outcome = on_outcome or (lambda name: None)
        self.engine = engine
        self.recorder = recorder
        self.preprocess = preprocess
        self.max_pixels = max_pixels
        #: Decoded pixels one batch's files may hold together (four full-size uploads).
        self.max_batch_pixels = BATCH_PIXELS_PER_UPLOAD * max_pixels
        self.deferred = deferred or DeferredRunner(inline=True)

    def bundle(self) -> EnsembleBundle:
        """The loaded ensembles, or a 503 saying why there are none."""
        if self.models.bundle is None:
            # The load error names paths and exception text: the log has it, the client not.
            log.error("no model loaded: %s", self.models.error)
            raise Unavailable(
                "No model is loaded (the server log says why). Ask the operator to train or "
                "install an artifact (make train) and restart the service."
            )
        return self.models.bundle

    def strategies(self) -> tuple[str, ...]:
        """Every name a client may ask for now: built-in and created ensembles, experiments."""
        snap = self.engine.snapshot()
        bundle = self.bundle()
        created = [n for n in snap.ensembles if n in snap.nodes]
        return tuple(bundle.ensembles) + tuple(snap.experiments) + tuple(sorted(created))

    def _target(
        self, strategy: str | None, members: bool = False
    ) -> tuple[Node | None, LiveExperiment | None, EnsembleBundle]:
        """The node or experiment ``strategy`` names, with the bundle its snapshot was built on."""
        if not strategy:
            raise InvalidRequest(
                f'"strategy" is required: choose one of {", ".join(self.strategies())}.',
                field="strategy",
            )
        snap = self.engine.snapshot()
        bundle = snap.bundle or self.bundle()
        if strategy in snap.experiments:
            return None, snap.experiments[strategy], bundle
        if strategy in snap.broken:
            raise Conflict(f"{snap.broken[strategy]}. Choose another strategy.", field="strategy")
        created_or_builtin = strategy in snap.ensembles or strategy in bundle.ensembles
        member = members and strategy in bundle.bank.names
        if (created_or_builtin or member) and strategy in snap.nodes:
            return snap.nodes[strategy], None, bundle
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
        try:
            return self._predict(data, strategy, client_id, features)
        except Exception as exc:
            self.metrics.failed(self._known_strategy(strategy), exc)
            raise

    def _known_strategy(self, strategy: str | None, members: bool = False) -> str | None:
        """``strategy`` if it names a servable model or experiment (a bounded metric label);
        ``members``: a member's name counts too (V2 serves members)."""
        try:
            self._target(strategy, members=members)
        except Exception:
            return None
        return strategy

    def _predict(
        self,
        data: bytes,
        strategy: str | None,
        client_id: str | None,
        features: Mapping[str, Any] | str | None,
    ) -> Served:
        client_id = check_client_id(client_id)
        user_features = parse_features(features)
        node, experiment, bundle = self._target(strategy)
        started = time.perf_counter()
        pre = self.preprocess(data, self.max_pixels)
        assert strategy is not None
        node, route, row = self._route(
            strategy, node, experiment, client_id, data, {**user_features, **pre.features}, pre
        )
        if experiment is not None:
            self.metrics.routed(experiment.name, experiment.router.kind, node.name)
        x = to_tensor(pre.canvas[None])
        result = self._run(node, bundle, x, [row], started)
        assessment = assess_one(bundle.abstainer, result, pre.features, pre.canvas, data)
        body = prediction_body(
            result,
            prediction_id=row["id"],
            strategy=strategy,
            experiment=row["experiment"],
            version=bundle.version,
            latency_ms=_milliseconds(started),
            assessment=assessment,
        )
        self.recorder.prediction(**row, **{k: body.get(k) for k in STORED_FIELDS})
        self.metrics.served(
            strategy=strategy,
            model=node.name,
            version=bundle.version,
            body=body,
        )
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
        served = Served(body=body, canvas=pre.canvas, runner=self.deferred, preview=pre.preview)
        if route is not None and route.shadows:
            served.after.append(lambda: self._shadows(route.shadows, x, row, body))
        return served

    def describe_model(self, name: str) -> tuple[str, str | None]:
        """(kind, why it cannot serve or None) of a member, ensemble or experiment; 404 else."""
        snap = self.engine.snapshot()
        bundle = self.bundle()
        if name in snap.experiments:
            return "experiment", None
        if name in bundle.bank.names:
            return "member", None
        if name in bundle.ensembles or name in snap.ensembles:
            return "ensemble", snap.broken.get(name)
        known = (*self.strategies(), *bundle.bank.names)
        raise NotFound(f"Unknown model {name[:40]!r}: the models are {', '.join(known)}.")

    def predict_batch(
        self,
        images: Sequence[bytes] | np.ndarray,
        name: str,
        client_id: str | None = None,
        features: Mapping[str, Any] | str | None = None,
    ) -> BatchServed:
        """Classify a batch with one model name (a member too), one forward per serving arm.

        ``images`` are encoded files (the upload preprocessing applies, as on predict) or a
        ``(N, 28, 28) uint8`` array used as is. Each image is routed (for an experiment),
        scored for abstention and recorded like a single prediction; its latency is its share
        of the batch's time. A failed batch counts in the error metrics once per image.
        """
        try:
            return self._predict_batch(images, name, client_id, features)
        except Exception as exc:
            count = len(images) if 0 < len(images) <= MAX_BATCH else 1
            self.metrics.failed(self._known_strategy(name, members=True), exc, images=count)
            raise

    def _predict_batch(
        self,
        images: Sequence[bytes] | np.ndarray,
        name: str,
        client_id: str | None,
        features: Mapping[str, Any] | str | None,
    ) -> BatchServed:
        if not 0 < len(images) <= MAX_BATCH:
            raise InvalidRequest(f"A batch holds 1 to {MAX_BATCH} images, not {len(images)}.")
        client_id = check_client_id(client_id)
        user_features = parse_features(features)
        node, experiment, bundle = self._target(name, members=True)
        started = time.perf_counter()
        if isinstance(images, np.ndarray):
            files = [canvas.tobytes() for canvas in images]
            pres = [Preprocessed(canvas=canvas, features=raw_features(canvas)) for canvas in images]
            uploads: list[bytes | None] = [None] * len(files)  # pixels: no file to measure
        else:
            files = list(images)
            pres = self._preprocess_files(files)
            uploads = list(files)
        arms: dict[str, tuple[Node, list[int]]] = {}
        routes: list[Route | None] = []
        rows: list[dict[str, Any]] = []
        for index, (data, pre) in enumerate(zip(files, pres, strict=True)):
            served_by, route, row = self._route(
                name, node, experiment, client_id, data, {**user_features, **pre.features}, pre
            )
            arms.setdefault(served_by.name, (served_by, []))[1].append(index)
            routes.append(route)
            rows.append(row)
            if experiment is not None:
                self.metrics.routed(experiment.name, experiment.router.kind, served_by.name)
        bodies: list[dict[str, Any]] = [{} for _ in files]
        inputs: list[torch.Tensor] = [torch.empty(0)] * len(files)
        for served_by, indices in arms.values():
            x = to_tensor(np.stack([pres[i].canvas for i in indices]))
            try:
                result = self._run(served_by, bundle, x, [rows[i] for i in indices], started)
            except Exception:
                self._abort_batch(rows, set(indices), served_by.name, started)
                raise
            assessments = assess_batch(
                bundle.abstainer,
                result,
                [pres[i].features for i in indices],
                [pres[i].canvas for i in indices],
                [uploads[i] for i in indices],
            )
            for j, i in enumerate(indices):
                inputs[i] = x[j : j + 1]
                bodies[i] = prediction_body(
                    result,
                    prediction_id=rows[i]["id"],
                    strategy=name,
                    experiment=rows[i]["experiment"],
                    version=bundle.version,
                    latency_ms=0.0,
                    row=j,
                    assessment=assessments[j],
                )
        share = _milliseconds(started) / len(files)
        for body in bodies:
            body["latency_ms"] = round(share, 3)
        self.recorder.predictions(
            [
                {**row, **{k: body.get(k) for k in STORED_FIELDS}}
                for row, body in zip(rows, bodies, strict=True)
            ]
        )
        for row, body in zip(rows, bodies, strict=True):
            self.metrics.served(strategy=name, model=row["arm"], version=bundle.version, body=body)
        self.on_outcome(rows[0]["experiment"])
        log.info(
            "batch of %d: %s via %s in %.1f ms",
            len(files),
            name,
            ", ".join(f"{arm} x{len(indices)}" for arm, (_, indices) in arms.items()),
            share * len(files),
        )
        served = BatchServed(bodies=bodies, runner=self.deferred)
        for route, x, row, body in zip(routes, inputs, rows, bodies, strict=True):
            if route is not None and route.shadows:
                served.after.append(partial(self._shadows, route.shadows, x, row, body))
        return served

    def _abort_batch(
        self, rows: Sequence[dict], recorded: set[int], failed: str, started: float
    ) -> None:
        """Record the images of a batch that one arm's failure left unanswered (the failed arm's
        own rows are recorded by ``_run``): every image of a request is recorded."""
        unanswered = [row for index, row in enumerate(rows) if index not in recorded]
        if unanswered:
            self._record_failed(
                unanswered,
                started,
                f"BatchAborted: {failed} failed in the same batch, so no image of it was answered",
            )

    def _record_failed(self, rows: Sequence[dict], started: float, error: str) -> None:
        """Store ``rows`` as failed predictions with ``error``, in one transaction."""
        latency = _milliseconds(started)
        self.recorder.predictions([{**row, "latency_ms": latency, "error": error} for row in rows])

    def _preprocess_files(self, files: Sequence[bytes]) -> list[Preprocessed]:
        """Each file's upload preprocessing, in order, within ``max_batch_pixels`` together,
        counted from the headers before any file is decoded: a batch of 256 files of 25 MP each
        would otherwise cost a worker minutes of decoding."""
        total = 0
        for index, data in enumerate(files):
            total += self._nth(index, declared_pixels, data)
            if total > self.max_batch_pixels:
                raise ImageTooLargeError(
                    f"image[{index}]: the batch's images hold {total:,} pixels up to here, more "
                    f"than the {self.max_batch_pixels:,} one batch may; send fewer or smaller "
                    "images per request."
                )
        return [self._nth(index, self.preprocess, data) for index, data in enumerate(files)]

    def _nth(self, index: int, step: Callable[[bytes, int], T], data: bytes) -> T:
        """One upload step on one file of a batch; its error names the file."""
        try:
            return step(data, self.max_pixels)
        except PreprocessError as exc:
            raise type(exc)(f"image[{index}]: {exc}") from None

    def _route(
        self,
        strategy: str,
        node: Node | None,
        experiment: LiveExperiment | None,
        client_id: str | None,
        data: bytes,
        request_features: dict[str, Any],
        pre: Preprocessed,
    ) -> tuple[Node, Route | None, dict[str, Any]]:
        """The node that serves one image (an experiment's router picks the arm) and its row."""
        route = None
        if experiment is not None:
            route = self.engine.route(experiment, client_id, request_features)
            node = self.engine.snapshot().nodes.get(route.arm)
            if node is None:
                raise Unavailable(
                    f"Experiment {experiment.name} routed to {route.arm}, which cannot be served "
                    "with the loaded model version. Ask the operator to check the experiment."
                )
        assert node is not None
        row: dict[str, Any] = {
            "id": new_id(),
            "strategy": strategy,
            "experiment": experiment.name if experiment else None,
            "arm": node.name,
            "route_reason": route.reason[:32] if route else None,
            "model_version": self.bundle().version,
            "client_hash": hash_client_id(client_id) if client_id else None,
            "image_sha256": hashlib.sha256(data).hexdigest(),
            "features": request_features,
            "canvas": pre.canvas.tobytes(),  # 784 bytes: the result page's 28x28 view
        }
        return node, route, row

    def _run(
        self,
        node: Node,
        bundle: EnsembleBundle,
        x: torch.Tensor,
        rows: Sequence[dict],
        started: float,
    ) -> Result:
        """One forward; a failure is recorded as failed predictions (one per row) before it is
        raised."""
        try:
            return predict_node(node, bundle.bank, x)
        except Exception as exc:
            self._record_failed(rows, started, f"{type(exc).__name__}: {exc}")
            self.on_outcome(rows[0]["experiment"])
            if isinstance(exc, EnsembleError):
                log.error("prediction %s failed (%s): %s", rows[0]["id"], node.name, exc)
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
