"""DESIGN.md's one-way arrows, checked in a fresh interpreter: what each layer drags in."""

from __future__ import annotations

import subprocess
import sys

import pytest


def loaded_after(module: str) -> set[str]:
    code = f"import sys, {module}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {name.split(".")[0] for name in out.stdout.split()}


BELOW_VIEWS = [
    "serving.container",
    "ensembles.bundle",
    "ensembles.composite",
    "store",
    "models.banks",
]


@pytest.mark.parametrize("module", BELOW_VIEWS)
def test_nothing_below_views_imports_flask(module):
    assert "flask" not in loaded_after(module)


@pytest.mark.parametrize("module", ["experiments.routers", "experiments.spec", "experiments.stats"])
def test_experiments_import_neither_flask_nor_the_database(module):
    assert not loaded_after(module) & {"flask", "sqlalchemy", "store", "serving", "views"}


def test_serving_never_imports_the_trainer():
    code = "import sys, serving.container; print('ensembles.trainer' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
