"""What routing costs per request, in-process: every router kind, then predict with and without one.

`python -m bench.routing [--calls 2000] [--pairs 300]` builds the app with ``create_app`` on a
temporary SQLite file and the shipped artifact, creates one experiment per router kind (all
eight) through the definition service, gives the bandit labelled outcomes and the latency router
latencies to read, and times ``engine.route(experiment, client_id, features)``: ``--calls`` calls
per router for an anonymous request and as many with a client id (sticky routers hash it), in
rounds that alternate the routers, after a warm-up. That is what a request pays on top of the
forward: round-robin's ticket (an UPDATE ... RETURNING and a commit), the bandit's and latency
router's per-arm figures (read from SQL at most once a second, so ``mean`` carries the re-reads
that median and p95 do not). The cached ``engine.snapshot()``, called twice per request, is timed
too. Then ``prediction.predict(png, strategy)`` end to end for a weighted experiment that sends
everything to bagging against ``bagging`` itself, in alternation (``--pairs`` of each, real test
images), and the difference: the whole price of asking for an experiment instead of an ensemble.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from app import create_app
from bench.load import cpu_model, fashion_mnist_pngs, machine_cpu_seconds, own_cpu_seconds
from experiments.stats import percentile
from models.preprocess import analyse

log = logging.getLogger(__name__)

MODELS = [{"model_id": "bagging"}, {"model_id": "boosting"}]
#: One experiment per router kind, in ``experiments.routers.ROUTERS`` order.
BODIES: dict[str, dict[str, Any]] = {
    "weighted": {
        "strategy": "weighted",
        "models": [{"model_id": "bagging", "weight": 3}, {"model_id": "boosting", "weight": 1}],
    },
    "round_robin": {"strategy": "round_robin", "models": MODELS},
    "random": {"strategy": "random", "models": MODELS},
    "canary": {
        "strategy": "canary",
        "baseline_model": "bagging",
        "canary_model": "boosting",
        "canary_percentage": 10,
        "models": MODELS,
    },
    "feature_based": {
        "strategy": "feature_based",
        # Neither rule matches the traffic below, so every request evaluates both.
        "rules": [
            {"condition": "format == 'jpeg' and width > 500", "model": "boosting"},
            {"condition": "segment == 'enterprise' or brightness > 250", "model": "stacking"},
        ],
        "default_model": "bagging",
        "models": [*MODELS, {"model_id": "stacking"}],
    },
    "bandit": {"strategy": "bandit", "models": MODELS},
    "latency_based": {"strategy": "latency_based", "models": MODELS},
    "shadow": {
        "strategy": "shadow",
        "default_model": "bagging",
        "shadow_models": ["stacking"],
        "models": [{"model_id": "bagging"}, {"model_id": "stacking"}],
    },
}
#: The experiment predict is timed with: every request to bagging, so the forward is the same.
END_TO_END = {
    "name": "all-bagging",
    "strategy": "weighted",
    "models": [{"model_id": "bagging", "weight": 1}, {"model_id": "boosting", "weight": 0}],
}
SEED_REQUESTS = 40
WARMUP_CALLS = 200
ROUNDS = 10


def name_of(kind: str) -> str:
    return kind.replace("_", "-")


def timed(call: Callable[[], Any], times: int) -> list[float]:
    """Microseconds per call, one ``perf_counter_ns`` pair around each."""
    out = []
    for _ in range(times):
        start = time.perf_counter_ns()
        call()
        out.append((time.perf_counter_ns() - start) / 1e3)
    return out


def figures(samples: Sequence[float]) -> tuple[float, float, float]:
    """(median, p95, mean) of a non-empty sample."""
    p95 = percentile(list(samples), 95)
    assert p95 is not None
    return statistics.median(samples), p95, statistics.fmean(samples)


def seed(services: Any, images: Sequence[bytes]) -> None:
    """Labelled outcomes for the bandit, latencies for the latency router: real requests."""
    from models.data import load_fashion_mnist

    labels = load_fashion_mnist().test_labels
    for n in range(SEED_REQUESTS):
        image = images[n % len(images)]
        served = services.prediction.predict(image, name_of("bandit"))
        services.prediction.feedback(served.body["prediction_id"], int(labels[n % len(images)]))
        services.prediction.predict(image, name_of("latency_based"))


def route_table(services: Any, features: dict[str, Any], calls: int) -> list[str]:
    """Time ``engine.route`` per router, anonymous and with a client id, in alternating rounds."""
    engine = services.engine
    per_round = max(1, calls // ROUNDS)
    samples: dict[tuple[str, str], list[float]] = {}
    counter = iter(range(10**9))

    def client() -> str:
        return f"client-{next(counter) % 5000}"

    for round_ in range(ROUNDS + 1):  # round 0 is the warm-up
        for kind in BODIES:
            live = engine.snapshot().experiments[name_of(kind)]
            anonymous = timed(lambda live=live: engine.route(live, None, features), per_round)
            known = timed(lambda live=live: engine.route(live, client(), features), per_round)
            if round_ == 0:
                continue
            samples.setdefault((kind, "anonymous"), []).extend(anonymous)
            samples.setdefault((kind, "client"), []).extend(known)
        cached = timed(engine.snapshot, per_round)
        if round_:
            samples.setdefault(("snapshot()", "anonymous"), []).extend(cached)
    lines = [
        f"{'engine.route, µs':18}{'anonymous':>28}{'with client_id':>28}",
        f"{'':18}" + f"{'median':>10}{'p95':>9}{'mean':>9}" * 2,
    ]
    for kind in [*BODIES, "snapshot()"]:
        cells = []
        for mode in ("anonymous", "client"):
            got = samples.get((kind, mode))
            if got is None:
                cells.append(f"{'':>10}{'':>9}{'':>9}")
            else:
                median, p95, mean = figures(got)
                cells.append(f"{median:>10.1f}{p95:>9.1f}{mean:>9.1f}")
        lines.append(f"{kind:18}" + "".join(cells))
    lines.append(
        f"({per_round * ROUNDS} timed calls per cell after {per_round} warm-up; "
        "snapshot() is the cached read every request makes twice)"
    )
    return lines


def end_to_end(services: Any, images: Sequence[bytes], pairs: int) -> list[str]:
    """``prediction.predict`` for the all-bagging experiment vs ``bagging``, alternating."""
    predict = services.prediction.predict
    for n in range(20):  # warm-up, both paths
        predict(images[n % len(images)], "bagging")
        predict(images[n % len(images)], END_TO_END["name"])
    plain: list[float] = []
    routed: list[float] = []
    for n in range(pairs):
        image = images[n % len(images)]
        order = (("bagging", plain), (END_TO_END["name"], routed))
        for strategy, out in order if n % 2 == 0 else order[::-1]:
            start = time.perf_counter_ns()
            served = predict(image, strategy)
            out.append((time.perf_counter_ns() - start) / 1e3)
            assert served.body["arm"] == "bagging"
    paired = [r - p for r, p in zip(routed, plain, strict=True)]
    (pm, p95p, pmean), (rm, p95r, rmean) = figures(plain), figures(routed)
    half_width = 1.96 * statistics.stdev(paired) / len(paired) ** 0.5 if pairs > 1 else 0.0
    return [
        f"{'prediction.predict, µs':34}{'median':>10}{'p95':>10}{'mean':>10}",
        f"{'bagging (plain ensemble)':34}{pm:>10.1f}{p95p:>10.1f}{pmean:>10.1f}",
        f"{'all-bagging (weighted experiment)':34}{rm:>10.1f}{p95r:>10.1f}{rmean:>10.1f}",
        f"{'difference':34}{rm - pm:>+10.1f}{p95r - p95p:>+10.1f}{rmean - pmean:>+10.1f}"
        f"   ({(rm - pm) / pm * 100:+.1f}% of the plain median)",
        f"paired differences: median {statistics.median(paired):+.1f} µs, mean "
        f"{statistics.fmean(paired):+.1f} ± {half_width:.1f} µs (95% CI of the mean)",
        f"({pairs} pairs, alternating which goes first, after 20 warm-up pairs; "
        "each call preprocesses, forwards and records one row)",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="timed route calls per cell")
    parser.add_argument("--pairs", type=int, default=300, help="end-to-end pairs")
    parser.add_argument("--images", type=int, default=100, help="distinct test images")
    args = parser.parse_args(argv)
    if args.calls < ROUNDS or args.pairs < 1 or args.images < 1:
        parser.error(f"--calls must be >= {ROUNDS}; --pairs and --images positive")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    images = fashion_mnist_pngs(args.images)
    with tempfile.TemporaryDirectory(prefix="chorus-routing-") as workdir:
        app = create_app(
            {
                "SECRET_KEY": "bench-routing-" + "k" * 32,  # at least 32 bytes outside tests
                "ADMIN_PASSWORD": "bench-routing-password",
                "DATABASE_URL": f"sqlite:///{Path(workdir) / 'chorus.db'}",
                "LOG_LEVEL": "WARNING",  # one INFO line per prediction would be timed too
            }
        )
        try:
            services = app.extensions["chorus"]
            for kind, body in BODIES.items():
                services.definitions.create({"name": name_of(kind), **body}, "bench")
            services.definitions.create(END_TO_END, "bench")
            seed(services, images)
            features = {"segment": "consumer", **analyse(images[0]).features}
            own, machine, wall = own_cpu_seconds(), machine_cpu_seconds(), time.monotonic()
            routes = route_table(services, features, args.calls)
            predictions = end_to_end(services, images, args.pairs)
            wall = time.monotonic() - wall
            # Whatever else ran meanwhile (other jobs): near 0 on a quiet machine.
            other = max(0.0, machine_cpu_seconds() - machine - (own_cpu_seconds() - own)) / wall
            version = services.models.bundle.version
            out = [
                f"CPU: {cpu_model()}; torch {torch.__version__} on "
                f"{torch.get_num_threads()} thread(s); Python {sys.version.split()[0]}; "
                f"model version {version}; temporary SQLite (WAL)",
                f"request features: {features}",
                f"measured over {wall:.1f} s; other processes used {other:.2f} cores meanwhile",
                "",
                *routes,
                "",
                *predictions,
            ]
        finally:
            app.extensions["chorus_store"].close()
    sys.stdout.write("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
