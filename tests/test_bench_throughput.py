"""bench.throughput's arithmetic and bookkeeping: the process tree, the plans, the verdicts."""

import os
import subprocess
import sys
import time

from bench.load import STRATEGIES, Sample, make_plans, process_tree
from bench.throughput import Tally, report


def test_the_process_tree_holds_a_grandchild():
    script = (
        "import subprocess,sys; subprocess.run([sys.executable,'-c','import time; time.sleep(30)'])"
    )
    child = subprocess.Popen([sys.executable, "-c", script])
    try:
        for _ in range(200):
            tree = process_tree(child.pid)
            if len(tree) == 2:
                break
            time.sleep(0.02)
        assert tree[0] == child.pid and len(tree) == 2
        assert process_tree(os.getpid())[0] == os.getpid()
    finally:
        for pid in reversed(process_tree(child.pid)):
            os.kill(pid, 9)
        child.wait()


def test_a_predict_only_mix_sends_no_healthz_and_every_strategy_evenly():
    plans = make_plans([b"png"], clients=4, requests=40, mix=STRATEGIES)
    jobs = [job for plan in plans for job in plan]
    assert len(jobs) == 40 and all(job.path == "/api/v1/predict" for job in jobs)
    counts = {s: sum(job.strategy == s for job in jobs) for s in STRATEGIES}
    assert set(counts.values()) == {40 // len(STRATEGIES)}


def tally(name: str, count: int, seconds: float, server_cpu: float, status: int = 200) -> Tally:
    samples = [Sample("bagging", status, 50.0, 0.0, 0.0, None, None) for _ in range(count)]
    return Tally(name, None, samples, seconds, parts={"workers": server_cpu})  # type: ignore[arg-type]


FORWARD = {"bagging": 2.0, "boosting": 2.0, "stacking": 2.0, "ab": 2.0}


def test_the_verdicts_follow_the_figures():
    then, now = tally("then", 1000, 10.0, 14.0), tally("now", 1000, 2.5, 3.0)
    text, correct = report([then, now], {"then": 0, "now": 0}, 16, FORWARD, 2, (500.0, 640, 0), [])
    assert correct
    assert "4.00x" in text  # 400/s against 100/s
    assert "3.00    target <= forward 2.00 + 1.5 = 3.50   ok" in text
    assert "2 workers / 2.00 ms = 1000 predictions/s; now reaches 40% of it" in text
    # 14 ms against 3 ms of CPU per request (no client CPU here): 4.67x if the cores bind.
    assert "then 14.00, now 3.00 ms: 4.67x where the cores are the limit" in text
    assert "2.4x needs now <= 5.83 ms, 2.00 of it the forward" in text
    assert "MISSED" not in text


def test_a_lost_record_or_an_error_fails_the_run():
    then, now = tally("then", 100, 1.0, 1.4), tally("now", 100, 1.0, 0.9, status=503)
    text, correct = report([then, now], {"then": 0, "now": 1}, 16, FORWARD, 2, (1.0, 64, 0), [])
    assert not correct
    assert "1.00x" in text and text.count("MISSED") >= 3  # ratio, rate, errors, lost
