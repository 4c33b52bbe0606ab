"""The forward benchmark times the loop and the fused forward in alternation."""

from bench.forward import median_ms


def test_functions_are_timed_in_alternation():
    calls: list[str] = []
    loop, fused = median_ms(
        lambda: calls.append("loop"), lambda: calls.append("fused"), repeat=4, warmup=1
    )
    assert calls == ["loop", "fused"] * 5  # one warm-up round, then four timed rounds
    assert loop >= 0 and fused >= 0
