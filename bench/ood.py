"""How well each signal tells Fashion-MNIST from foreign images, and what the abstention does.

`python -m bench.ood [--version V] [--test N] [--photo-like N] [--per-family N]` scores, with
the shipped artifact's fitted combiner and threshold (``python -m ensembles.abstention``, fitted
on the blend split and the OOD *fit* set only): Fashion-MNIST test images encoded as PNG and
photo-like renderings of test images, against the OOD *evaluation* set (digits of odd index,
crops of sample photos the fit never saw, shapes, noise and gradients from other seeds), every
image through the upload preprocessing. It prints, per strategy, the AUROC
(``sklearn.metrics.roc_auc_score``, OOD = positive) of four signals per OOD family and overall:
one member's max-softmax (the best member by blend accuracy), the ensemble's max-softmax,
the members' mutual information, and the combined score; then the abstention rate at the
shipped threshold on every set. Uploads preprocessing rejects (e.g. pure noise) are counted
apart: they get an error, not an answer.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

from bench.load import cpu_model
from ensembles.abstention import FAMILIES, Scored, ood_uploads, photo_like, png, score_uploads
from ensembles.bundle import EnsembleBundle, load_bundle
from ensembles.uncertainty import FEATURES, Abstainer
from models.data import load_fashion_mnist

log = logging.getLogger(__name__)
SIGNALS = ("member MSP", "ensemble MSP", "mutual info", "combined")
#: Seeds of the evaluation subsets (test rows, photo-like rendering): fixed, so runs compare.
TEST_SEED, PHOTO_SEED = 11, 2024
_MI = FEATURES.index("mutual_information")


def best_member(bundle: EnsembleBundle) -> str:
    """The member with the highest blend (validation) accuracy: the single-model baseline."""
    accuracy = {
        name: bundle.manifest["members"][name]["val_accuracy"] for name in bundle.bank.names
    }
    return max(accuracy, key=accuracy.get)


def signals(scored: Scored, strategy: str, abstainer: Abstainer, member: int) -> np.ndarray:
    """``(N, 4)`` uncertainty signals, higher = more likely foreign, in ``SIGNALS`` order."""
    result = scored.results[strategy]
    features = scored.features[strategy]
    return np.column_stack(
        [
            1.0 - scored.member_probabilities[member].max(axis=1),
            1.0 - result.probabilities.max(axis=1),
            features[:, _MI],
            abstainer.scores(features),
        ]
    )


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """AUROC of one signal, OOD positive."""
    y = np.concatenate([np.zeros(len(inside)), np.ones(len(outside))])
    return float(roc_auc_score(y, np.concatenate([inside, outside])))


def report(
    bundle: EnsembleBundle,
    abstainer: Abstainer,
    inside: dict[str, Scored],
    outside: Scored,
    families: Sequence[str],
) -> list[str]:
    """The printed tables: AUROC per strategy and family, then abstention rates."""
    member_name = best_member(bundle)
    member = bundle.bank.names.index(member_name)
    accepted = np.asarray(families)[outside.accepted]
    out = [f"single member: {member_name} (best blend accuracy); OOD = positive class", ""]
    head = f"{'strategy':10} {'OOD family':12} {'n':>5} " + " ".join(f"{s:>13}" for s in SIGNALS)
    rate_rows = []
    for strategy in bundle.strategies:
        out += [f"AUROC against Fashion-MNIST test (PNG), {strategy}", head]
        test = signals(inside["test"], strategy, abstainer, member)
        ood = signals(outside, strategy, abstainer, member)
        for family in (*FAMILIES, "overall"):
            rows = ood if family == "overall" else ood[accepted == family]
            if len(rows) == 0:
                out.append(f"{strategy:10} {family:12} {0:>5}   (all rejected by preprocessing)")
                continue
            cells = " ".join(f"{auroc(test[:, j], rows[:, j]):>13.4f}" for j in range(len(SIGNALS)))
            out.append(f"{strategy:10} {family:12} {len(rows):>5} {cells}")
        photo = signals(inside["photo_like"], strategy, abstainer, member)
        cells = " ".join(f"{auroc(photo[:, j], ood[:, j]):>13.4f}" for j in range(len(SIGNALS)))
        out += [f"{strategy:10} {'overall*':12} {len(ood):>5} {cells}", ""]
        abstain = {
            "test png": test[:, 3] >= abstainer.threshold,
            "photo-like": photo[:, 3] >= abstainer.threshold,
        }
        for family in FAMILIES:
            abstain[family] = ood[accepted == family, 3] >= abstainer.threshold
        abstain["all OOD"] = ood[:, 3] >= abstainer.threshold
        rate_rows.append(
            f"{strategy:10} "
            + " ".join(f"{(v.mean() if v.size else float('nan')):>10.1%}" for v in abstain.values())
        )
    out.append("* overall*: against photo-like renderings of test images instead of the PNGs")
    out += [
        "",
        f"abstention at the shipped threshold {abstainer.threshold:.4f} (chosen on blend data "
        "for <= 5% in-distribution abstention)",
        f"{'strategy':10} "
        + " ".join(f"{k:>10}" for k in ("test png", "photo-like", *FAMILIES, "all OOD")),
        *rate_rows,
        "",
        "rejected by preprocessing (an error, not an answer): "
        + ", ".join(
            f"{family} {int((np.asarray(families)[~outside.accepted] == family).sum())}"
            for family in FAMILIES
        )
        + f"; test {int((~inside['test'].accepted).sum())}, "
        f"photo-like {int((~inside['photo_like'].accepted).sum())}",
    ]
    return out


def main(argv: list[str] | None = None) -> int:
    """Score the evaluation sets through the serving path and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default=None, help="artifact version (default: newest)")
    parser.add_argument("--test", type=int, default=1000, help="Fashion-MNIST test images")
    parser.add_argument("--photo-like", type=int, default=500, help="photo-like test images")
    parser.add_argument("--per-family", type=int, default=200, help="OOD images per family")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    bundle = load_bundle(args.version)
    if bundle.abstainer is None:
        sys.stderr.write(
            f"model version {bundle.version} has no abstention combiner; run "
            "python -m ensembles.abstention --artifact models/artifacts/<version>\n"
        )
        return 1
    data = load_fashion_mnist()
    rng = np.random.default_rng(TEST_SEED)
    rows = rng.choice(
        len(data.test_images), size=min(args.test, len(data.test_images)), replace=False
    )
    photo_rows = rows[: args.photo_like]
    inside = {
        "test": score_uploads(bundle, [png(im) for im in data.test_images[rows]], "test png"),
        "photo_like": score_uploads(
            bundle, photo_like(data.test_images[photo_rows], PHOTO_SEED), "test photo-like"
        ),
    }
    ood = ood_uploads("eval", args.per_family)
    outside = score_uploads(bundle, [d for _, d in ood], "ood eval")
    lines = [
        f"model version {bundle.version}; Fashion-MNIST test PNG n={len(rows)}, photo-like "
        f"n={len(photo_rows)}, OOD eval {args.per_family} per family; CPU {cpu_model()}",
        "",
        *report(bundle, bundle.abstainer, inside, outside, [f for f, _ in ood]),
        "",
        f"seconds: {time.perf_counter() - started:.1f}",
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
