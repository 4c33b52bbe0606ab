"""Fixtures for the ML core: one tiny end-to-end training run shared by the whole session, and
one refit (``--members-from``) of it, so the cascade, the blend arrays and the refit mode all run
through the real CLI code path in seconds."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ensembles.bundle import EnsembleBundle, load_bundle
from ensembles.train import parse_args, train
from models.data import Dataset, load_fashion_mnist

TINY_ARGS = [
    "--subset",
    "1000",
    "--val-size",
    "200",
    "--stages",
    "4,8",
    "--epochs",
    "2",
    "--batch-size",
    "64",
    "--bagging-members",
    "3",
    "--boosting-members",
    "3",
    "--test-subset",
    "300",
    "--photo-size",
    "40",
    "--device",
    "cpu",
    "--version",
    "tiny",
]


#: A refit of the tiny artifact: same data options, members from "tiny", nothing trained.
REFIT_ARGS = [
    "--subset",
    "1000",
    "--test-subset",
    "300",
    "--photo-size",
    "40",
    "--device",
    "cpu",
    "--members-from",
    "tiny",
    "--version",
    "tiny-refit",
]


@pytest.fixture(scope="session")
def fmnist() -> Dataset:
    return load_fashion_mnist()


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Artifact root holding one version trained by the real CLI code path on 1,000 images."""
    root = tmp_path_factory.mktemp("artifacts")
    train(parse_args(TINY_ARGS + ["--out", str(root)]))
    return root


@pytest.fixture
def refit_args() -> list[str]:
    """The CLI options of the tiny refit (without ``--artifacts``), for tests that vary it."""
    return list(REFIT_ARGS)


@pytest.fixture(scope="session")
def tiny_refit_root(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root holding "tiny" and "tiny-refit", made by ``--members-from tiny`` (a copy of the
    tiny root, so tests that count versions in ``tiny_root`` are unaffected)."""
    root = tmp_path_factory.mktemp("refit") / "artifacts"
    shutil.copytree(tiny_root, root)
    train(parse_args(REFIT_ARGS + ["--artifacts", str(root)]))
    return root


@pytest.fixture
def tiny_copy(tiny_root: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny artifact root that a test may corrupt."""
    root = tmp_path / "artifacts"
    shutil.copytree(tiny_root, root)
    return root


@pytest.fixture
def bundle(tiny_root: Path) -> EnsembleBundle:
    """A freshly loaded bundle (tests may monkeypatch its ensembles)."""
    return load_bundle("tiny", root=tiny_root)
