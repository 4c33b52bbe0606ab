"""Memory of the default server: RSS and PSS per process, before, during and after a swap.

`python -m bench.memory [--workers 2] [--to VERSION]` starts the default server (gunicorn.conf.py
defaults, preload, a temporary SQLite database), reads ``/proc/<pid>/smaps_rollup`` of the master
and each worker, then activates another installed version (default: the first that is not
serving) through ``POST /api/v1/models/<v>/activate`` and reads them again once every worker
serves it. PSS splits shared pages between the processes that map them, so the sum of PSS is
what the server really costs; RSS minus the private pages is what a worker shares copy-on-write
with the master (the preloaded weights). The issue's bound: a second version at most doubles
the weights' share while swapping.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench.load import Client, GunicornServer, admin_request, cpu_model
from models.registry import list_versions
from models.versions import describe

log = logging.getLogger(__name__)
FIELDS = ("Rss", "Pss", "Private_Clean", "Private_Dirty")


@dataclass(frozen=True)
class Usage:
    """One process's memory in MiB, from smaps_rollup."""

    rss: float
    pss: float
    private: float

    @property
    def shared(self) -> float:
        """Pages mapped by another process too (for a worker: inherited from the master)."""
        return self.rss - self.private


def parse_rollup(text: str) -> Usage:
    """``Rss:  1234 kB`` lines -> MiB figures."""
    kb = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in FIELDS:
            kb[name] = int(rest.split()[0])
    return Usage(
        rss=kb["Rss"] / 1024,
        pss=kb["Pss"] / 1024,
        private=(kb["Private_Clean"] + kb["Private_Dirty"]) / 1024,
    )


def usage(pid: int) -> Usage:
    """The process's memory now."""
    return parse_rollup(Path(f"/proc/{pid}/smaps_rollup").read_text())


def snapshot(master: int, workers: list[int]) -> dict[str, Usage]:
    """Master and workers, labelled."""
    found = {"master": usage(master)}
    for n, pid in enumerate(workers):
        found[f"worker {n + 1}"] = usage(pid)
    return found


def table(title: str, rows: dict[str, Usage]) -> list[str]:
    """One block of the report, with PSS summed over the server."""
    lines = [title, f"  {'process':10}{'RSS MiB':>9}{'PSS MiB':>9}{'private':>9}{'shared':>9}"]
    for name, u in rows.items():
        lines.append(f"  {name:10}{u.rss:>9.0f}{u.pss:>9.0f}{u.private:>9.0f}{u.shared:>9.0f}")
    lines.append(f"  {'server':10}{'':>9}{sum(u.pss for u in rows.values()):>9.0f}")
    return lines


class PeakSampler:
    """Highest RSS of each pid, sampled every 20 ms on a thread (the swap holds two bundles)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.peak = dict.fromkeys(pids, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            for pid in self.pids:
                try:
                    self.peak[pid] = max(self.peak[pid], usage(pid).rss)
                except OSError:
                    pass

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def serving(server: GunicornServer, version: str, deadline: float) -> bool:
    """True once enough /readyz answers (both workers, by chance of the accept) name ``version``."""
    seen = 0
    while time.monotonic() < deadline:
        with Client(server.url) as client:
            status, body = client.request("GET", "/readyz")
        seen = seen + 1 if status == 200 and f'"{version}"' in body.decode() else 0
        if seen >= 20:
            return True
        time.sleep(0.05)
    return False


def peaks(sampler: PeakSampler, before: dict[str, Usage], workers: list[int]) -> list[str]:
    """Each worker's peak RSS during the swap and its rise over the RSS before it."""
    lines = []
    for n, pid in enumerate(workers):
        start = before[f"worker {n + 1}"].rss
        lines.append(
            f"worker {n + 1} {sampler.peak[pid]:.0f} MiB (+{sampler.peak[pid] - start:.0f})"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--to", default=None, help="version to activate (default: another one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        env = {"WEB_CONCURRENCY": str(args.workers)}
        with GunicornServer(Path(tmp), env=env) as server:
            assert server.process is not None
            master, workers = server.process.pid, server.worker_pids()
            status, body = admin_request(server.url, server.admin_password, "GET", "/api/v1/models")
            active = body["active"]
            target = args.to or next(v for v in reversed(list_versions()) if v != active)
            before = snapshot(master, workers)
            with PeakSampler(workers) as sampler:
                status, body = admin_request(
                    server.url, server.admin_password, "POST", f"/api/v1/models/{target}/activate"
                )
                if status != 200:
                    sys.stderr.write(f"activation failed: {status} {body}\n")
                    return 1
                switched = serving(server, target, time.monotonic() + 30)
                time.sleep(1.5)  # the old bundle goes with its last request and a collection
            after = snapshot(master, workers)
    weights = {v: describe(v)["size_bytes"] / 2**20 for v in (active, target)}
    out = [
        f"CPU {cpu_model()}; {args.workers} workers, preload; weights on disk: "
        + ", ".join(f"{v} {mb:.1f} MiB" for v, mb in weights.items()),
        *table(f"serving {active} (loaded in the master, shared copy-on-write):", before),
        *table(f"after activating {target} (loaded in each worker):", after),
        "peak RSS while swapping: " + ", ".join(peaks(sampler, before, workers)),
        f"every worker served {target}: {'yes' if switched else 'NO'}",
    ]
    sys.stdout.write("\n".join(out) + "\n")
    return 0 if switched else 1


if __name__ == "__main__":
    raise SystemExit(main())
