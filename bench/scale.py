"""Cost as history grows: the read endpoints and the predict path at 0, 10k, 100k and 1M rows.

`python -m bench.scale [--sizes 10000,100000,1000000] [--repeat 5] [--database-url URL]`
builds the app in-process on the shipped artifact and a fresh SQLite database (or the given
one, which it fills: give it an empty one), measures the predict path's median over real
uploads with no history, then seeds predictions through the store's own bulk path
(``store.bulk.add_predictions``: the built-in strategies, the built-in ``ab`` and a two-arm
sticky experiment, 5,000 clients, 30% labelled) up to each size and prints the median time of
the guardian's per-second read, ``/admin``, a filtered page of ``/admin/predictions``, the
experiment's console page, every ``/results``, ``/api/v1/stats`` and the predict path there
(and the request path's write, with its roll-up upserts alone), each next to the target
(reads <= 200 ms; predict within 10% of its median at 0 rows). The predict path is judged
against the same app on an empty database, the two called in alternation at each size
(``bench.forward.median_ms``), since a shared machine's speed drifts over a run by more than
10%; its ratio to the median measured at the start is printed beside it. Exit status 1 when a
target is missed.
"""

from __future__ import annotations

import argparse
import base64
import io
import logging
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from bench import forward
from bench.load import cpu_model

log = logging.getLogger(__name__)

READ_TARGET_MS = 200.0
PREDICT_SLOWDOWN = 1.10
EXPERIMENT = "scale-split"
CLIENTS = 5000
LABELLED = 0.3
CHUNK = 20_000
ARMS = {"bagging": ("bagging",), "boosting": ("boosting",), "stacking": ("stacking",)}


def trouser_png() -> bytes:
    """A Fashion-MNIST-like upload: a light trouser shape on black."""
    canvas = np.zeros((28, 28), dtype=np.uint8)
    canvas[2:26, 9:13] = 200
    canvas[2:26, 15:19] = 200
    canvas[2:6, 9:19] = 220
    buffer = io.BytesIO()
    Image.fromarray(canvas).save(buffer, format="PNG")
    return buffer.getvalue()


def build_app(database_url: str) -> Any:
    """The real app on the shipped artifact, an admin password, no guardian throttling."""
    from app import create_app

    return create_app(
        {
            "DATABASE_URL": database_url,
            "ADMIN_PASSWORD": "bench-scale-password",
            "SECRET_KEY": "bench-scale-" + "k" * 32,
            "WTF_CSRF_ENABLED": False,
        }
    )


def admin_headers() -> dict[str, str]:
    token = base64.b64encode(b"admin:bench-scale-password").decode()
    return {"Authorization": f"Basic {token}"}


def create_experiment(client: Any) -> None:
    """The two-arm sticky experiment the seeded rows belong to."""
    body = {
        "name": EXPERIMENT,
        "strategy": "weighted",
        "models": [{"model_id": "bagging", "weight": 1}, {"model_id": "stacking", "weight": 1}],
        "control": "bagging",
    }
    response = client.post("/api/v1/inference/ensemble", json=body, headers=admin_headers())
    if response.status_code != 201:
        raise SystemExit(f"creating {EXPERIMENT} failed: {response.get_json()}")


def seeded_rows(count: int, start: int, version: str, rng: random.Random) -> Iterator[dict]:
    """Rows as the recorder writes them: a fifth each to bagging, boosting, stacking and ab,
    the rest to the experiment; sticky clients keep their arm."""
    from store.models import utcnow

    day_ago = utcnow() - timedelta(days=1)
    for i in range(start, start + count):
        client = rng.randrange(CLIENTS)
        kind = i % 5
        experiment = None
        if kind < 3:
            strategy = arm = ("bagging", "boosting", "stacking")[kind]
        elif kind == 3:
            strategy, experiment = "ab", "ab"
            arm = ("boosting", "stacking")[client % 2]
        else:
            strategy = experiment = EXPERIMENT
            arm = ("bagging", "stacking")[client % 2]
        class_index = rng.randrange(10)
        yield {
            "created_at": day_ago + timedelta(milliseconds=i),
            "strategy": strategy,
            "arm": arm,
            "experiment": experiment,
            "label": str(class_index),
            "class_index": class_index,
            "confidence": 0.5 + rng.random() / 2,
            "probabilities": None,
            "members": [],
            "fallback": None,
            "degraded": [],
            "latency_ms": 5.0 + rng.random() * 10,
            "model_version": version,
            "client_hash": f"{client:064x}",
            "image_sha256": f"{i:064x}",
            "error": None,
            "route_reason": "assigned" if experiment else None,
        }


def seed(app: Any, rows: int, start: int, rng: random.Random) -> None:
    """Add ``rows`` predictions (30% with a verdict) through the store's bulk path."""
    import store
    from store.bulk import add_predictions

    version = app.extensions["chorus"].models.bundle.version
    with app.app_context():
        session = store.get_session()
        made = seeded_rows(rows, start, version, rng)
        with tqdm(total=rows, desc=f"seeding to {start + rows:,}", unit="row") as bar:
            while True:
                chunk = [row for _, row in zip(range(CHUNK), made, strict=False)]
                if not chunk:
                    break
                verdicts = {
                    i: row["class_index"] if rng.random() < 0.8 else rng.randrange(10)
                    for i, row in enumerate(chunk)
                    if rng.random() < LABELLED
                }
                add_predictions(session, chunk, verdicts)
                bar.update(len(chunk))


def write_calls(app: Any) -> dict[str, Callable[[], Any]]:
    """The request path's write alone: one routed, labelled-later experiment prediction through
    ``store.add_prediction`` (insert, roll-ups, commit), and its roll-up statements alone (run
    in a transaction that is rolled back, so they count nothing)."""
    import store
    from store import rollups

    version = app.extensions["chorus"].models.bundle.version
    rng = random.Random(1)
    row = next(seeded_rows(1, 4, version, rng))  # kind 4: the sticky experiment
    del row["created_at"]  # now, as the recorder writes it

    def record() -> None:
        with app.app_context():
            store.add_prediction(store.get_session(), **row)

    def upserts() -> None:
        with app.app_context():
            session = store.get_session()
            try:
                rollups.record_predictions(session, [row])
            finally:
                session.rollback()

    return {"record (insert+roll-ups+commit)": record, "  of which roll-up upserts": upserts}


def median_ms(call: Callable[[], Any], repeat: int) -> float:
    """Median wall time of ``call`` over ``repeat`` runs after one warm-up."""
    call()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def reads(client: Any) -> dict[str, Callable[[], Any]]:
    """The read endpoints whose cost must stay flat: each checks its status."""

    def get(path: str, admin: bool = True) -> Callable[[], Any]:
        def call() -> None:
            response = client.get(path, headers=admin_headers() if admin else {})
            if response.status_code != 200:
                raise SystemExit(f"GET {path} answered {response.status_code}")
            response.close()

        return call

    def guardian() -> None:
        import store
        from serving.reports import routed_inputs

        with client.application.app_context():
            session = store.get_session()
            row = store.get_experiment(session, EXPERIMENT)
            routed_inputs(session, EXPERIMENT, row.definition)
            session.rollback()

    return {
        "guardian routed_inputs": guardian,
        "/admin": get("/admin"),
        "/admin/predictions?strategy=ab&outcome=wrong": get(
            "/admin/predictions?strategy=ab&outcome=wrong"
        ),
        f"/admin/experiments/{EXPERIMENT}": get(f"/admin/experiments/{EXPERIMENT}"),
        "/api/v1/experiments/ab/results": get("/api/v1/experiments/ab/results"),
        f"/api/v1/experiments/{EXPERIMENT}/results": get(
            f"/api/v1/experiments/{EXPERIMENT}/results"
        ),
        "/api/v1/stats": get("/api/v1/stats"),
    }


def predict_call(client: Any, image: bytes) -> Callable[[], Any]:
    """One real upload to bagging through the whole request path."""

    def call() -> None:
        data = {"image": (io.BytesIO(image), "x.png"), "strategy": "bagging"}
        response = client.post("/api/v1/predict", data=data)
        if response.status_code != 200:
            raise SystemExit(f"predict answered {response.status_code}: {response.get_json()}")
        response.close()

    return call


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--predict-repeat", type=int, default=201)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{os.path.join(tmp, 'scale.db')}"
        app = build_app(url)
        client = app.test_client()
        create_experiment(client)
        image = trouser_png()
        predict = predict_call(client, image)
        # The reference: the same app on a database that holds only the predictions the
        # measurement itself makes, measured in alternation with the seeded one at each size.
        empty = build_app(f"sqlite:///{os.path.join(tmp, 'empty.db')}")
        predict_empty = predict_call(empty.test_client(), image)
        baseline = median_ms(predict, args.predict_repeat)
        writes = write_calls(app)
        at_zero = {name: median_ms(call, args.predict_repeat) for name, call in writes.items()}
        print(f"{cpu_model()}; {url.split(':')[0]}; predict median at 0 rows: {baseline:.2f} ms")
        for name, ms in at_zero.items():
            print(f"{name.strip()} median at 0 rows: {ms:.2f} ms")
        missed = False
        seeded = 0
        results: dict[int, dict[str, float]] = {}
        for size in sizes:
            seed(app, size - seeded, seeded, rng)
            seeded = size
            timings = {name: median_ms(call, args.repeat) for name, call in reads(client).items()}
            timings["predict (median)"], timings["predict, empty database"] = forward.median_ms(
                predict, predict_empty, repeat=args.predict_repeat, warmup=1
            )
            for name, call in writes.items():
                timings[name] = median_ms(call, args.predict_repeat)
            results[size] = timings
        names = list(next(iter(results.values())))
        width = max(len(n) for n in names)
        print(f"\n{'endpoint (median ms)':<{width}}" + "".join(f"{s:>12,}" for s in sizes))
        for name in names:
            print(f"{name:<{width}}" + "".join(f"{results[s][name]:>12.1f}" for s in sizes))
        largest = results[sizes[-1]]
        print()
        for name, ms in largest.items():
            if name in writes:
                continue  # reported, no target of its own (it is part of the predict path)
            if name == "predict, empty database":
                continue  # the reference of the line above
            if name.startswith("predict"):
                ratio = ms / largest["predict, empty database"]
                ok = ratio <= PREDICT_SLOWDOWN
                print(
                    f"predict at {sizes[-1]:,} rows / on an empty database, alternating: "
                    f"{ratio:.2f}x (target <= {PREDICT_SLOWDOWN:.2f}x): "
                    f"{'MET' if ok else 'MISSED'} (/ at 0 rows at the start: "
                    f"{ms / baseline:.2f}x)"
                )
            else:
                ok = ms <= READ_TARGET_MS
                print(
                    f"{name} at {sizes[-1]:,}: {ms:.0f} ms (target <= {READ_TARGET_MS:.0f} ms): "
                    f"{'MET' if ok else 'MISSED'}"
                )
            missed |= not ok
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
