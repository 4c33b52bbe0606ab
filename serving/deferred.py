"""Work that runs after the answer (shadow arms) on a background thread of each process.

A sync gunicorn worker that ran shadows itself after sending the response could not take its
next request until they finished, so a client's following request waited for them (measured:
p50 1.26x with one client, ``bench/shadow.py``). Here the view hands the jobs over when the
response is closed and the worker is free at once; the thread runs them with the GIL released
inside torch. A full queue runs the job in the caller instead of dropping it (back-pressure:
nothing is lost), and the queue is drained at exit so a graceful restart loses nothing either.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

Job = Callable[[], None]
#: How much lower than the request threads the deferred thread runs (Unix niceness).
BACKGROUND_NICE = 10


class DeferredRunner:
    """One daemon thread per process (made again after a fork) and a bounded queue."""

    def __init__(self, max_pending: int = 256, inline: bool = False) -> None:
        self.max_pending = max_pending
        self.inline = inline
        self._pid: int | None = None
        self._queue: queue.Queue[Job | None] | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.overflowed = 0
        atexit.register(self.drain)

    def _ensure_thread(self) -> queue.Queue[Job | None]:
        with self._lock:
            if self._pid != os.getpid() or self._thread is None or not self._thread.is_alive():
                self._pid = os.getpid()
                self._queue = queue.Queue(self.max_pending)
                self._thread = threading.Thread(
                    target=self._work, args=(self._queue,), name="chorus-deferred", daemon=True
                )
                self._thread.start()
            assert self._queue is not None
            return self._queue

    @staticmethod
    def _run(job: Job) -> None:
        try:
            job()
        except Exception:  # deferred work must never take the thread (or a request) down
            log.exception("deferred job failed")

    def _work(self, jobs: queue.Queue[Job | None]) -> None:
        try:  # Linux: niceness is per thread, so requests get the CPU before shadows do
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)
        except (AttributeError, OSError):
            log.debug("cannot lower the deferred thread's priority here")
        while True:
            job = jobs.get()
            try:
                if job is None:
                    return
                self._run(job)
            finally:
                jobs.task_done()

    def submit(self, job: Job) -> None:
        """Run ``job`` soon on the background thread (or now, when inline or the queue is full)."""
        if self.inline:
            self._run(job)
            return
        jobs = self._ensure_thread()
        try:
            jobs.put_nowait(job)
        except queue.Full:
            with self._lock:  # threaded workers: += is a read and a write
                self.overflowed += 1
            log.warning(
                "deferred queue full (%d): running the job in the request", self.max_pending
            )
            self._run(job)

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until the queued jobs of this process ran (tests, graceful exit); True if so."""
        jobs = self._queue
        if jobs is None or self._pid != os.getpid():
            return True
        done = threading.Event()

        def wait() -> None:
            jobs.join()
            done.set()

        threading.Thread(target=wait, daemon=True).start()
        finished = done.wait(timeout)
        if not finished:
            log.warning("deferred jobs still pending after %.0f s at exit", timeout)
        return finished
