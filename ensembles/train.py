"""`python -m ensembles.train`: train Bagging, SAMME Boosting, Stacking and a Cascade; write an
artifact.

Splits the 60,000 training images into a *fit* split (members train on it) and a *blend* split
(validation: the meta-model fits on it, the cascade's order and threshold are chosen on it,
member validation accuracy is measured on it). The 10,000 test images are only scored, after
everything is fitted. Writes ``models/artifacts/<version>/`` with safetensors weights, the
meta-model and the members' blend-split probabilities as plain arrays, a few held-out test images
per class (the version's sample gallery), and a manifest recording how the artifact was made and
how well it does. With ``--data DIR`` the default version is named after DIR.

``--members-from VERSION`` skips member training: the members (and Bagging's and Boosting's
specs, alphas included) come from that verified artifact under ``--artifacts``, and everything
fitted on the blend split (meta-model, cascade, blend arrays) and all scoring is redone exactly
as a full run does it. The stacking fit is deterministic, so the refit reproduces the source's
meta-model; the manifest records whether it did (``members_origin.stacking_meta_identical``).
"""

from __future__ import annotations

import argparse
import copy
import logging
import platform
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from ensembles.bagging import Bagging
from ensembles.boosting import Boosting
from ensembles.cascade import Cascade, plan_cascade
from ensembles.evaluate import evaluate_ensembles, evaluate_photo_like
from ensembles.members import MemberFactory
from ensembles.stacking import META_CHOICES, Stacking
from ensembles.trainer import TrainConfig
from models.cnn import CNNConfig
from models.data import (
    FASHION_MNIST,
    IMAGE_FOLDER,
    Dataset,
    gallery_indices,
    load_fashion_mnist,
    load_image_folder,
    train_val_split,
)
from models.manifest import Manifest
from models.registry import (
    ARTIFACT_ROOT,
    BLEND_FILE,
    GALLERY_FILE,
    Artifact,
    ArtifactError,
    load_artifact,
    save_artifact,
)
from models.tensor import resolve_device

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parent.parent
BLEND_DTYPE = np.float32  # 10,000 x 9 x 10 x 4 bytes = 3.6 MB; ample for refitting
#: Held-out test images stored per class as the version's own samples (784 bytes each).
GALLERY_PER_CLASS = 4
#: Longest data-folder slug in a version name; with "-YYYYmmdd-HHMMSS" it stays under 64.
SLUG_MAX = 40


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The CLI options; ``argv`` (default ``sys.argv[1:]``) is kept for the manifest's command."""
    p = argparse.ArgumentParser(description="Train the Chorus ensembles and write an artifact.")
    p.add_argument(
        "--data", type=Path, default=None, help="ImageFolder tree (default: Fashion-MNIST)"
    )
    p.add_argument(
        "--artifacts",
        "--out",
        dest="out",
        metavar="ROOT",
        type=Path,
        default=ARTIFACT_ROOT,
        help="artifact root: where the new version is written and --members-from is read",
    )
    p.add_argument(
        "--version",
        default=None,
        help="artifact version name (default: fmnist-<timestamp>, or with --data the data "
        "folder's name and a timestamp)",
    )
    p.add_argument(
        "--members-from",
        default=None,
        metavar="VERSION",
        help="reuse the trained members (and Bagging/Boosting specs) of this artifact version; "
        "refit only what is fitted on the blend split, then score everything. The architecture, "
        "seed and training settings come from that artifact",
    )
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
    p.add_argument(
        "--abstention",
        action="store_true",
        help="then fit the abstention combiner on the new artifact (python -m "
        "ensembles.abstention; Fashion-MNIST only, needs scikit-image)",
    )
    args = p.parse_args(argv)
    if args.abstention and args.data:
        p.error("--abstention fits on Fashion-MNIST's blend split; it cannot be used with --data")
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def slug(name: str) -> str:
    """A folder name as a version-name prefix: lowercase letters, digits and single hyphens."""
    text = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return text[:SLUG_MAX].rstrip("-") or "data"


def default_version(data_dir: Path | None, now: datetime | None = None) -> str:
    """``fmnist-<timestamp>``, or ``<slug of the data folder>-<timestamp>`` with ``--data``, so
    the version says what it was trained on."""
    prefix = slug(data_dir.resolve().name) if data_dir is not None else "fmnist"
    return f"{prefix}-{(now or datetime.now(UTC)):%Y%m%d-%H%M%S}"


def gallery_arrays(data: Dataset) -> dict[str, np.ndarray]:
    """Up to ``GALLERY_PER_CLASS`` test-split images of each class (never training images),
    classes in turn, as the model sees them: the samples the version's home page offers."""
    picked = np.asarray(
        gallery_indices(data.test_labels, GALLERY_PER_CLASS * len(data.classes), GALLERY_PER_CLASS),
        dtype=np.int64,
    )
    return {
        "images": np.ascontiguousarray(data.test_images[picked], dtype=np.uint8),
        "labels": data.test_labels[picked].astype(np.int64),
        "indices": picked,
    }


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
    """Fashion-MNIST (or ``--data``), cut to ``--subset`` training images."""
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


@dataclass
class Members:
    """Trained Bagging and Boosting members, however they were obtained."""

    bagging: Bagging
    boosting: Boosting
    specs: dict  # the manifest's strategies.bagging / strategies.boosting entries
    train_indices: list[np.ndarray]  # per member: the images it may have trained on
    seconds: dict[str, float] = field(default_factory=dict)
    origin: dict | None = None  # --members-from: where the members came from


def train_members(
    args: argparse.Namespace, data: Dataset, fit_idx: np.ndarray, factory: MemberFactory
) -> Members:
    """Train Bagging's bootstrap members and Boosting's SAMME rounds on the fit split."""
    seconds = {}
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
    specs = {
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
    }
    indices = bagging.train_indices_ + boosting.train_indices_
    return Members(bagging, boosting, specs, indices, seconds)


def source_artifact(args: argparse.Namespace) -> tuple[Artifact, Manifest]:
    """The verified ``--members-from`` artifact and its parsed manifest."""
    source = load_artifact(args.members_from, args.out)
    return source, Manifest.from_dict(source.manifest)


def check_same_data(
    source: dict, data: Dataset, fit_idx: np.ndarray, blend_idx: np.ndarray
) -> None:
    """Refuse a refit on other data or another split: its members may have seen the blend."""
    recorded = source["data"]
    found = {
        "checksum_sha256": data.checksum,
        "fit_size": int(len(fit_idx)),
        "blend_size": int(len(blend_idx)),
    }
    wrong = {k: (recorded.get(k), v) for k, v in found.items() if recorded.get(k) != v}
    if wrong or tuple(source["classes"]) != tuple(data.classes):
        raise ArtifactError(
            f"--members-from {source['version']}: its members were trained on other data or "
            f"another split (recorded vs now: {wrong or 'classes differ'}); pass the same "
            "--data/--subset it was trained with"
        )


def members_from_artifact(
    source: Artifact, info: Manifest, data: Dataset, fit_idx: np.ndarray, factory: MemberFactory
) -> Members:
    """Bagging and Boosting rebuilt from an artifact's members, alphas and specs (no training).

    Their training images are not stored, but every member trained on a resample of the fit
    split (same data checksum, seed and sizes, checked), so the fit split is each one's
    superset: stacking's disjointness check against the blend split still holds.
    """
    spec = info.strategies

    def state_dicts(names: tuple[str, ...]) -> list[dict[str, torch.Tensor]]:
        return [source.members[name] for name in names]

    bagging = Bagging(
        len(spec.bagging.members),
        combine=spec.bagging.combine,
        factory=factory,
        classes=data.classes,
    ).set_members(state_dicts(spec.bagging.members), list(spec.bagging.members))
    boosting = (
        Boosting(
            len(spec.boosting.members),
            learning_rate=spec.boosting.learning_rate,
            combine=spec.boosting.combine,
            factory=factory,
            classes=data.classes,
        )
        .set_members(state_dicts(spec.boosting.members), list(spec.boosting.members))
        .set_alphas(list(spec.boosting.alphas))
    )
    raw = source.manifest
    boosting.errors_ = list(raw["strategies"]["boosting"].get("weighted_errors", []))
    specs = {k: copy.deepcopy(raw["strategies"][k]) for k in ("bagging", "boosting")}
    origin = {
        "version": source.version,
        "created_at": raw.get("created_at"),
        "command": raw.get("command"),
        "code": raw.get("code"),
        "seconds": raw.get("seconds"),
        "environment": raw.get("environment"),
    }
    k = len(spec.bagging.members) + len(spec.boosting.members)
    return Members(bagging, boosting, specs, [fit_idx] * k, origin=origin)


def _meta_difference(source_meta: dict[str, np.ndarray] | None, meta: dict) -> dict:
    """Whether a refit reproduced the source artifact's meta-model, bit for bit."""
    if source_meta is None or set(source_meta) != set(meta):
        return {"stacking_meta_identical": False, "stacking_meta_max_abs_diff": None}
    same_shape = all(np.shape(source_meta[k]) == np.shape(meta[k]) for k in meta)
    identical = same_shape and all(np.array_equal(source_meta[k], meta[k]) for k in meta)
    diff = (
        max(float(np.max(np.abs(source_meta[k] - meta[k]))) for k in meta) if same_shape else None
    )
    return {"stacking_meta_identical": bool(identical), "stacking_meta_max_abs_diff": diff}


def train(args: argparse.Namespace) -> Path:
    """Fit every strategy (or refit on reused members), score, save; returns the directory."""
    started = time.perf_counter()
    revision = code_revision()
    data = load_data(args)
    source = info = None
    if args.members_from:
        source, info = source_artifact(args)
        raw = source.manifest
        seed, val_size, cnn = int(raw["seed"]), int(raw["data"]["blend_size"]), info.cnn
        train_cfg = TrainConfig(**raw["train"])
        log.info(
            "members from %s: architecture, seed %d and training settings come from it",
            source.version,
            seed,
        )
    else:
        seed, val_size = args.seed, args.val_size
        cnn = CNNConfig(
            stages=tuple(int(c) for c in args.stages.split(",")), num_classes=len(data.classes)
        )
        train_cfg = TrainConfig(
            epochs=args.epochs, batch_size=args.batch_size, precision=args.precision
        )
    n_train = len(data.train_labels)
    val_size = min(val_size, n_train // 5)
    fit_idx, blend_idx = train_val_split(n_train, val_size, seed=seed)
    if source is not None:
        check_same_data(source.manifest, data, fit_idx, blend_idx)
    factory = MemberFactory(cnn=cnn, train=train_cfg, seed=seed, device=args.device)
    log.info(
        "%s on %s: %d fit, %d blend, %d test images, device %s",
        "refitting" if source is not None else "training",
        data.source,
        len(fit_idx),
        len(blend_idx),
        len(data.test_labels),
        resolve_device(args.device),
    )
    if source is not None:
        members = members_from_artifact(source, info, data, fit_idx, factory)
    else:
        members = train_members(args, data, fit_idx, factory)
    bagging, boosting = members.bagging, members.boosting
    seconds = dict(members.seconds)

    t = time.perf_counter()
    stacking = Stacking(cv=3, meta=args.meta_model, factory=factory, classes=data.classes)
    stacking.set_members(
        bagging.members_ + boosting.members_, bagging.member_names_ + boosting.member_names_
    )
    stacking.fit(
        data.train_images,
        data.train_labels,
        blend_idx,
        member_train_indices=members.train_indices,
    )
    seconds["stacking_meta"] = time.perf_counter() - t
    meta_arrays = stacking.meta_.to_arrays()
    if source is not None:
        members.origin.update(_meta_difference(source.meta_arrays, meta_arrays))
        if members.origin["stacking_meta_identical"]:
            log.info("refit reproduced %s's stacking meta-model exactly", source.version)
        else:
            log.warning(
                "refit meta-model differs from %s's (max |diff| %s)",
                source.version,
                members.origin["stacking_meta_max_abs_diff"],
            )

    t = time.perf_counter()
    blend_probs, blend_labels = stacking.blend_probabilities_, stacking.blend_labels_
    plan = plan_cascade(blend_probs, blend_labels, stacking.member_names_)
    by_name = dict(zip(stacking.member_names_, stacking.members_, strict=True))
    cascade = Cascade.from_plan(plan, factory=factory, classes=data.classes).set_members(
        [by_name[name] for name in plan.members], plan.members
    )
    log.info(
        "cascade: %s pool, threshold %g (blend accuracy %.4f, %.2f members per image)",
        plan.pool,
        plan.threshold,
        plan.blend_accuracy,
        plan.blend_mean_members,
    )
    seconds["cascade"] = time.perf_counter() - t
    seconds["training_total"] = time.perf_counter() - started

    ensembles = {"bagging": bagging, "boosting": boosting, "stacking": stacking, "cascade": cascade}
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

    version = args.version or default_version(args.data)
    gallery = gallery_arrays(data)
    val_acc = dict(zip(stacking.member_names_, stacking.member_val_accuracy_, strict=True))
    manifest = {
        "format": 1,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m ensembles.train " + shlex.join(args.argv),
        "code": revision,
        "members_from": args.members_from,
        "classes": list(data.classes),
        "cnn": cnn.to_dict(),
        "train": train_cfg.to_dict(),
        "seed": seed,
        "device": str(resolve_device(args.device)),
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
        },
        "data": {
            "dataset": IMAGE_FOLDER if args.data else FASHION_MNIST,
            "source": data.source,
            "checksum_sha256": data.checksum,
            "fit_size": int(len(fit_idx)),
            "blend_size": int(len(blend_idx)),
            "test_size": int(len(test_labels)),
            "split_seed": seed,
        },
        "strategies": {
            **members.specs,
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
            "cascade": plan.to_manifest(),
        },
        "blend": {
            "file": BLEND_FILE,
            "members": stacking.member_names_,
            "n": int(len(blend_idx)),
            "dtype": np.dtype(BLEND_DTYPE).name,
            "arrays": {
                "probabilities": "(K, N, C) member softmax on the blend split, members in order",
                "labels": "(N,) int64 blend labels",
                "indices": "(N,) int64 positions of the blend images in the training set",
            },
        },
        "gallery": {
            "file": GALLERY_FILE,
            "n": int(len(gallery["labels"])),
            "per_class": GALLERY_PER_CLASS,
            "split": "test (held out from every member and every fit)",
            "arrays": {
                "images": "(N, 28, 28) uint8 test images as the model sees them",
                "labels": "(N,) int64 class indices",
                "indices": "(N,) int64 positions of the images in the test split",
            },
        },
        "members": {
            name: {"val_accuracy": round(val_acc[name], 6), "test": test["members"][name]}
            for name in stacking.member_names_
        },
        "metrics": {"test": test, "photo_like": photo},
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }
    if members.origin is not None:
        manifest["members_origin"] = members.origin
    blend_arrays = {
        "probabilities": blend_probs.astype(BLEND_DTYPE),
        "labels": blend_labels.astype(np.int64),
        "indices": blend_idx.astype(np.int64),
    }
    path = save_artifact(
        args.out, version, manifest, by_name, meta_arrays, blend_arrays, gallery_arrays=gallery
    )
    log.info("wrote %s in %.0f s", path, time.perf_counter() - started)
    for name, m in test["strategies"].items():
        log.info(
            "test %-9s accuracy %.4f  nll %.4f  ece %.4f", name, m["accuracy"], m["nll"], m["ece"]
        )
    c = test["strategies"]["cascade"]
    log.info(
        "test cascade: %.2f members, %.1f MFLOP per image", c["mean_members"], c["mean_mflops"]
    )
    if photo:
        log.info("photo-like accuracy %s", photo["strategies"])
    if args.abstention:
        from ensembles import abstention

        abstention.fit(abstention.parse_args(["--artifact", str(path)]))
    return path


def main(argv: list[str] | None = None) -> int:
    """``make train``: train the members and combiners and write a new artifact version."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    path = train(parse_args(argv))
    sys.stdout.write(f"{path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
