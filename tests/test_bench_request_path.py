"""The request-path benchmark: exclusive stage times, per-request medians, verdicts, uploads."""

from __future__ import annotations

import io

import pytest
from werkzeug.formparser import parse_form_data

from bench.request_path import (
    OTHER,
    STAGES,
    TARGET_MS,
    Sample,
    StageClock,
    call_wsgi,
    instrumented,
    predict_environ,
    run,
    stage_targets,
    summarise,
    table,
)


class FakeClock:
    """A CPU clock the test advances by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def spend(self, seconds: float) -> None:
        self.now += seconds


def test_a_stage_gets_its_own_time_not_its_callees() -> None:
    """parse 1 ms, inside it decode 2 ms; forward 4 ms inside combine 3 ms (twice: calls add up);
    1 ms in the request itself: each stage gets exactly its exclusive time, the rest is OTHER."""
    clock = FakeClock()
    stages = StageClock(clock)
    decode = stages.wrap("decode", lambda: clock.spend(0.002))
    forward = stages.wrap("forward", lambda: clock.spend(0.004))

    def parse() -> None:
        clock.spend(0.0005)
        decode()
        clock.spend(0.0005)

    def combine() -> str:
        clock.spend(0.001)
        forward()
        clock.spend(0.0005)
        return "answer"

    timed_parse, timed_combine = stages.wrap("parse", parse), stages.wrap("combine", combine)

    def request() -> None:
        clock.spend(0.001)
        timed_parse()
        assert timed_combine() == "answer"  # wrapped functions return what they returned
        assert timed_combine() == "answer"
        with stages.stage("respond"):
            clock.spend(0.0003)

    spent = stages.request(request)
    assert spent == pytest.approx(
        {
            "parse": 0.001,
            "decode": 0.002,
            "combine": 0.003,
            "forward": 0.008,
            "respond": 0.0003,
            OTHER: 0.001,
        }
    )
    assert sum(spent.values()) == pytest.approx(clock.now)  # nothing counted twice or lost
    assert stages.request(lambda: clock.spend(0.5)) == pytest.approx({OTHER: 0.5})  # fresh


def test_a_stage_that_raises_is_still_counted() -> None:
    clock = FakeClock()
    stages = StageClock(clock)

    def broken() -> None:
        clock.spend(0.002)
        raise ValueError("bad upload")

    wrapped = stages.wrap("decode", broken)

    def request() -> None:
        with pytest.raises(ValueError):
            wrapped()
        clock.spend(0.001)

    assert stages.request(request) == pytest.approx({"decode": 0.002, OTHER: 0.001})


def test_totals_are_medians_of_per_request_sums_not_sums_of_medians() -> None:
    """Three requests whose forward and rest trade off: the median outside the forward is the
    median of each request's difference (2 ms), not median total minus median forward."""
    samples = [
        Sample({"forward": 0.001, "parse": 0.004}, wall=0.010, bare=0.004),
        Sample({"forward": 0.003, "parse": 0.002}, wall=0.020, bare=0.0045),
        Sample({"forward": 0.005, "parse": 0.001, "record": 0.001}, wall=0.030, bare=0.0065),
    ]
    summary = summarise("bagging", samples)
    assert summary.stages["forward"] == pytest.approx(3.0)
    assert summary.stages["record"] == pytest.approx(0.0)  # not entered: counts 0
    assert set(summary.stages) == {*STAGES, OTHER}
    assert summary.total == pytest.approx(5.0)
    assert summary.outside_forward == pytest.approx(2.0)  # 4, 2 and 2 ms
    assert summary.bare == pytest.approx(4.5)
    assert summary.bare_outside_forward == pytest.approx(1.5)  # 3, 1.5 and 1.5 ms
    assert summary.wall == pytest.approx(20.0)
    assert not summary.met and TARGET_MS == 1.5


def test_the_table_has_every_stage_and_a_verdict_per_strategy() -> None:
    fast = summarise("boosting", [Sample({"forward": 0.003, "parse": 0.0015}, 0.01, 0.0045)])
    slow = summarise("ab", [Sample({"forward": 0.003, "record": 0.0016}, 0.01, 0.0046)])
    lines = table([fast, slow])
    header = lines[0].split()
    assert header[3:12] == [*STAGES, OTHER] and header[12:] == [
        "total",
        "outside",
        "bare",
        "bare-fwd",
        "wall",
    ]
    row = dict(zip(header[3:], lines[1].split()[1:], strict=True))
    assert (row["parse"], row["forward"], row["outside"]) == ("1.500", "3.000", "1.500")
    assert lines[-2].startswith("boosting: 1.500 ms") and lines[-2].endswith(": MET")
    assert lines[-1].startswith("ab: 1.600 ms") and lines[-1].endswith(": MISSED")


def test_every_upload_has_a_fresh_boundary_and_parses() -> None:
    first = predict_environ(b"\x89PNG data", {"strategy": "ab", "client_id": "c-1"})
    second = predict_environ(b"\x89PNG data", {"strategy": "ab"})
    assert first["CONTENT_TYPE"] != second["CONTENT_TYPE"]
    _, form, files = parse_form_data(first)
    assert form.to_dict() == {"strategy": "ab", "client_id": "c-1"}
    assert files["image"].read() == b"\x89PNG data" and files["image"].filename == "item.png"
    files["image"].close()
    assert isinstance(first["wsgi.input"], io.BytesIO)


def test_a_run_on_the_app_enters_every_stage_and_restores_it(app) -> None:
    """Two requests of a strategy and of the ab experiment through the test app: every stage's
    functions were entered, the stages add up to each request, and nothing stays wrapped."""
    targets = stage_targets(app)
    before = [getattr(owner, name) for _, owner, name in targets]
    samples = run(app, ("bagging", "ab"), requests=2, warmup=1, clients=3)
    for strategy in ("bagging", "ab"):
        assert len(samples[strategy]) == 2
        for sample in samples[strategy]:
            assert set(STAGES) <= set(sample.stages), strategy
            assert sample.bare > 0 and sample.wall > 0
    assert [getattr(owner, name) for _, owner, name in targets] == before
    clock = StageClock()
    with instrumented(app, clock):
        assert getattr(targets[0][1], targets[0][2]) is not before[0]
    with pytest.raises(RuntimeError, match="400"):  # a refused upload is not a sample
        call_wsgi(app, predict_environ(b"not an image", {"strategy": "bagging"}))
