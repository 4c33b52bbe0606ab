"""The forward benchmark times the loop and the fused forward in alternation."""

import pytest

from bench.forward import median_ms


def test_functions_are_timed_in_alternation(monkeypatch):
    """A fake clock that each function advances by a known amount: the medians must be those
    amounts exactly, so a swapped series, a wrong unit or a missing round fails."""
    import bench.forward

    now = [0.0]
    monkeypatch.setattr(bench.forward.time, "perf_counter", lambda: now[0])
    calls: list[str] = []
    durations = {"loop": iter([0.004, 0.002, 0.003, 0.100]), "fused": iter([0.001] * 4)}

    def timed(name: str):
        def run() -> None:
            calls.append(name)
            if len(calls) > 2:  # the warm-up round is not timed
                now[0] += next(durations[name])

        return run

    loop, fused = median_ms(timed("loop"), timed("fused"), repeat=4, warmup=1)
    assert calls == ["loop", "fused"] * 5  # one warm-up round, then four timed rounds
    assert loop == pytest.approx(3.5)  # median of 4, 2, 3 and 100 ms
    assert fused == pytest.approx(1.0)
