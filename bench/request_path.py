"""The predict request path, stage by stage: how much CPU a request costs outside the forward.

`python -m bench.request_path [--requests N] [--warmup W] [--strategy S] [--clients K]` builds
the real app in-process (``create_app`` on the shipped artifact, ``RUNTIME=auto``, i.e. ONNX
Runtime, a temporary SQLite file database, INFO logging to a file in the production format)
and sends ``POST /api/v1/predict`` through the whole WSGI stack, each request with a fresh
multipart boundary as real clients send (``bench.scale.trouser_png``, a client id out of
``K``; 0: anonymous). Every measured request's CPU time (``time.thread_time``, so other
processes on a shared machine do not count) is attributed to the stage it was spent in by
wrapping, for the run only, the functions each stage consists of; a wrapped call's time
excludes the wrapped calls inside it (``StageClock``):

- parse: the multipart form (``Request._load_form_data``);
- decode: PIL opening and decoding the upload (``models.preprocess._decode_for_canvas``);
- preprocess: the rest of ``analyse`` (to the 28x28 canvas and the features) and the tensor;
- route: strategy resolution, the router and the row's fields (``_target``, ``_route``);
- forward: the member bank's forward (ONNX, or torch where ONNX cannot serve);
- combine: the ensemble's combination around the forward, uncertainty and abstention;
- record: the prediction's insert, its roll-ups and the commit (``Recorder.prediction``);
- respond: the contract body, its JSON, the ``after_request`` hooks, logging, sending it;
- other: the rest of the WSGI call (Flask dispatch, ``before_request`` hooks, metrics).

Each instrumented request is followed by the same request with no wrapper in place (``bare``:
its CPU; ``bare-fwd``: that minus the instrumented twin's forward; the difference from
``total``/``outside`` is what the instrumentation costs). Per strategy it prints the median CPU
milliseconds of every stage, of the total and of the total minus the forward (the median of
the per-request differences), the bare and the wall-clock medians, and the verdict against
the target: at most 1.5 ms of CPU per request outside the forward, judged on the instrumented
figure (an upper bound). Exit status 1 when a strategy misses it.
"""

from __future__ import annotations

import argparse
import functools
import io
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from werkzeug.test import EnvironBuilder

from bench.load import cpu_model
from bench.scale import trouser_png
from serving.catalogue import BUILTIN_ENSEMBLES, BUILTIN_EXPERIMENT

STAGES = ("parse", "decode", "preprocess", "route", "forward", "combine", "record", "respond")
#: What no wrapped function accounts for: Flask's dispatch, before_request hooks, metrics.
OTHER = "other"
#: The issue's target: CPU per request outside the member forward.
TARGET_MS = 1.5
#: Every built-in, from the catalogue: bagging, boosting, stacking, cascade and the ab test.
STRATEGIES = tuple(s.name for s in (*BUILTIN_ENSEMBLES, BUILTIN_EXPERIMENT))
PREDICT_PATH = "/api/v1/predict"
_MISSING = object()


class StageClock:
    """Exclusive CPU time per stage: a timed call's time minus the timed calls inside it."""

    def __init__(self, clock: Callable[[], float] = time.thread_time) -> None:
        self.clock = clock
        self.spent: dict[str, float] = {}
        #: Per open frame, the time its timed callees took (subtracted from its own).
        self._inner: list[float] = []

    def wrap(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` with its calls' exclusive time added to ``stage``."""

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = self.clock()
            self._inner.append(0.0)
            try:
                return fn(*args, **kwargs)
            finally:
                self._close(stage, started)

        return timed

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a block like a wrapped call."""
        started = self.clock()
        self._inner.append(0.0)
        try:
            yield
        finally:
            self._close(name, started)

    def _close(self, stage: str, started: float) -> None:
        elapsed = self.clock() - started
        inner = self._inner.pop()
        self.spent[stage] = self.spent.get(stage, 0.0) + elapsed - inner
        if self._inner:
            self._inner[-1] += elapsed

    def request(self, fn: Callable[[], object]) -> dict[str, float]:
        """Run ``fn`` as one request: seconds per stage, the unwrapped rest as ``OTHER``."""
        self.spent = {}
        self._inner = []
        with self.stage(OTHER):
            fn()
        return dict(self.spent)


@dataclass(frozen=True)
class Sample:
    """One instrumented request (stages in seconds) and its uninstrumented twin."""

    stages: dict[str, float]
    wall: float
    bare: float

    @property
    def total(self) -> float:
        return sum(self.stages.values())

    @property
    def outside_forward(self) -> float:
        return self.total - self.stages.get("forward", 0.0)


@dataclass(frozen=True)
class Summary:
    """Median milliseconds of one strategy's samples."""

    strategy: str
    count: int
    stages: dict[str, float]
    total: float
    outside_forward: float
    bare: float
    bare_outside_forward: float
    wall: float

    @property
    def met(self) -> bool:
        """Judged on the printed figure (3 decimals), so the verdict never contradicts it."""
        return round(self.outside_forward, 3) <= TARGET_MS


def summarise(strategy: str, samples: Sequence[Sample]) -> Summary:
    """Per-stage medians (a stage a request never entered counts 0) and per-request totals'."""

    def median_ms(values: Iterator[float]) -> float:
        return 1e3 * statistics.median(values)

    bare_outside = (s.bare - s.stages.get("forward", 0.0) for s in samples)
    return Summary(
        strategy=strategy,
        count=len(samples),
        stages={
            name: median_ms(s.stages.get(name, 0.0) for s in samples) for name in (*STAGES, OTHER)
        },
        total=median_ms(s.total for s in samples),
        outside_forward=median_ms(s.outside_forward for s in samples),
        bare=median_ms(s.bare for s in samples),
        bare_outside_forward=median_ms(bare_outside),
        wall=median_ms(s.wall for s in samples),
    )


_COLUMNS = (*STAGES, OTHER, "total", "outside", "bare", "bare-fwd", "wall")


def table(summaries: Sequence[Summary]) -> list[str]:
    """The per-strategy table, then one verdict line per strategy."""
    lines = [f"{'strategy (median ms)':20}" + "".join(f"{c:>11}" for c in _COLUMNS)]
    for s in summaries:
        figures = [s.stages[name] for name in (*STAGES, OTHER)]
        figures += [s.total, s.outside_forward, s.bare, s.bare_outside_forward, s.wall]
        lines.append(f"{s.strategy:20}" + "".join(f"{f:>11.3f}" for f in figures))
    lines.append("")
    for s in summaries:
        verdict = "MET" if s.met else "MISSED"
        lines.append(
            f"{s.strategy}: {s.outside_forward:.3f} ms of CPU outside the forward per request "
            f"(target <= {TARGET_MS} ms): {verdict}"
        )
    return lines


def multipart(image: bytes, fields: dict[str, str], boundary: str) -> bytes:
    """A multipart/form-data body the way HTTP clients write one (``image`` as a PNG file)."""
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode())
        out.write(value.encode() + b"\r\n")
    out.write(
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="item.png"\r\n'
        "Content-Type: image/png\r\n\r\n".encode()
    )
    out.write(image + f"\r\n--{boundary}--\r\n".encode())
    return out.getvalue()


def predict_environ(image: bytes, fields: dict[str, str]) -> dict[str, Any]:
    """The WSGI environ of one predict upload, with a fresh boundary (as ``requests`` makes)."""
    boundary = os.urandom(16).hex()
    body = multipart(image, fields, boundary)
    builder = EnvironBuilder(
        path=PREDICT_PATH,
        method="POST",
        input_stream=io.BytesIO(body),
        content_type=f"multipart/form-data; boundary={boundary}",
        content_length=len(body),
        headers={"User-Agent": "bench.request_path", "Accept": "*/*"},
    )
    try:
        return builder.get_environ()
    finally:
        builder.close()


def call_wsgi(
    app: Any,
    environ: dict[str, Any],
    respond: Callable[[], AbstractContextManager[None]] = nullcontext,
) -> bytes:
    """Run one request through the WSGI app, reading and closing its body as a server does."""
    status: list[str] = []

    def start_response(line: str, headers: list, exc_info: Any = None) -> Callable:
        status.append(line)
        return lambda data: None

    body = app(environ, start_response)
    with respond():
        try:
            data = b"".join(body)
        finally:
            if hasattr(body, "close"):
                body.close()
    if not status or not status[0].startswith("200"):
        raise RuntimeError(f"predict answered {status[:1]}: {data[:300]!r}")
    return data


class Patches:
    """Set attributes for the instrumented requests and put the originals back."""

    def __init__(self) -> None:
        self._saved: list[tuple[Any, str, Any]] = []

    def wrap(self, clock: StageClock, stage: str, owner: Any, name: str) -> None:
        own = owner.__dict__ if isinstance(owner, type) else vars(owner)
        self._saved.append((owner, name, own.get(name, _MISSING)))
        setattr(owner, name, clock.wrap(stage, getattr(owner, name)))

    def restore(self) -> None:
        for owner, name, original in reversed(self._saved):
            if original is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, original)
        self._saved.clear()


def stage_targets(app: Any) -> list[tuple[str, Any, str]]:
    """(stage, owner, attribute) of every function a stage consists of, on the live app."""
    import models.preprocess
    import serving.service
    from models.banks import TorchBank
    from models.onnx_bank import OnnxBank, _View
    from views.context import EXTENSION

    service = app.extensions[EXTENSION].prediction
    banks = {OnnxBank, _View, TorchBank}
    if service.models.bundle is not None:
        banks.add(type(service.models.bundle.bank))  # e.g. the tests' fake bank
    forward = [("forward", bank, "probabilities") for bank in sorted(banks, key=str)]
    return [
        ("parse", app.request_class, "_load_form_data"),
        ("decode", models.preprocess, "_decode_for_canvas"),
        ("preprocess", service, "preprocess"),
        ("preprocess", serving.service, "to_tensor"),
        ("route", serving.service, "check_client_id"),
        ("route", serving.service, "parse_features"),
        ("route", service, "_target"),
        ("route", service, "_route"),
        *forward,
        ("combine", serving.service, "predict_node"),
        ("combine", serving.service, "assess_one"),
        ("record", service.recorder, "prediction"),
        ("respond", serving.service, "prediction_body"),
        ("respond", app.json, "response"),
        ("respond", app, "process_response"),
        ("respond", logging.Logger, "_log"),
    ]


@contextmanager
def instrumented(app: Any, clock: StageClock) -> Iterator[None]:
    """Every stage's functions wrapped by ``clock`` while the block runs."""
    patches = Patches()
    try:
        for stage, owner, name in stage_targets(app):
            patches.wrap(clock, stage, owner, name)
        yield
    finally:
        patches.restore()


def build_app(database_url: str) -> Any:
    """The real app as served: shipped artifact, ONNX Runtime, not in testing mode."""
    from app import create_app

    return create_app(
        {
            "DATABASE_URL": database_url,
            "SECRET_KEY": "bench-request-path-" + "k" * 32,
            "RUNTIME": "auto",
            "LOG_LEVEL": "INFO",
        }
    )


def production_logging(path: Path) -> logging.Handler:
    """The root handler ``create_app`` would add, writing to a file rather than the terminal."""
    from app import LOG_FORMAT

    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.getLogger().addHandler(handler)
    return handler


def run(
    app: Any, strategies: Sequence[str], requests: int, warmup: int, clients: int
) -> dict[str, list[Sample]]:
    """``requests`` measured requests per strategy, strategies in turn, each instrumented
    request followed by the same request bare."""
    image = trouser_png()
    clock = StageClock()
    samples: dict[str, list[Sample]] = {s: [] for s in strategies}

    def fields(strategy: str, index: int) -> dict[str, str]:
        out = {"strategy": strategy}
        if clients:
            out["client_id"] = f"bench-client-{index % clients}"
        return out

    for index in range(warmup):
        for strategy in strategies:
            call_wsgi(app, predict_environ(image, fields(strategy, index)))
    for index in range(requests):
        for strategy in strategies:
            environ = predict_environ(image, fields(strategy, index))
            started = time.perf_counter()
            with instrumented(app, clock):
                stages = clock.request(
                    lambda env=environ: call_wsgi(app, env, lambda: clock.stage("respond"))
                )
            wall = time.perf_counter() - started
            environ = predict_environ(image, fields(strategy, index + requests))
            cpu = time.thread_time()
            call_wsgi(app, environ)
            bare = time.thread_time() - cpu
            samples[strategy].append(Sample(stages=stages, wall=wall, bare=bare))
    return samples


def main(argv: list[str] | None = None) -> int:
    """Print the per-stage table and the verdicts; 1 when a strategy misses the target."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="measured, per strategy")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured, per strategy")
    parser.add_argument("--strategy", choices=STRATEGIES, help="only this one (default: all)")
    parser.add_argument("--clients", type=int, default=100, help="client ids (0: anonymous)")
    args = parser.parse_args(argv)
    strategies = (args.strategy,) if args.strategy else STRATEGIES
    with tempfile.TemporaryDirectory(prefix="chorus-request-path-") as tmp:
        handler = production_logging(Path(tmp) / "chorus.log")
        try:
            app = build_app("sqlite:///" + os.path.join(tmp, "bench.db"))
            try:
                samples = run(app, strategies, args.requests, args.warmup, args.clients)
            finally:
                app.extensions["chorus_store"].close()
        finally:
            logging.getLogger().removeHandler(handler)
            handler.close()
    summaries = [summarise(strategy, samples[strategy]) for strategy in strategies]
    load = os.getloadavg()[0]
    out = [
        f"CPU: {cpu_model()} ({os.cpu_count()} cores, load {load:.1f}: shared machine, so "
        "stages are thread CPU time, wall clock only for reference)",
        f"{args.requests} requests per strategy after {args.warmup} warm-up; RUNTIME=auto "
        f"(ONNX Runtime), SQLite file, INFO logging to a file; client ids: "
        f"{args.clients or 'anonymous'}",
        "",
        *table(summaries),
    ]
    sys.stdout.write("\n".join(out) + "\n")
    return 0 if all(s.met for s in summaries) else 1


if __name__ == "__main__":
    raise SystemExit(main())
