"""The peeking benchmark runs at tiny settings, prints its table, and checks itself."""

from __future__ import annotations

import numpy as np
import pytest

from bench import peeking


def test_main_prints_the_table_at_tiny_settings(capsys):
    args = ["--experiments", "50", "--max-n", "1000", "--every", "100", "--seed", "3"]
    assert peeking.main(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("50 experiments per scenario; looks after every 100")
    assert "(10 looks)" in out[0] and "N* = 5000" in out[0]
    rows = [line for line in out if line.startswith("  (a)") or line.startswith("  (b) s")]
    assert len(rows) == 4  # (a) and (b), A/A and with a real difference
    for row in rows:
        assert row.count("%") == 2 and row.count("±") == 2
    assert any("fixed-horizon power at n = 1000 per arm" in line for line in out)
    assert any("re-checked with compare() on 400" in line for line in out)
    assert out[-1].startswith("target ((b) <= 5% of A/A experiments ever significant): ")


def test_run_figures_have_the_expected_shape_and_order():
    figures = peeking.run(experiments=200, max_n=2000, every=100, seed=5, verify_cells=50)
    assert set(figures) == {"aa", "lift"}
    for scenario in figures.values():
        assert scenario["looks"] == 20
        for key in ("fixed_any_look", "sequential_any_look", "fixed_last_look"):
            share, se = scenario[key]
            assert 0.0 <= share <= 1.0 and se >= 0.0
        # checking at every look can only add rejections; the sequential interval is wider
        assert scenario["fixed_any_look"][0] >= scenario["fixed_last_look"][0]
        assert scenario["sequential_any_look"][0] <= scenario["fixed_any_look"][0]
    # peeking inflates the fixed-horizon error rate well past 5% even with 20 looks
    assert figures["aa"]["fixed_any_look"][0] > 0.10
    assert figures["lift"]["sequential_any_look"][0] > figures["aa"]["sequential_any_look"][0]


def test_vectorised_counts_are_running_sums():
    looks = peeking.simulate(np.random.default_rng(0), 7, 500, 100, 0.9, 0.9)
    assert looks.control.shape == looks.treatment.shape == (7, 5)
    assert list(looks.n) == [100, 200, 300, 400, 500]
    steps = np.diff(looks.control, axis=1, prepend=0)
    assert (steps >= 0).all() and (steps <= 100).all()


def test_verification_catches_a_decision_that_differs_from_compare():
    rng = np.random.default_rng(1)
    looks = peeking.simulate(rng, 20, 1000, 100, 0.92, 0.92)
    fixed = peeking.fixed_horizon_significant(looks, 0.05)
    sequential = peeking.sequential_significant(looks, 0.05, 5000)
    assert peeking.verify_with_compare(looks, fixed, sequential, rng, 100, 0.05, 5000) == 100
    with pytest.raises(AssertionError, match="differs from compare"):
        peeking.verify_with_compare(looks, ~fixed, sequential, rng, 100, 0.05, 5000)
