"""The forward benchmark: runtimes timed in alternation, GFLOP/s and share of the matmul peak."""

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


def test_rows_report_gflops_and_share_of_peak_from_the_model_flops():
    """2 members x 64 images x 1 MFLOP in 2 ms is 64 GFLOP/s: 50% of a 128 GFLOP/s peak."""
    from bench.forward import Row, verdicts

    row = Row("onnx", "pair", members=2, batch=64, median_ms=2.0, best_ms=1.0)
    assert row.gflops(1_000_000, row.median_ms) == pytest.approx(64.0)
    fields = row.line(1_000_000, peak=128.0).split()
    assert fields[-4:] == ["64.0", "128.0", "50.0", "100.0"]
    slow = Row("onnx", "trio", members=3, batch=64, median_ms=6.0, best_ms=3.0)  # 32 GFLOP/s
    (line,) = verdicts([row, slow], 1_000_000, peak=128.0)
    assert line.startswith("onnx: batch 64 worst set trio at 25.0% of peak") and "misses" in line


def test_rows_report_their_share_of_mlas_peak_beside_torchs():
    """With MLAS's matmul measured every row gains its median's share of it, and the worst set
    per batch is named against it too: 64 GFLOP/s is 25% of a 256 GFLOP/s MLAS peak."""
    from bench.forward import Row, mlas_verdicts

    row = Row("onnx", "pair", members=2, batch=64, median_ms=2.0, best_ms=1.0)
    fields = row.line(1_000_000, peak=128.0, mlas=256.0).split()
    assert fields[-5:] == ["64.0", "128.0", "50.0", "100.0", "25.0"]
    one = Row("onnx", "pair", members=2, batch=1, median_ms=0.01, best_ms=0.01)  # 200 GFLOP/s
    slow = Row("onnx", "trio", members=3, batch=64, median_ms=6.0, best_ms=3.0)  # 32 GFLOP/s
    assert mlas_verdicts([row, one, slow], 1_000_000, mlas=256.0) == [
        "onnx: batch 1 worst set pair at 78.1% of MLAS's peak",
        "onnx: batch 64 worst set trio at 12.5% of MLAS's peak",
    ]


def test_one_run_prints_the_peak_and_every_runtime_set_and_batch(capsys, tmp_path):
    """The real benchmark on the shipped artifact, two timed calls each: every runtime, member
    set and batch has a row whose share of peak is its GFLOP/s over the printed peak."""
    from bench.forward import BATCHES, main

    assert main(["--repeat", "2", "--warmup", "0", "--onnx-cache", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    peak = float(out.split("matmul peak: ")[1].split()[0])
    mlas = float(out.split("MLAS matmul peak: ")[1].split()[0])
    assert mlas > 0 and "% MLAS" in out
    assert "one member = 58.3 MFLOP per image" in out and peak > 0
    lines = out.splitlines()
    rows = [line.split() for line in lines if line.startswith(("torch ", "onnx "))]
    rows = [r for r in rows if r[1] != "sliced"]  # the one-graph design, for smaller sets only
    sets = ["one", "bagging", "boosting", "stacking", "all"]
    for runtime in ("torch", "onnx"):
        for batch in BATCHES:
            mine = [r for r in rows if r[0] == runtime and r[-8] == str(batch)]
            assert [r[1] for r in mine] == sets, (runtime, batch)
            for r in mine:
                # each figure is printed to 0.1: the share's own rounding plus the GFLOP/s's
                # and the peak's, carried through the division
                for column, ceiling in ((-3, peak), (-1, mlas)):
                    share = 100 * float(r[-5]) / ceiling
                    slack = 0.05 + 100 * 0.05 / ceiling + share * 0.05 / ceiling
                    assert float(r[column]) == pytest.approx(share, abs=slack + 1e-9)
    assert "onnx: batch 64 worst set" in out and "RSS: start" in out
    assert any(
        line.startswith("onnx: batch 64 worst set") and line.endswith("of MLAS's peak")
        for line in lines
    )
