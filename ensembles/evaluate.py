"""`python -m ensembles.evaluate [--json]`: test-set and photo-like accuracy, NLL and ECE.

Reports every member and every strategy of an artifact on the 10,000 Fashion-MNIST test images
(never used for fitting), plus accuracy on a photo-like set generated from the same test images
and pushed through the upload preprocessing.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Mapping
from itertools import combinations

import numpy as np
from tqdm.auto import tqdm

from ensembles import aggregation, metrics
from ensembles.base import Ensemble
from models.banks import member_probabilities
from models.cnn import flops_per_image
from models.data import load_fashion_mnist

log = logging.getLogger(__name__)
PHOTO_SEED = 2024


def members_probabilities(
    ensembles: Mapping[str, Ensemble], images: np.ndarray, desc: str = "test"
) -> dict[str, np.ndarray]:
    """Each ensemble's ``(K, N, C)`` member probabilities over uint8 images.

    A checkpoint shared by several ensembles (Stacking holds the Bagging and Boosting members)
    runs once: the widest ensemble goes first and the others reuse its outputs when every one
    of their members is the very same checkpoint.
    """
    seen: dict[str, tuple[dict, np.ndarray]] = {}
    out: dict[str, np.ndarray] = {}
    for name, ensemble in sorted(ensembles.items(), key=lambda kv: -len(kv[1].member_names_)):
        members = list(zip(ensemble.member_names_, ensemble.members_, strict=True))
        if all(m in seen and seen[m][0] is sd for m, sd in members):
            out[name] = np.stack([seen[m][1] for m, _ in members])
            continue
        # the serving forward: a member that raises answers NaN and is dropped, not fatal
        out[name] = member_probabilities(
            ensemble.forward_members, images, batch_size=1000, desc=f"{desc}: {name}"
        )
        for (m, sd), probs in zip(members, out[name], strict=True):
            seen.setdefault(m, (sd, probs))
    return {name: out[name] for name in ensembles}


def evaluate_ensembles(
    ensembles: Mapping[str, Ensemble], images: np.ndarray, labels: np.ndarray, desc: str = "test"
) -> dict:
    """Metrics per strategy and per member, each strategy through its own ``combine_outputs``."""
    out: dict = {"strategies": {}, "members": {}, "variants": {}, "n": int(len(labels))}
    correct: dict[str, np.ndarray] = {}
    for name, probs in members_probabilities(ensembles, images, desc).items():
        ensemble = ensembles[name]
        result = ensemble.combine_outputs(ensemble.split_outputs(probs))
        out["strategies"][name] = metrics.summary(result.probabilities, labels)
        if result.members_used is not None:  # a cascade: what its early exits cost
            mean_members = float(result.members_used.mean())
            out["strategies"][name]["mean_members"] = round(mean_members, 4)
            out["strategies"][name]["mean_mflops"] = round(
                mean_members * flops_per_image(ensemble.cnn) / 1e6, 2
            )
        correct[name] = result.predictions == labels
        for member, p in zip(result.member_names, result.member_probabilities, strict=True):
            out["members"].setdefault(member, metrics.summary(p, labels))
        if name == "bagging":
            hard = aggregation.vote(result.member_probabilities)
            out["variants"]["bagging_hard_vote"] = round(metrics.accuracy(hard, labels), 6)
        if name == "boosting":
            discrete = aggregation.vote(result.member_probabilities, result.weights)
            out["variants"]["boosting_discrete_samme"] = round(
                metrics.accuracy(discrete, labels), 6
            )
    out["paired"] = {
        f"{a} vs {b}": metrics.mcnemar(correct[a], correct[b]) for a, b in combinations(correct, 2)
    }
    return out


def photo_like_canvases(
    images: np.ndarray, labels: np.ndarray, n: int, seed: int = PHOTO_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Render ``n`` test images as photo-like uploads and map them back through preprocessing."""
    from models.photoset import build_photo_set
    from models.preprocess import to_uint8_canvas

    photos = build_photo_set(images, labels, n=n, seed=seed)
    canvases = [
        to_uint8_canvas(data) for data, _ in tqdm(photos, desc="photo-like set", leave=False)
    ]
    return np.stack(canvases), np.asarray([label for _, label in photos], dtype=np.int64)


def evaluate_photo_like(
    ensembles: Mapping[str, Ensemble], images: np.ndarray, labels: np.ndarray, n: int
) -> dict:
    """Accuracy of every strategy on the photo-like set."""
    canvases, photo_labels = photo_like_canvases(images, labels, n)
    report = evaluate_ensembles(ensembles, canvases, photo_labels, desc="photo")
    return {
        "n": int(len(photo_labels)),
        "seed": PHOTO_SEED,
        "strategies": {k: v["accuracy"] for k, v in report["strategies"].items()},
        "best_member": max(v["accuracy"] for v in report["members"].values()),
    }


def _table(report: dict) -> str:
    lines = [f"model version {report['version']}  (test n={report['test']['n']})", ""]
    lines.append(f"{'':22}{'accuracy':>10}{'NLL':>10}{'ECE':>10}{'members':>10}{'MFLOP':>9}")
    for group in ("strategies", "members"):
        for name, m in report["test"][group].items():
            line = f"{name:22}{m['accuracy']:>10.4f}{m['nll']:>10.4f}{m['ece']:>10.4f}"
            if "mean_members" in m:  # a cascade: mean members run and MFLOP per image
                line += f"{m['mean_members']:>10.2f}{m['mean_mflops']:>9.1f}"
            lines.append(line)
        lines.append("")
    for name, acc in report["test"]["variants"].items():
        lines.append(f"{name:22}{acc:>10.4f}")
    if report["test"].get("paired"):
        lines.append("\npaired (exact McNemar): images only the first / only the second got right")
        for pair, m in report["test"]["paired"].items():
            lines.append(f"{pair:22}{m['a_only']:>6} /{m['b_only']:>4}   p = {m['p_value']:.2g}")
    if "photo" in report:
        lines.append("")
        lines.append(
            f"photo-like uploads (n={report['photo']['n']}, seed {report['photo']['seed']}):"
        )
        for name, acc in report["photo"]["strategies"].items():
            lines.append(f"{name:22}{acc:>10.4f}")
    lines.append(f"\nseconds: {report['seconds']:.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Evaluate an artifact and print a table (or one JSON object with --json)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default=None, help="artifact version (default: newest)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N test images")
    parser.add_argument("--photo-size", type=int, default=2000, help="photo-like images (0: skip)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.json else logging.INFO)

    from ensembles.bundle import load_bundle

    started = time.perf_counter()
    bundle = load_bundle(args.version)
    data = load_fashion_mnist()
    images, labels = data.test_images[: args.limit], data.test_labels[: args.limit]
    report = {
        "version": bundle.version,
        "test": evaluate_ensembles(bundle.ensembles, images, labels),
    }
    if args.photo_size:
        report["photo"] = evaluate_photo_like(bundle.ensembles, images, labels, args.photo_size)
    report["seconds"] = time.perf_counter() - started
    sys.stdout.write((json.dumps(report, indent=2) if args.json else _table(report)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
