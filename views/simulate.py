"""``flask simulate``: labelled Fashion-MNIST test images through the A/B path, then feedback.

It calls the same service function as the API, in-process, with each 28x28 test image encoded
as PNG so preprocessing runs for real; the admin page then shows real numbers.
"""

from __future__ import annotations

import logging
import random
from collections import Counter

import click
import numpy as np
from flask.cli import with_appcontext
from tqdm import tqdm

from views import samples
from views.service import ServiceError, get_bundle, give_feedback, predict_image

log = logging.getLogger(__name__)


@click.command("simulate")
@click.option("--n", "n", default=1000, show_default=True, type=click.IntRange(1, 1_000_000),
              help="How many A/B predictions to make.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed for the images, clients and anonymous arm draws.")
@click.option("--client-ids", default=200, show_default=True, type=click.IntRange(0, 10**9),
              help="Distinct simulated clients (sticky arms); 0 makes every request anonymous.")
@with_appcontext
def simulate_command(n: int, seed: int, client_ids: int) -> None:
    """Send N labelled test images through A/B and give the true label as feedback."""
    split = samples.test_split()
    if split is None:
        raise click.ClickException(
            "Fashion-MNIST test images not found; set FASHION_MNIST_DIR or install the Debian "
            "package dataset-fashion-mnist."
        )
    try:
        get_bundle()
    except ServiceError as exc:
        raise click.ClickException(str(exc)) from exc
    rng = np.random.default_rng(seed)
    random.seed(seed)  # anonymous requests draw their arm from the random module
    indices = rng.integers(0, len(split), size=n)
    clients = rng.integers(0, client_ids, size=n) if client_ids else None
    served, correct, failed = Counter(), Counter(), 0
    service_log = logging.getLogger("views.service")
    level = service_log.level
    service_log.setLevel(logging.WARNING)  # one line per prediction would drown the bar
    try:
        for i in tqdm(range(n), desc="simulate", unit="img"):
            png, label = samples.sample_png(int(indices[i]))
            client = f"sim-{seed}-{clients[i]}" if clients is not None else None
            try:
                body = predict_image(png, "ab", client_id=client).body
            except ServiceError as exc:
                failed += 1
                log.warning("simulated request %d failed: %s", i, exc)
                continue
            served[body["arm"]] += 1
            correct[body["arm"]] += give_feedback(body["prediction_id"], label)
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
