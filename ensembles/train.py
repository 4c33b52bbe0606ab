"""`python -m ensembles.train`: train Bagging, SAMME Boosting and Stacking; write an artifact.

Splits the 60,000 training images into a *fit* split (members train on it) and a *blend* split
(validation: the meta-model fits on it, member validation accuracy is measured on it). The 10,000
test images are only scored, after everything is fitted. Writes
``models/artifacts/<version>/`` with safetensors weights, the meta-model as plain arrays and a
manifest recording how the artifact was made and how well it does.
"""

from __future__ import annotations

import argparse
import logging
import platform
import shlex
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from ensembles.bagging import Bagging
from ensembles.boosting import Boosting
from ensembles.evaluate import evaluate_ensembles, evaluate_photo_like
from ensembles.members import MemberFactory
from ensembles.stacking import META_CHOICES, Stacking
from ensembles.trainer import TrainConfig, resolve_device
from models.cnn import CNNConfig
from models.data import Dataset, load_fashion_mnist, load_image_folder, train_val_split
from models.registry import ARTIFACT_ROOT, save_artifact

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train the Chorus ensembles and write an artifact.")
    p.add_argument(
        "--data", type=Path, default=None, help="ImageFolder tree (default: Fashion-MNIST)"
    )
    p.add_argument("--out", type=Path, default=ARTIFACT_ROOT, help="artifact root directory")
    p.add_argument("--version", default=None, help="artifact version name (default: timestamp)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stages", default="32,64,128", help="channels per conv stage")
    p.add_argument("--epochs", type=int, default=8, help="epochs per member")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--bagging-members", type=int, default=5)
    p.add_argument("--boosting-members", type=int, default=4)
    p.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "bf16", "fp32"),
        help="training arithmetic: auto = bfloat16 autocast where the hardware has it",
    )
    p.add_argument("--learning-rate", type=float, default=0.3, help="SAMME shrinkage")
    p.add_argument(
        "--meta-model",
        default="auto",
        choices=META_CHOICES,
        help="stacking meta-model: full (scikit-learn LogisticRegression), tied (one weight per "
        "member), or auto = whichever has the lower blend-split CV log-loss",
    )
    p.add_argument("--val-size", type=int, default=10000, help="blend/validation images")
    p.add_argument("--subset", type=int, default=None, help="use only N training images")
    p.add_argument("--test-subset", type=int, default=None, help="score only N test images")
    p.add_argument("--photo-size", type=int, default=2000, help="photo-like images (0: skip)")
    return p.parse_args(argv)


def code_revision(repo: Path = REPO_ROOT) -> dict:
    """The git commit the training code came from and whether tracked files had local edits,
    so an artifact names the code that made it (both None outside a git checkout)."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=repo, capture_output=True, text=True, check=True, timeout=30
        )
        return done.stdout.strip()

    try:
        return {
            "commit": git("rev-parse", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        }
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def load_data(args: argparse.Namespace) -> Dataset:
    data = load_image_folder(args.data, seed=args.seed) if args.data else load_fashion_mnist()
    if args.subset:
        data = Dataset(
            data.train_images[: args.subset],
            data.train_labels[: args.subset],
            data.test_images,
            data.test_labels,
            data.classes,
            data.checksum,
            data.source,
        )
    return data


def train(args: argparse.Namespace) -> Path:
    """Fit all three strategies, score them, and save the artifact; returns its directory."""
    started = time.perf_counter()
    revision = code_revision()
    data = load_data(args)
    n_train = len(data.train_labels)
    val_size = min(args.val_size, n_train // 5)
    fit_idx, blend_idx = train_val_split(n_train, val_size, seed=args.seed)
    cnn = CNNConfig(
        stages=tuple(int(c) for c in args.stages.split(",")), num_classes=len(data.classes)
    )
    train_cfg = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, precision=args.precision
    )
    factory = MemberFactory(cnn=cnn, train=train_cfg, seed=args.seed, device=args.device)
    log.info(
        "training on %s: %d fit, %d blend, %d test images, device %s",
        data.source,
        len(fit_idx),
        len(blend_idx),
        len(data.test_labels),
        resolve_device(args.device),
    )
    seconds: dict[str, float] = {}

    t = time.perf_counter()
    bagging = Bagging(args.bagging_members, factory=factory, classes=data.classes)
    bagging.fit(data.train_images, data.train_labels, fit_idx)
    seconds["bagging"] = time.perf_counter() - t

    t = time.perf_counter()
    boosting = Boosting(
        args.boosting_members,
        learning_rate=args.learning_rate,
        factory=factory,
        classes=data.classes,
    )
    boosting.fit(data.train_images, data.train_labels, fit_idx)
    seconds["boosting"] = time.perf_counter() - t

    t = time.perf_counter()
    stacking = Stacking(cv=3, meta=args.meta_model, factory=factory, classes=data.classes)
    stacking.set_members(
        bagging.members_ + boosting.members_, bagging.member_names_ + boosting.member_names_
    )
    stacking.fit(
        data.train_images,
        data.train_labels,
        blend_idx,
        member_train_indices=bagging.train_indices_ + boosting.train_indices_,
    )
    seconds["stacking_meta"] = time.perf_counter() - t
    seconds["training_total"] = time.perf_counter() - started

    ensembles = {"bagging": bagging, "boosting": boosting, "stacking": stacking}
    t = time.perf_counter()
    test_images = data.test_images[: args.test_subset]
    test_labels = data.test_labels[: args.test_subset]
    test = evaluate_ensembles(ensembles, test_images, test_labels)
    photo = None
    if args.photo_size and not args.data:
        try:
            photo = evaluate_photo_like(ensembles, test_images, test_labels, args.photo_size)
        except Exception:  # a scoring problem must not throw away a finished training run
            log.exception("photo-like evaluation failed; run `make evaluate` after fixing it")
    seconds["evaluation"] = time.perf_counter() - t

    version = args.version or datetime.now(UTC).strftime("fmnist-%Y%m%d-%H%M%S")
    val_acc = dict(zip(stacking.member_names_, stacking.member_val_accuracy_, strict=True))
    manifest = {
        "format": 1,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m ensembles.train " + shlex.join(sys.argv[1:]),
        "code": revision,
        "classes": list(data.classes),
        "cnn": cnn.to_dict(),
        "train": train_cfg.to_dict(),
        "seed": args.seed,
        "device": str(resolve_device(args.device)),
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
        },
        "data": {
            "source": data.source,
            "checksum_sha256": data.checksum,
            "fit_size": int(len(fit_idx)),
            "blend_size": int(len(blend_idx)),
            "test_size": int(len(test_labels)),
            "split_seed": args.seed,
        },
        "strategies": {
            "bagging": {
                "members": bagging.member_names_,
                "combine": bagging.combine,
                "sampling": "bootstrap (n draws with replacement) of the fit split",
            },
            "boosting": {
                "members": boosting.member_names_,
                "algorithm": "SAMME",
                "alphas": boosting.alphas_,
                "weighted_errors": boosting.errors_,
                "learning_rate": boosting.learning_rate,
                "combine": boosting.combine,
                "sampling": "weighted resampling (n draws with replacement, p = sample weights)",
            },
            "stacking": {
                "members": stacking.member_names_,
                "meta": {
                    "type": "multinomial logistic regression",
                    "features": "log member probabilities",
                    "candidates": stacking.meta,
                    "chosen": stacking.meta_choice_,
                    "cv_log_loss": stacking.meta_cv_log_loss_,
                    "cv_folds": stacking.cv,
                    "fitted_on": "blend split (no member trained on it)",
                },
                "best_member": stacking.best_member_,
            },
        },
        "members": {
            name: {"val_accuracy": round(val_acc[name], 6), "test": test["members"][name]}
            for name in stacking.member_names_
        },
        "metrics": {"test": test, "photo_like": photo},
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }
    members = dict(zip(stacking.member_names_, stacking.members_, strict=True))
    path = save_artifact(args.out, version, manifest, members, stacking.meta_.to_arrays())
    log.info("wrote %s in %.0f s", path, time.perf_counter() - started)
    for name, m in test["strategies"].items():
        log.info(
            "test %-9s accuracy %.4f  nll %.4f  ece %.4f", name, m["accuracy"], m["nll"], m["ece"]
        )
    if photo:
        log.info("photo-like accuracy %s", photo["strategies"])
    return path


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    path = train(parse_args(argv))
    sys.stdout.write(f"{path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
