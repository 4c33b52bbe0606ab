"""The routing benchmark runs end to end on the shipped artifact (it once stopped at start:
its SECRET_KEY was shorter than the 32 bytes the app requires outside tests)."""

from __future__ import annotations

import pytest

from bench.routing import main


@pytest.mark.slow
def test_one_short_run_prints_every_router_and_the_paired_predict(capsys) -> None:
    assert main(["--calls", "20", "--pairs", "4", "--images", "8"]) == 0
    out = capsys.readouterr().out
    for router in ("random", "canary", "feature_based", "bandit", "latency_based", "shadow"):
        assert any(line.startswith(router) for line in out.splitlines()), router
    assert "paired differences: median" in out and "bagging (plain ensemble)" in out
