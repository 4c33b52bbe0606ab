"""Work after the answer: a background thread, back-pressure instead of loss, drained at exit."""

from __future__ import annotations

import threading

from serving.deferred import DeferredRunner


def test_jobs_run_on_the_background_thread_and_drain_waits_for_them():
    runner = DeferredRunner(max_pending=8)
    seen: list[str] = []
    release = threading.Event()
    runner.submit(lambda: (release.wait(5), seen.append(threading.current_thread().name)))
    assert seen == []  # submit returned before the job ran: the request is not held up
    release.set()
    assert runner.drain(timeout=5)
    assert seen == ["chorus-deferred"]


def test_a_full_queue_runs_the_job_in_the_caller_instead_of_dropping_it():
    runner = DeferredRunner(max_pending=1)
    release, started = threading.Event(), threading.Event()
    ran: list[str] = []
    runner.submit(lambda: (started.set(), release.wait(5)))  # occupies the thread
    assert started.wait(5)
    runner.submit(lambda: ran.append("queued"))  # fills the queue (size 1)
    runner.submit(lambda: ran.append(threading.current_thread().name))  # no room: inline
    assert ran == [threading.current_thread().name] and runner.overflowed == 1
    release.set()
    assert runner.drain(timeout=5)
    assert sorted(ran) == sorted([threading.current_thread().name, "queued"])


def test_a_failing_job_is_logged_and_the_thread_keeps_working(caplog):
    runner = DeferredRunner()
    done: list[int] = []
    runner.submit(lambda: 1 / 0)
    runner.submit(lambda: done.append(1))
    assert runner.drain(timeout=5)
    assert done == [1]
    assert "deferred job failed" in caplog.text


def test_a_forked_process_gets_its_own_thread(monkeypatch):
    runner = DeferredRunner()
    runner.submit(lambda: None)
    runner.drain(timeout=5)
    first = runner._thread
    monkeypatch.setattr("serving.deferred.os.getpid", lambda: -1)  # as in a gunicorn worker
    done: list[int] = []
    runner.submit(lambda: done.append(1))
    assert runner._thread is not first
    assert runner.drain(timeout=5) and done == [1]


def test_inline_mode_runs_at_once():
    runner = DeferredRunner(inline=True)
    done: list[str] = []
    runner.submit(lambda: done.append(threading.current_thread().name))
    assert done == [threading.current_thread().name]
