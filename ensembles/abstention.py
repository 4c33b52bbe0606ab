"""Fit the abstention combiner of an artifact: ``python -m ensembles.abstention --artifact DIR``.

In-distribution: the artifact's blend split (10,000 training images no member trained on),
each encoded as PNG, plus photo-like renderings of some of them (``models.photoset``), so that
a light background or a tinted item alone does not look foreign. Out-of-distribution *fit*
images: scikit-learn's digits (even indices), crops of one half of scikit-image's sample
photos, shapes and noise/gradients from the fit seeds. ``bench.ood`` evaluates on the other
digits, the other photos and other seeds: the two OOD sets never share an image. Every image
goes through ``models.preprocess.analyse`` exactly as an upload does; test data is never read.

The fitted numbers (standardisation, logistic coefficients, threshold) go to
``abstention.json`` in the artifact, its sha256 and how it was made to ``manifest.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

from ensembles.base import Result
from ensembles.bundle import EnsembleBundle, load_bundle
from ensembles.uncertainty import FEATURES, Abstainer, feature_matrix, input_facts
from models.photoset import make_photo_like
from models.preprocess import PreprocessError, analyse
from models.registry import ABSTENTION_FILE, record_file
from models.tensor import to_tensor

log = logging.getLogger(__name__)

#: Families of out-of-distribution images, in report order.
FAMILIES: tuple[str, ...] = ("digits", "photos", "shapes", "noise", "gradients")
#: scikit-image sample photos, split once: the fit never sees an evaluation photo.
FIT_PHOTOS = ("camera", "coffee", "rocket", "grass", "brick", "moon", "page", "coins")
EVAL_PHOTOS = ("astronaut", "chelsea", "hubble_deep_field", "text", "clock", "gravel", "cat")
#: Generator seeds of the two OOD sets (shapes, noise, gradients, crops, encodings).
SEEDS = {"fit": 101, "eval": 202}
#: In-distribution abstention the threshold is chosen for (each strategy, each ID part).
DEFAULT_RATE = 0.05
#: Logistic regression's inverse regularisation strength (standardised features).
C = 1.0
#: Images per batched forward through the members.
CHUNK = 256


# -- out-of-distribution images -------------------------------------------------------------
def _encode(image: Image.Image, rng: np.random.Generator) -> bytes:
    """PNG or JPEG, as uploads arrive."""
    out = io.BytesIO()
    if rng.random() < 0.5:
        image.convert("RGB").save(out, "JPEG", quality=int(rng.integers(70, 96)))
    else:
        image.save(out, "PNG")
    return out.getvalue()


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, 3))  # type: ignore[return-value]


def digit_images(split: str, n: int, seed: int) -> list[bytes]:
    """scikit-learn's 8x8 digits scaled up (even indices fit, odd evaluate), either polarity."""
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(seed)
    images = load_digits().images
    pool = np.arange(0 if split == "fit" else 1, len(images), 2)
    out = []
    for index in rng.choice(pool, size=min(n, pool.size), replace=False):
        grey = (images[index] * (255.0 / 16.0)).astype(np.uint8)
        if rng.random() < 0.5:
            grey = 255 - grey  # dark digit on paper
        side = int(rng.integers(56, 257))
        resample = Image.Resampling.NEAREST if rng.random() < 0.3 else Image.Resampling.BICUBIC
        out.append(_encode(Image.fromarray(grey, "L").resize((side, side), resample), rng))
    return out


def _sample_photo(name: str) -> np.ndarray:
    import skimage.data

    array = np.asarray(getattr(skimage.data, name)())
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.ndim == 3:
        array = array[..., :3]
    return array.astype(np.uint8)


def photo_crops(split: str, n: int, seed: int) -> list[bytes]:
    """Random crops of scikit-image's bundled sample photos (disjoint photo lists per split)."""
    rng = np.random.default_rng(seed)
    photos = [_sample_photo(name) for name in (FIT_PHOTOS if split == "fit" else EVAL_PHOTOS)]
    out = []
    for i in range(n):
        photo = photos[i % len(photos)]
        height, width = photo.shape[:2]
        side = int(rng.integers(min(48, height, width), min(height, width) + 1))
        aspect = rng.uniform(0.7, 1.4)
        h, w = min(height, side), min(width, max(8, int(side * aspect)))
        y, x = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        out.append(_encode(Image.fromarray(np.ascontiguousarray(photo[y : y + h, x : x + w])), rng))
    return out


def shape_images(split: str, n: int, seed: int) -> list[bytes]:
    """Filled ellipses, rectangles, triangles and polygons in random colours on a plain ground."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        width, height = (int(v) for v in rng.integers(64, 321, 2))
        ground = (245, 245, 245) if rng.random() < 0.4 else _colour(rng)
        image = Image.new("RGB", (width, height), ground)
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(1, 4))):
            xs = np.sort(rng.integers(0, width, 2))
            ys = np.sort(rng.integers(0, height, 2))
            box = [int(xs[0]), int(ys[0]), int(xs[1]) + 4, int(ys[1]) + 4]
            kind = int(rng.integers(4))
            if kind == 0:
                draw.ellipse(box, fill=_colour(rng))
            elif kind == 1:
                draw.rectangle(box, fill=_colour(rng))
            else:
                corners = 3 if kind == 2 else int(rng.integers(5, 9))
                points = [
                    (int(rng.integers(0, width)), int(rng.integers(0, height)))
                    for _ in range(corners)
                ]
                draw.polygon(points, fill=_colour(rng))
        out.append(_encode(image, rng))
    return out


def noise_images(split: str, n: int, seed: int) -> list[bytes]:
    """Gaussian, uniform, blocky and smooth noise, grey or colour."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        side = int(rng.integers(48, 257))
        channels = 3 if rng.random() < 0.5 else 1
        kind = i % 4
        if kind == 0:
            pixels = rng.normal(128, rng.uniform(20, 80), (side, side, channels))
        elif kind == 1:
            pixels = rng.uniform(0, 255, (side, side, channels))
        else:  # blocky (nearest) or smooth (bicubic) low-resolution noise, upscaled
            cells = int(rng.integers(3, 17))
            low = rng.uniform(0, 255, (cells, cells, channels)).astype(np.uint8)
            image = Image.fromarray(low.squeeze(-1) if channels == 1 else low)
            how = Image.Resampling.NEAREST if kind == 2 else Image.Resampling.BICUBIC
            pixels = np.asarray(image.resize((side, side), how), dtype=np.float64)
        pixels = np.clip(pixels, 0, 255).astype(np.uint8)
        out.append(_encode(Image.fromarray(pixels.squeeze()), rng))
    return out


def gradient_images(split: str, n: int, seed: int) -> list[bytes]:
    """Linear, radial and hue-sweep colour gradients: the "Bag 100% confident" case."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        width, height = (int(v) for v in rng.integers(48, 321, 2))
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
        xx, yy = xx / max(width - 1, 1), yy / max(height - 1, 1)
        kind = i % 3
        if kind == 0:
            angle = rng.uniform(0, 2 * np.pi)
            t = xx * np.cos(angle) + yy * np.sin(angle)
        elif kind == 1:
            cx, cy = rng.uniform(0, 1, 2)
            t = np.hypot(xx - cx, yy - cy)
        else:
            t = xx + rng.uniform(-0.5, 0.5) * yy
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-9)
        if kind == 2:
            hue = (t * 255).astype(np.uint8)
            hsv = np.dstack([hue, np.full_like(hue, 230), np.full_like(hue, 230)])
            image = Image.fromarray(hsv, "HSV").convert("RGB")
        else:
            start, end = np.array(_colour(rng), float), np.array(_colour(rng), float)
            rgb = start + t[..., None] * (end - start)
            image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
        out.append(_encode(image, rng))
    return out


GENERATORS: dict[str, Callable[[str, int, int], list[bytes]]] = {
    "digits": digit_images,
    "photos": photo_crops,
    "shapes": shape_images,
    "noise": noise_images,
    "gradients": gradient_images,
}


def ood_uploads(split: str, per_family: int) -> list[tuple[str, bytes]]:
    """(family, upload bytes) of one OOD set: ``split`` is ``fit`` or ``eval``."""
    if split not in SEEDS:
        raise ValueError(f"split must be one of {sorted(SEEDS)}")
    uploads = []
    for offset, family in enumerate(FAMILIES):
        seed = SEEDS[split] + offset
        uploads += [(family, data) for data in GENERATORS[family](split, per_family, seed)]
    return uploads


def png(image: np.ndarray) -> bytes:
    """A 28x28 Fashion-MNIST image as the PNG a person would upload."""
    out = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8), "L").save(out, "PNG")
    return out.getvalue()


def photo_like(images: np.ndarray, seed: int) -> list[bytes]:
    """Photo-like renderings (``models.photoset``) of Fashion-MNIST images."""
    rng = np.random.default_rng(seed)
    return [make_photo_like(image, rng) for image in images]


# -- scoring uploads through the serving path -----------------------------------------------
@dataclass
class Scored:
    """Uploads through preprocessing and the members: what the score is computed from."""

    accepted: np.ndarray  # (N,) bool: preprocessing accepted the upload
    member_probabilities: np.ndarray  # (K, N_accepted, C), members in bank order
    member_names: tuple[str, ...]
    results: dict[str, Result] = field(default_factory=dict)  # per built-in strategy
    features: dict[str, np.ndarray] = field(default_factory=dict)  # (N_accepted, F)


def score_uploads(bundle: EnsembleBundle, uploads: Sequence[bytes], desc: str) -> Scored:
    """Preprocess every upload as serving does, run all members once, combine per strategy."""
    canvases, facts, accepted = [], [], np.zeros(len(uploads), dtype=bool)
    for i, data in enumerate(tqdm(uploads, desc=f"{desc}: preprocess", unit="img", leave=False)):
        try:
            pre = analyse(data)
        except PreprocessError:
            continue
        accepted[i] = True
        canvases.append(pre.canvas)
        facts.append(input_facts(pre.features, pre.canvas, data))
    names = tuple(bundle.bank.names)
    chunks = []
    stack = np.stack(canvases) if canvases else np.zeros((0, 28, 28), np.uint8)
    for start in tqdm(range(0, len(stack), CHUNK), desc=f"{desc}: members", leave=False):
        chunks.append(bundle.bank.probabilities(to_tensor(stack[start : start + CHUNK])))
    probs = (
        np.concatenate(chunks, axis=1) if chunks else np.zeros((len(names), 0, len(bundle.classes)))
    )
    scored = Scored(accepted, probs, names)
    for strategy in bundle.strategies:
        ensemble = bundle.ensembles[strategy]
        rows = [names.index(n) for n in ensemble.member_names_]
        result = ensemble.combine_outputs(ensemble.split_outputs(probs[rows]))
        scored.results[strategy] = result
        scored.features[strategy] = feature_matrix(result, facts)
    return scored


# -- fitting ---------------------------------------------------------------------------------
def fit_combiner(inside: np.ndarray, outside: np.ndarray) -> tuple[Abstainer, dict]:
    """Logistic regression (classes balanced) over standardised features; threshold unset."""
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([inside, outside])
    y = np.concatenate([np.zeros(len(inside)), np.ones(len(outside))])
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    model = LogisticRegression(C=C, class_weight="balanced", max_iter=2000)
    model.fit((x - mean) / scale, y)
    abstainer = Abstainer(mean, scale, model.coef_[0].copy(), float(model.intercept_[0]), 0.5)
    return abstainer, {"n_in": int(len(inside)), "n_out": int(len(outside)), "C": C}


def choose_threshold(abstainer: Abstainer, inside: dict[str, np.ndarray], rate: float) -> float:
    """The lowest score at which every in-distribution part abstains on at most ``rate``."""
    quantiles = [
        float(np.quantile(abstainer.scores(x), 1.0 - rate, method="higher"))
        for x in inside.values()
        if len(x)
    ]
    return float(np.clip(max(quantiles) + 1e-9, 1e-6, 1.0 - 1e-6))


def with_threshold(abstainer: Abstainer, threshold: float) -> Abstainer:
    return Abstainer(
        abstainer.mean, abstainer.scale, abstainer.coef, abstainer.intercept, threshold
    )


def rates(abstainer: Abstainer, parts: dict[str, np.ndarray]) -> dict[str, float]:
    """Share of each part the abstainer abstains on."""
    return {
        name: round(float((abstainer.scores(x) >= abstainer.threshold).mean()), 4)
        for name, x in parts.items()
        if len(x)
    }


def parse_args(argv: Iterable[str] | None) -> argparse.Namespace:
    """The command line of ``python -m ensembles.abstention``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, required=True, help="models/artifacts/<version>")
    parser.add_argument("--data", type=Path, default=None, help="Fashion-MNIST IDX directory")
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE, help="ID abstention target")
    parser.add_argument("--blend", type=int, default=5000, help="blend images to use (of 10,000)")
    parser.add_argument("--photo-like", type=int, default=1000, help="photo-like blend images")
    parser.add_argument("--ood-per-family", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7, help="photo-like rendering seed")
    args = parser.parse_args(list(argv) if argv is not None else None)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the manifest's command
    return args


def fit(args: argparse.Namespace) -> dict:
    """Fit, choose the threshold, write the file and the manifest entry; returns the record."""
    from models.data import load_fashion_mnist

    started = time.perf_counter()
    path = args.artifact.resolve()
    bundle = load_bundle(path.name, root=path.parent)
    manifest = json.loads((path / "manifest.json").read_text())
    from models.registry import load_artifact

    artifact = load_artifact(path.name, root=path.parent)
    if artifact.blend is None:
        raise SystemExit(f"{path}: no blend split ({artifact.blend_error}); cannot fit")
    data = load_fashion_mnist(args.data)
    if data.checksum != manifest["data"]["checksum_sha256"]:
        raise SystemExit("the Fashion-MNIST files differ from the ones this artifact trained on")
    indices = artifact.blend["indices"][: args.blend]
    blend_images = data.train_images[indices]
    photo_rows = np.random.default_rng(args.seed).choice(
        len(indices), size=min(args.photo_like, len(indices)), replace=False
    )
    parts = {
        "blend_png": score_uploads(bundle, [png(im) for im in blend_images], "blend png"),
        "blend_photo_like": score_uploads(
            bundle, photo_like(blend_images[photo_rows], args.seed), "blend photo-like"
        ),
    }
    ood = ood_uploads("fit", args.ood_per_family)
    outside = score_uploads(bundle, [d for _, d in ood], "ood fit")
    strategies = bundle.strategies
    inside_rows = np.concatenate([p.features[s] for p in parts.values() for s in strategies])
    outside_rows = np.concatenate([outside.features[s] for s in strategies])
    abstainer, fit_info = fit_combiner(inside_rows, outside_rows)
    per_part = {f"{s}/{name}": p.features[s] for name, p in parts.items() for s in strategies}
    abstainer = with_threshold(abstainer, choose_threshold(abstainer, per_part, args.rate))
    families = np.array([f for f, _ in ood])[outside.accepted]
    fit_ood = {
        f"{s}/{family}": outside.features[s][families == family]
        for s in strategies
        for family in FAMILIES
    }
    record = {
        "command": "python -m ensembles.abstention " + " ".join(args.argv),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "features": list(FEATURES),
        "rule": (
            f"logistic regression (C={C}, classes balanced) on standardised features, pooled over "
            f"{', '.join(strategies)}; threshold: the lowest score at which every strategy "
            f"abstains on at most {args.rate:.0%} of each in-distribution part"
        ),
        "target_rate": args.rate,
        "data": {
            "in_distribution": {
                "blend_png": int(len(indices)),
                "blend_photo_like": int(len(photo_rows)),
                "photo_like_seed": args.seed,
                "fashion_mnist_sha256": data.checksum,
            },
            "ood_fit": {
                "per_family": args.ood_per_family,
                "families": list(FAMILIES),
                "seeds": {f: SEEDS["fit"] + i for i, f in enumerate(FAMILIES)},
                "digits": "sklearn load_digits, even indices",
                "photos": list(FIT_PHOTOS),
                "rejected_by_preprocessing": int((~outside.accepted).sum()),
            },
            "test_split_used": False,
        },
        "fit": fit_info,
        "threshold": abstainer.threshold,
        "abstention_rate_on_fit": {
            **rates(abstainer, per_part),
            **rates(abstainer, fit_ood),
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    payload = {**abstainer.to_dict(), "made_by": record["command"], "rule": record["rule"]}
    digest = record_file(
        path,
        ABSTENTION_FILE,
        (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode(),
        "abstention",
        record,
    )
    log.info(
        "wrote %s (sha256 %s), threshold %.4f", path / ABSTENTION_FILE, digest, abstainer.threshold
    )
    return record


def main(argv: Iterable[str] | None = None) -> int:
    """Fit the abstention combiner for an artifact and write ``abstention.json`` into it."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    record = fit(parse_args(argv))
    log.info("abstention on the fit data: %s", json.dumps(record["abstention_rate_on_fit"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
