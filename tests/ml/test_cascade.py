"""Cascade: early exit on a confident running combination, chosen on the blend split only;
blend arrays in the artifact; the ``--members-from`` refit."""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence

import numpy as np
import pytest
import torch

from ensembles import train as train_cli
from ensembles.base import NoMembersLeftError
from ensembles.bundle import STRATEGIES, load_bundle
from ensembles.cascade import (
    Cascade,
    cascade_combine,
    choose_threshold,
    plan_cascade,
    run_cascade,
    tied_weights,
)
from ensembles.stacking import tied_meta_model
from models.banks import member_probabilities
from models.data import Dataset
from models.registry import BLEND_FILE, MANIFEST, META_FILE, load_artifact
from models.tensor import to_tensor

# -- hand-made members ----------------------------------------------------------------------


class TableBank:
    """Members that answer fixed probabilities per image; an image carries its index in pixel 0.

    Records every forward as (member names, image indices), to check who ran on what.
    """

    def __init__(self, table: np.ndarray, names: Sequence[str], calls: list | None = None):
        self.table = np.asarray(table, dtype=np.float64)
        self._names = tuple(names)
        self.calls = [] if calls is None else calls

    @property
    def names(self) -> tuple[str, ...]:
        return self._names

    def probabilities(self, x: torch.Tensor) -> np.ndarray:
        rows = x[:, 0, 0, 0].long().numpy()
        self.calls.append((self._names, rows.tolist()))
        return self.table[:, rows]

    def select(self, names: Sequence[str]) -> TableBank:
        index = [self._names.index(name) for name in names]
        return TableBank(self.table[index], names, self.calls)


def images(n: int) -> torch.Tensor:
    x = torch.zeros(n, 1, 28, 28)
    x[:, 0, 0, 0] = torch.arange(n, dtype=torch.float32)
    return x


def cascade_over(table: np.ndarray, threshold: float, **kwargs) -> tuple[Cascade, TableBank]:
    k, _, c = table.shape
    names = [f"m{i}" for i in range(k)]
    bank = TableBank(table, names)
    classes = tuple("abcdefghij"[:c])
    cascade = Cascade(threshold, classes=classes, **kwargs).set_members([{}] * k, names, bank)
    return cascade, bank


# member j (rows) x image (columns): image 0 is sure at once, image 1 after two members,
# image 2 never (all three answer); binary fractions keep the arithmetic exact.
TABLE = np.array(
    [
        [[0.875, 0.125], [0.625, 0.375], [0.5, 0.5]],
        [[0.25, 0.75], [1.0, 0.0], [0.5, 0.5]],
        [[0.5, 0.5], [0.5, 0.5], [0.25, 0.75]],
    ]
)


def test_each_image_exits_at_its_first_confident_combination():
    cascade, bank = cascade_over(TABLE, threshold=0.8)
    result = cascade.predict(images(3))
    np.testing.assert_array_equal(result.members_used, [1, 2, 3])
    np.testing.assert_allclose(
        result.probabilities,
        [TABLE[0, 0], TABLE[:2, 1].mean(axis=0), TABLE[:, 2].mean(axis=0)],
    )
    # compute really falls: member 2 ran on images 1 and 2 only, member 3 on image 2
    assert bank.calls == [(("m0",), [0, 1, 2]), (("m1",), [1, 2]), (("m2",), [2])]
    assert result.member_names == ["m0", "m1", "m2"]
    assert [len(result.members_for(row)) for row in range(3)] == [1, 2, 3]
    assert [v["name"] for v in result.members_for(1)] == ["m0", "m1"]


def test_rows_of_members_an_image_never_reached_hold_its_answer():
    result = cascade_over(TABLE, threshold=0.8)[0].predict(images(3))
    assert np.all(np.isfinite(result.member_probabilities))
    np.testing.assert_array_equal(result.member_probabilities[1:, 0], [result.probabilities[0]] * 2)
    np.testing.assert_array_equal(result.member_probabilities[:2, 1], TABLE[:2, 1])


def test_weights_are_renormalised_over_the_members_run():
    table = np.array([[[0.625, 0.375]], [[0.0, 1.0]]])
    uniform, _ = cascade_combine(table, None, 0.7)
    np.testing.assert_allclose(uniform, [[0.3125, 0.6875]])  # below 0.7: both run
    heavy_second, used = cascade_combine(table, [1.0, 3.0], 0.7)
    np.testing.assert_allclose(heavy_second, np.average(table, axis=0, weights=[1, 3]))
    np.testing.assert_array_equal(used, [2])
    # the first member alone decides when it is confident, whatever the later weights
    first, used = cascade_combine(table, [1.0, 3.0], 0.6)
    np.testing.assert_array_equal(used, [1])
    np.testing.assert_allclose(first, table[0])


def test_threshold_one_runs_every_member_even_on_certain_images():
    table = np.array([[[1.0, 0.0]], [[0.75, 0.25]]])
    probs, used = cascade_combine(table, None, 1.0)
    np.testing.assert_array_equal(used, [2])
    np.testing.assert_allclose(probs, [[0.875, 0.125]])
    with pytest.raises(ValueError, match="threshold"):
        cascade_combine(table, None, 1.5)


def test_log_pool_of_all_members_is_the_tied_meta_model():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 50)
    probs = 0.5 * rng.dirichlet(np.ones(4), size=(3, 50)) + 0.5 * np.eye(4)[labels]
    meta = tied_meta_model(probs, labels)
    w, b = tied_weights(meta, 3)
    combined, used = cascade_combine(probs, w, 1.0, pool="log", bias=b)
    np.testing.assert_array_equal(used, 3)
    np.testing.assert_allclose(combined, meta.predict_proba(probs), rtol=0, atol=1e-12)


def test_a_nan_member_is_skipped_and_named_on_both_paths():
    table = TABLE.copy()
    table[1] = np.nan
    cascade, _ = cascade_over(table, threshold=0.8)
    result = cascade.predict(images(3))
    assert result.degraded == ["m1"]
    assert result.member_names == ["m0", "m2"]
    np.testing.assert_array_equal(result.members_used, [1, 2, 2])
    np.testing.assert_allclose(result.probabilities[2], TABLE[[0, 2], 2].mean(axis=0))
    combined = cascade.combine_outputs(cascade.split_outputs(table))
    np.testing.assert_array_equal(combined.probabilities, result.probabilities)
    np.testing.assert_array_equal(combined.members_used, result.members_used)
    assert combined.degraded == result.degraded


def test_no_member_left_is_a_typed_error():
    cascade, _ = cascade_over(np.full_like(TABLE, np.nan), threshold=0.8)
    with pytest.raises(NoMembersLeftError):
        cascade.predict(images(3))
    with pytest.raises(NoMembersLeftError):
        cascade.combine_outputs(cascade.split_outputs(np.full_like(TABLE, np.nan)))


def test_a_raising_member_is_skipped():
    cascade, bank = cascade_over(TABLE, threshold=0.8)

    class Raising(TableBank):
        def probabilities(self, x):
            raise RuntimeError("member crashed")

    original = bank.select

    def select(names):
        return Raising(TABLE[:1], names) if names == ["m0"] else original(names)

    bank.select = select
    result = cascade.predict(images(3))
    assert result.degraded == ["m0"] and result.member_names == ["m1", "m2"]


def test_predict_and_combine_agree_exactly_on_random_members():
    rng = np.random.default_rng(3)
    table = rng.dirichlet(np.full(10, 0.08), size=(5, 200))
    for pool in ("linear", "log"):
        cascade, _ = cascade_over(
            table, threshold=0.9, pool=pool, weights=rng.uniform(0.5, 2, 5), bias=None
        )
        a = cascade.predict(images(200))
        b = cascade.combine_outputs(cascade.split_outputs(table))
        assert 1 < a.members_used.mean() < 5  # some exit early, some do not
        np.testing.assert_array_equal(a.probabilities, b.probabilities)
        np.testing.assert_array_equal(a.members_used, b.members_used)
        np.testing.assert_array_equal(a.member_probabilities, b.member_probabilities)
        assert a.member_names == b.member_names


def test_run_cascade_asks_only_for_undecided_rows():
    asked = []

    def forward(j, rows):
        asked.append((j, rows.tolist()))
        return TABLE[j][rows]

    run = run_cascade(forward, 3, 3, 2, None, 0.8)
    assert asked == [(0, [0, 1, 2]), (1, [1, 2]), (2, [2])]
    assert run.ran == [0, 1, 2] and run.skipped == []


# -- choosing on the blend split ------------------------------------------------------------


def test_choose_threshold_takes_the_cheapest_within_tolerance():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, 2000)
    truth = np.eye(10)[labels]
    # members right 85% of the time with varying confidence
    probs = np.stack(
        [
            np.where(
                rng.random((2000, 1)) < 0.85,
                0.6 * truth + 0.4 * rng.dirichlet(np.ones(10), 2000),
                rng.dirichlet(np.ones(10), 2000),
            )
            for _ in range(4)
        ]
    )
    threshold, rows = choose_threshold(probs, labels, None, (0.5, 0.7, 0.9, 0.99))
    assert [r["threshold"] for r in rows] == [0.5, 0.7, 0.9, 0.99, 1.0]  # 1.0 always swept
    best = max(r["correct"] for r in rows)
    chosen = next(r for r in rows if r["threshold"] == threshold)
    assert chosen["correct"] >= best - 0.001 * len(labels)
    cheaper = [r for r in rows if r["threshold"] < threshold]
    assert all(r["correct"] < best - 0.001 * len(labels) for r in cheaper)
    members = [r["mean_members"] for r in rows]
    assert members == sorted(members)  # a higher threshold never runs fewer members


def test_the_threshold_rule_sees_no_test_data():
    for fn in (choose_threshold, plan_cascade):
        params = set(inspect.signature(fn).parameters)
        assert not any("test" in p for p in params), params


def test_tiny_artifact_records_a_cascade_chosen_on_blend(bundle):
    spec = bundle.manifest["strategies"]["cascade"]
    info = bundle.manifest_info.strategies.cascade
    assert info is not None and info.threshold == spec["threshold"]
    assert "blend" in spec["chosen_on"] and "test" in spec["chosen_on"]  # "test never used"
    val = {n: bundle.manifest["members"][n]["val_accuracy"] for n in spec["members"]}
    assert list(val.values()) == sorted(val.values(), reverse=True)  # best first
    assert set(spec["members"]) == set(bundle.manifest["strategies"]["stacking"]["members"])
    test = bundle.manifest["metrics"]["test"]["strategies"]["cascade"]
    assert 1 <= test["mean_members"] <= len(spec["members"])
    assert test["mean_mflops"] > 0
    assert "cascade" in bundle.ensembles and set(bundle.strategies) == set(STRATEGIES)


def test_predict_path_equals_combine_path_on_real_members(bundle, fmnist):
    cascade = bundle.ensembles["cascade"]
    x = to_tensor(fmnist.test_images[:96])
    result = cascade.predict(x)
    # the same single-member forwards on the whole batch, combined all at once
    probs = np.stack([cascade.bank.select([n]).probabilities(x)[0] for n in cascade.member_names_])
    combined = cascade.combine_outputs(cascade.split_outputs(probs))
    np.testing.assert_array_equal(result.probabilities, combined.probabilities)
    np.testing.assert_array_equal(result.members_used, combined.members_used)
    np.testing.assert_array_equal(result.member_probabilities, combined.member_probabilities)
    assert result.member_names == combined.member_names
    # and the fused all-members forward (scoring's) agrees to float32 rounding
    fused = cascade.combine_outputs(cascade.split_outputs(cascade.forward_members(x)))
    np.testing.assert_allclose(fused.probabilities, result.probabilities, atol=1e-6)
    np.testing.assert_array_equal(fused.members_used, result.members_used)


def test_scoring_reproduces_the_recorded_cascade(bundle, fmnist):
    n = bundle.manifest["metrics"]["test"]["n"]
    recorded = bundle.manifest["metrics"]["test"]["strategies"]["cascade"]
    cascade = bundle.ensembles["cascade"]
    x = to_tensor(fmnist.test_images[:n])
    result = cascade.predict(x)
    accuracy = float(np.mean(result.predictions == fmnist.test_labels[:n]))
    assert accuracy == pytest.approx(recorded["accuracy"], abs=1 / n)
    assert result.members_used.mean() == pytest.approx(recorded["mean_members"], abs=2 / n)


# -- blend arrays ---------------------------------------------------------------------------


def test_blend_arrays_are_the_members_blend_probabilities(tiny_root, fmnist):
    artifact = load_artifact("tiny", root=tiny_root)
    assert artifact.blend_error is None
    blend = artifact.blend
    manifest = artifact.manifest
    k, n = len(manifest["blend"]["members"]), manifest["data"]["blend_size"]
    assert blend["probabilities"].shape == (k, n, 10) and blend["probabilities"].dtype == np.float32
    assert blend["labels"].dtype == np.int64 and blend["indices"].dtype == np.int64
    np.testing.assert_array_equal(blend["labels"], fmnist.train_labels[blend["indices"]])
    bundle = load_bundle("tiny", root=tiny_root)
    assert bundle.blend is not None and bundle.blend.members == tuple(manifest["blend"]["members"])
    stacking = bundle.ensembles["stacking"]
    fresh = member_probabilities(stacking.forward_members, fmnist.train_images[blend["indices"]])
    np.testing.assert_allclose(blend["probabilities"], fresh, rtol=0, atol=1e-6)


def test_corrupt_blend_file_still_serves(tiny_copy, fmnist):
    path = tiny_copy / "tiny" / BLEND_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    artifact = load_artifact("tiny", root=tiny_copy)
    assert artifact.blend is None and "checksum" in artifact.blend_error
    assert artifact.meta_error is None
    bundle = load_bundle("tiny", root=tiny_copy)
    assert bundle.blend is None
    result = bundle.predict("cascade", to_tensor(fmnist.test_images[:4]))
    assert result.probabilities.shape == (4, 10)


def test_missing_blend_file_still_serves(tiny_copy):
    (tiny_copy / "tiny" / BLEND_FILE).unlink()
    artifact = load_artifact("tiny", root=tiny_copy)
    assert artifact.blend is None and "missing" in artifact.blend_error
    assert set(load_bundle("tiny", root=tiny_copy).ensembles) == set(STRATEGIES)


def test_artifact_without_blend_or_cascade_serves_three_strategies(tiny_copy):
    """Artifacts trained before the cascade existed still load."""
    path = tiny_copy / "tiny"
    manifest = json.loads((path / MANIFEST).read_text())
    del manifest["strategies"]["cascade"], manifest["blend"], manifest["files"][BLEND_FILE]
    (path / MANIFEST).write_text(json.dumps(manifest))
    (path / BLEND_FILE).unlink()
    artifact = load_artifact("tiny", root=tiny_copy)
    assert artifact.blend is None and "not listed" in artifact.blend_error
    bundle = load_bundle("tiny", root=tiny_copy)
    assert bundle.strategies == ("bagging", "boosting", "stacking")


# -- refit mode -----------------------------------------------------------------------------


def test_refit_reproduces_the_tiny_meta_model_exactly(tiny_refit_root):
    original, refit = (tiny_refit_root / v for v in ("tiny", "tiny-refit"))
    assert (refit / META_FILE).read_bytes() == (original / META_FILE).read_bytes()
    old = json.loads((original / MANIFEST).read_text())
    new = json.loads((refit / MANIFEST).read_text())
    assert new["members_from"] == "tiny" and old["members_from"] is None
    assert "--members-from tiny" in new["command"]
    assert new["members_origin"]["stacking_meta_identical"] is True
    assert new["members_origin"]["command"] == old["command"]
    for key in ("bagging", "boosting", "stacking", "cascade"):
        assert new["strategies"][key] == old["strategies"][key], key
    assert new["metrics"] == old["metrics"]
    assert new["train"] == old["train"] and new["cnn"] == old["cnn"]
    assert new["files"] == old["files"]  # members, meta-model and blend arrays: the same bytes


def test_refit_refuses_other_data(tiny_refit_root):
    args = train_cli.parse_args(
        ["--subset", "900", "--members-from", "tiny", "--artifacts", str(tiny_refit_root)]
    )
    with pytest.raises(Exception, match="other data or another split"):
        train_cli.train(args)


def test_poisoned_test_labels_do_not_change_the_cascade(
    tiny_refit_root, refit_args, fmnist, monkeypatch
):
    """Everything the cascade is chosen from comes from the blend split: shuffle the test labels
    and its order, pool, weights and threshold stay exactly the same (its test score does not)."""
    rng = np.random.default_rng(0)
    poisoned = Dataset(
        fmnist.train_images,
        fmnist.train_labels,
        fmnist.test_images,
        rng.permutation(fmnist.test_labels),
        fmnist.classes,
        fmnist.checksum,
        fmnist.source,
    )
    monkeypatch.setattr(train_cli, "load_fashion_mnist", lambda: poisoned)
    args = [a if a != "tiny-refit" else "poisoned" for a in refit_args] + ["--photo-size", "0"]
    path = train_cli.train(train_cli.parse_args(args + ["--artifacts", str(tiny_refit_root)]))
    new = json.loads((path / MANIFEST).read_text())
    old = json.loads((tiny_refit_root / "tiny" / MANIFEST).read_text())
    assert new["strategies"]["cascade"] == old["strategies"]["cascade"]
    assert new["strategies"]["stacking"] == old["strategies"]["stacking"]
    old_test = old["metrics"]["test"]["strategies"]["cascade"]
    assert new["metrics"]["test"]["strategies"]["cascade"] != old_test
