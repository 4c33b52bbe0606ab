"""A fake member bank: web tests run without the nine-member artifact (MLServer's fixtures).

``FakeBank`` answers like the real ``TorchBank`` (``names``, ``probabilities``, ``select``): each
member is a fixed random linear read-out of the 28x28 input, so answers depend on the image,
differ between members, and cost microseconds. ``fail`` makes members answer NaN (a diverged
checkpoint); ``raise_error`` makes the whole forward raise (a dead runtime).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

NUM_CLASSES = 10


class FakeBank:
    """Deterministic, input-dependent member probabilities without any CNN."""

    def __init__(self, names: Sequence[str], seed: int = 0, sharpness: float = 12.0) -> None:
        self._names = tuple(names)
        rng = np.random.default_rng(seed)
        shared = rng.normal(size=(28 * 28, NUM_CLASSES))  # members agree mostly, as real ones do
        self.weights = {
            name: (shared + 0.6 * rng.normal(size=shared.shape)) / 28.0 for name in self._names
        }
        self.sharpness = sharpness
        self.fail: set[str] = set()
        self.raise_error: Exception | None = None
        self.calls: list[tuple[tuple[str, ...], int]] = []  # (members, batch size) per forward
        self._root = self

    @property
    def names(self) -> tuple[str, ...]:
        return self._names

    def select(self, names: Sequence[str]) -> FakeBank:
        """A view over some members that shares this bank's faults and call log."""
        view = FakeBank.__new__(FakeBank)
        view._names = tuple(names)
        view.weights = {name: self.weights[name] for name in names}
        view.sharpness = self.sharpness
        view.fail = self.fail
        view.calls = self.calls
        view._root = self._root
        return view

    @property
    def _raise(self) -> Exception | None:
        return self._root.raise_error

    def probabilities(self, x: torch.Tensor) -> np.ndarray:
        if self._raise is not None:
            raise self._raise
        flat = x.reshape(x.shape[0], -1).double().numpy()
        self.calls.append((self._names, flat.shape[0]))
        out = []
        for name in self._names:
            if name in self.fail:
                out.append(np.full((flat.shape[0], NUM_CLASSES), np.nan))
                continue
            logits = self.sharpness * np.tanh(flat @ self.weights[name])
            logits -= logits.max(axis=1, keepdims=True)
            e = np.exp(logits)
            out.append(e / e.sum(axis=1, keepdims=True))
        return np.stack(out)


BAGGING = tuple(f"bagging-{i}" for i in range(5))
BOOSTING = tuple(f"boosting-{i}" for i in range(4))
MEMBERS = BAGGING + BOOSTING
FAKE_VERSION = "fake-20260101-000000"


def fake_artifact(bank: FakeBank, classes: Sequence[str], n_blend: int = 400):
    """An artifact in the shipped layout whose members exist only behind ``bank``.

    The meta-model, the cascade's threshold and the blend arrays are fitted by the project's
    own code on the fake members' answers to random images, so every path serving reads is
    real data of the right shape."""
    from pathlib import Path

    from ensembles.cascade import CHOSEN_ON, plan_cascade
    from ensembles.stacking import tied_meta_model
    from models.cnn import CNNConfig
    from models.registry import Artifact

    rng = np.random.default_rng(7)
    images = torch.from_numpy(rng.normal(size=(n_blend, 1, 28, 28)).astype(np.float32))
    probs = bank.probabilities(images)
    labels = probs.mean(axis=0).argmax(axis=-1)  # a "truth" the members mostly agree with
    bank.calls.clear()
    meta = tied_meta_model(probs, labels)
    plan = plan_cascade(probs, labels, list(MEMBERS))
    accuracy = {n: float((probs[k].argmax(-1) == labels).mean()) for k, n in enumerate(MEMBERS)}
    cascade = plan.to_manifest()
    cascade["chosen_on"] = CHOSEN_ON
    manifest = {
        "format": 1,
        "version": FAKE_VERSION,
        "created_at": "2026-01-01T00:00:00+00:00",
        "command": "tests.fakes.fake_artifact",
        "code": {},
        "classes": list(classes),
        "cnn": CNNConfig(num_classes=len(classes)).to_dict(),
        "members": {n: {"val_accuracy": accuracy[n]} for n in MEMBERS},
        "strategies": {
            "bagging": {"members": list(BAGGING), "combine": "average"},
            "boosting": {
                "members": list(BOOSTING),
                "alphas": [1.2, 1.0, 0.8, 0.6],
                "learning_rate": 0.3,
                "combine": "weighted_average",
            },
            "stacking": {
                "members": list(MEMBERS),
                "best_member": max(accuracy, key=accuracy.get),
                "meta": {"chosen": "tied"},
            },
            "cascade": cascade,
        },
        "metrics": {"test": {"strategies": {}}},
        "files": {},
        "blend": {"members": list(MEMBERS), "n": n_blend, "dtype": "float32"},
    }
    return Artifact(
        version=FAKE_VERSION,
        path=Path("fake"),
        manifest=manifest,
        members={},
        meta_arrays=meta.to_arrays(),
        meta_error=None,
        blend={
            "probabilities": probs.astype(np.float32),
            "labels": labels,
            "indices": np.arange(n_blend),
        },
    )


def fake_bundle(classes: Sequence[str], seed: int = 0):
    """The served ensembles over a ``FakeBank`` (``bundle.bank`` is the bank, for fault tests)."""
    from ensembles.bundle import build_bundle

    bank = FakeBank(MEMBERS, seed=seed)
    return build_bundle(fake_artifact(bank, classes), bank=bank)
