"""CLI commands (microblog's shape: commands as a blueprint): ``flask simulate``.

``simulate`` sends labelled held-out images of the served version (Fashion-MNIST's test split
for a Fashion-MNIST version, else the version's stored gallery) through an experiment (``ab`` by
default) with the same ``PredictionService`` the API uses, in-process, each 28x28 image encoded as
PNG so preprocessing runs for real, then gives the true label as feedback; the console then shows
real numbers.
"""

from __future__ import annotations

import logging
from collections import Counter

import click
import numpy as np
from flask import Blueprint
from tqdm import tqdm

from serving.errors import ServingError
from views import samples
from views.context import services

log = logging.getLogger(__name__)
bp = Blueprint("cli", __name__, cli_group=None)


@bp.cli.command("simulate")
@click.option(
    "--n",
    "n",
    default=1000,
    show_default=True,
    type=click.IntRange(1, 1_000_000),
    help="How many A/B predictions to make.",
)
@click.option(
    "--seed",
    default=0,
    show_default=True,
    type=int,
    help="Seed for the images, clients and anonymous arm draws.",
)
@click.option(
    "--client-ids",
    default=200,
    show_default=True,
    type=click.IntRange(0, 10**9),
    help="Distinct simulated clients (sticky arms); 0 makes every request anonymous.",
)
@click.option(
    "--strategy",
    default="ab",
    show_default=True,
    help="The experiment or ensemble to send the images to.",
)
def simulate_command(n: int, seed: int, client_ids: int, strategy: str) -> None:
    """Send N labelled test images through an experiment and give the true label as feedback."""
    prediction = services().prediction
    try:
        bundle = prediction.bundle()
        split = samples.simulation_set(bundle)
        if split is None and bundle.fashion_mnist:
            raise click.ClickException(
                "Fashion-MNIST test images not found; set FASHION_MNIST_DIR or install the "
                "Debian package dataset-fashion-mnist."
            )
        if split is None:
            raise click.ClickException(
                f"Model version {bundle.version} stores no labelled sample images; retrain it "
                "with python -m ensembles.train (new versions store a few per class)."
            )
        if len(split) < n:
            log.info("simulate: %d requests over %d distinct images", n, len(split))
        if strategy not in prediction.strategies():
            raise click.ClickException(
                f"Unknown strategy {strategy!r}; choose one of {', '.join(prediction.strategies())}"
            )
    except ServingError as exc:
        raise click.ClickException(str(exc)) from exc
    rng = np.random.default_rng(seed)
    services().engine.rng.seed(seed)  # anonymous requests draw their arm from the engine's rng
    indices = rng.integers(0, len(split), size=n)
    clients = rng.integers(0, client_ids, size=n) if client_ids else None
    served, correct, failed = Counter(), Counter(), 0
    service_log = logging.getLogger("serving.service")
    level = service_log.level
    service_log.setLevel(logging.WARNING)  # one line per prediction would drown the bar
    try:
        for i in tqdm(range(n), desc="simulate", unit="img"):
            png, label = split.png(int(indices[i]))
            client = f"sim-{seed}-{clients[i]}" if clients is not None else None
            try:
                answer = prediction.predict(png, strategy, client_id=client)
                answer.run_after()  # shadows, as a server runs them after responding
                body = answer.body
            except ServingError as exc:
                failed += 1
                log.warning("simulated request %d failed: %s", i, exc)
                continue
            served[body["arm"]] += 1
            correct[body["arm"]] += prediction.feedback(body["prediction_id"], label).correct
    finally:
        service_log.setLevel(level)
    for arm in sorted(served):
        log.info(
            "simulate: %s served %d, correct %d (%.1f%%)",
            arm,
            served[arm],
            correct[arm],
            100.0 * correct[arm] / served[arm],
        )
    log.info("simulate: %d predictions, %d failed; see /admin for the comparison", n, failed)
    if failed == n:
        raise click.ClickException(
            f"All {n} simulated requests failed (see the warnings above); check the model "
            "artifact with GET /readyz, fix it and run simulate again."
        )
