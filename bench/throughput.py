"""Throughput against the first release, side by side: `make serve` now and at commit 93cc79f.

`python -m bench.throughput [--baseline 93cc79f] [--clients 16] [--requests 2000] [--rounds 2]`
checks the first release out once in a git worktree (``~/.cache/chorus/baseline-<ref>``) with
its own venv (its own ``make deps``), then starts both servers on 127.0.0.1 as their `make
serve` runs them (now: nginx in front of gunicorn, ``python -m deploy.serve``; then: gunicorn
alone), each on a throwaway SQLite database, and sends them in alternating rounds the same load
from the same client (bench.load: keep-alive threads, each sending one ``POST /api/v1/predict``
after another, the four strategies in turn, a fresh multipart boundary every time).

Per server it prints predictions/s, p50/p95/p99 and the mean latency Little's law gives
(clients / throughput), errors and lost records (200 answers against /api/v1/stats), and the
CPU its whole process tree (nginx, the gunicorn master, the workers) spent per request. Then:
the ratio now/then against the issue's targets (>= 2.4x and >= 300/s), p99 against 1.5x the
Little mean, server CPU per request against the mean forward + 1.5 ms, the forward-only
ceiling (workers / the mean one-image forward over the strategy mix, timed in this process on
the serving runtime before the rounds and after them, the mean of the two; both are printed,
since a shared machine's speed can drift within a run), each server's CPU per request with
the client's (where the two cores bind, the ratio the CPU allows, and the CPU per request
2.4x would need), and the V2 endpoint's images/s for batches of 64 from concurrent clients.
Exit status 1 when a request failed or a record was lost.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.forward import median_ms
from bench.load import (
    STRATEGIES,
    Client,
    GunicornServer,
    Sample,
    cpu_model,
    cpu_seconds,
    elapsed,
    fashion_mnist_pngs,
    machine_cpu_seconds,
    make_plans,
    own_cpu_seconds,
    process_tree,
    run_load,
    total_predictions,
    verdict,
)
from bench.slow_clients import FrontServer
from bench.v2 import png_batch_request
from experiments.stats import percentile
from models.manifest import Manifest
from models.onnx_bank import member_bank
from models.registry import load_artifact
from serving.catalogue import AB_ARMS

log = logging.getLogger(__name__)
#: Images per V2 infer call in the batch step.
V2_BATCH = 64
ROOT = Path(__file__).resolve().parent.parent
FIRST_RELEASE = "93cc79f"
BASELINE_HOME = Path.home() / ".cache" / "chorus"
#: The issue's targets for 16 clients on the default server.
TARGET_RATIO = 2.4
TARGET_PER_S = 300.0
TARGET_P99_OVER_LITTLE = 1.5
TARGET_OUTSIDE_FORWARD_MS = 1.5


def baseline_checkout(ref: str, home: Path = BASELINE_HOME) -> Path:
    """The first release in a worktree of this repository with its own venv, made once."""
    tree = home / f"baseline-{ref}"
    if not (tree / "Makefile").exists():
        home.mkdir(parents=True, exist_ok=True)
        log.info("checking %s out in %s", ref, tree)
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), ref], check=True
        )
    if not (tree / ".venv" / ".deps").exists():
        log.info("installing %s's requirements in its own venv (make deps, a few minutes)", ref)
        subprocess.run(["make", "-C", str(tree), "deps"], check=True, stdout=subprocess.DEVNULL)
    return tree


class BaselineServer(GunicornServer):
    """The first release's `make serve` (gunicorn alone) from its checkout and venv."""

    def __init__(self, tree: Path, workdir: Path) -> None:
        super().__init__(workdir)
        self.tree = self.cwd = tree

    def command(self) -> list[str]:
        python = str(self.tree / ".venv" / "bin" / "python")
        return [python, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:create_app()"]


@dataclass
class Tally:
    """One server's measured requests and spending over every round."""

    name: str
    server: GunicornServer
    samples: list[Sample] = field(default_factory=list)
    seconds: float = 0.0
    client_cpu: float = 0.0
    other_cpu: float = 0.0
    answered: int = 0  # 200 predictions, warm-up included: what the database must hold
    recorded_before: int = 0
    per_round: list[float] = field(default_factory=list)
    #: Server CPU seconds by part: the gunicorn workers, nginx, and the rest (masters, launcher).
    parts: dict[str, float] = field(default_factory=dict)

    @property
    def server_cpu(self) -> float:
        """CPU seconds of the whole process tree: the sum of its parts."""
        return sum(self.parts.values())

    @property
    def per_s(self) -> float:
        return len(self.samples) / self.seconds

    def lost(self) -> int:
        recorded = total_predictions(self.server.url, self.server.admin_password)
        return self.answered - (recorded - self.recorded_before)


def measure_round(tally: Tally, images: Sequence[bytes], clients: int, requests: int) -> None:
    """Warm up, then one measured load on ``tally``'s server, its CPU counted on both sides."""
    url, mix = tally.server.url, STRATEGIES
    warm = run_load(url, make_plans(images, clients, 2 * clients, mix), time.time() + 120)
    plans = make_plans(images, clients, requests, mix)
    assert tally.server.process is not None
    groups = server_parts(tally.server)
    before = {part: cpu_seconds(group) for part, group in groups.items()}
    client, machine = own_cpu_seconds(), machine_cpu_seconds()
    samples = run_load(url, plans, time.time() + 600)
    spent = {part: cpu_seconds(group) - before[part] for part, group in groups.items()}
    client = own_cpu_seconds() - client
    machine = machine_cpu_seconds() - machine
    seconds = elapsed(samples)
    tally.samples += samples
    tally.seconds += seconds
    for part, seconds_spent in spent.items():
        tally.parts[part] = tally.parts.get(part, 0.0) + seconds_spent
    tally.client_cpu += client
    tally.other_cpu += max(0.0, machine - sum(spent.values()) - client)
    tally.answered += sum(s.status == 200 for s in [*warm, *samples])
    tally.per_round.append(len(samples) / seconds)
    log.info("%s: %.1f predictions/s", tally.name, len(samples) / seconds)


def server_parts(server: GunicornServer) -> dict[str, list[int]]:
    """A server's process tree split into its gunicorn workers, nginx, and the rest."""
    assert server.process is not None
    workers = set(server.worker_pids())
    groups: dict[str, list[int]] = {"workers": [], "nginx": [], "rest": []}
    for pid in process_tree(server.process.pid):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        part = "workers" if pid in workers else "nginx" if comm == "nginx" else "rest"
        groups[part].append(pid)
    return groups


def forward_calls(version: str) -> dict[str, Callable[[], object]]:
    """One-image forwards of each strategy's members, on the runtime the server chose (the
    bank is loaded once; ``mean_forward_ms`` times them)."""
    torch.set_num_threads(1)
    artifact = load_artifact(version)
    spec = Manifest.from_dict(artifact.manifest).strategies
    bank = member_bank(artifact, os.environ.get("RUNTIME", "auto"))
    x = torch.zeros(1, 1, 28, 28)
    sets = {
        "bagging": spec.bagging.members,
        "boosting": spec.boosting.members,
        "stacking": spec.stacking.members,
    }
    return {
        name: lambda names=names: bank.select(names).probabilities(x)
        for name, names in sets.items()
    }


def mean_forward_ms(calls: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Median one-image forward per strategy of the mix (ab: the mean of its even split)."""
    times = dict(zip(calls, median_ms(*calls.values(), repeat=repeat), strict=True))
    times["ab"] = statistics.fmean(times[arm] for arm in AB_ARMS)  # an even split by default
    return times


def v2_images_per_s(
    url: str, images: Sequence[bytes], clients: int, requests: int, batch: int = V2_BATCH
) -> tuple[tuple[float, int, int], int]:
    """Concurrent V2 infer calls of ``batch`` PNGs each: (images/s, images answered in the
    measured calls, errors), and the images answered with the warm-up call."""
    files = images[:batch]  # fewer when --images is below the batch size
    body, headers = png_batch_request(files)
    path = "/v2/models/bagging/infer"
    batch = len(files)

    def client_loop(count: int) -> tuple[int, int, float, float]:
        ok = errors = 0
        with Client(url, timeout=120) as client:
            started = time.monotonic()
            for _ in range(count):
                status, _ = client.request("POST", path, body, headers)
                ok, errors = (ok + 1, errors) if status == 200 else (ok, errors + 1)
            return ok, errors, started, time.monotonic()

    warm = client_loop(1)[0]
    share = [requests // clients + (n < requests % clients) for n in range(clients)]
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        runs = list(pool.map(client_loop, share))
    seconds = max(r[3] for r in runs) - min(r[2] for r in runs)
    ok = sum(r[0] for r in runs)
    return (ok * batch / seconds, ok * batch, sum(r[1] for r in runs)), (ok + warm) * batch


def figures(tally: Tally, clients: int) -> dict[str, float]:
    """The numbers the table and the verdicts use, for one server."""
    latencies = [s.latency_ms for s in tally.samples]
    n = len(tally.samples)
    return {
        "per_s": tally.per_s,
        "p50": percentile(latencies, 50) or float("nan"),
        "p95": percentile(latencies, 95) or float("nan"),
        "p99": percentile(latencies, 99) or float("nan"),
        "mean": statistics.fmean(latencies),
        "little": clients / tally.per_s * 1e3,
        "errors": sum(s.status != 200 for s in tally.samples),
        "server_ms": tally.server_cpu * 1e3 / n,
        "client_ms": tally.client_cpu * 1e3 / n,
        "other_cores": tally.other_cpu / tally.seconds,
    }


def report(
    tallies: Sequence[Tally],
    lost: dict[str, int],
    clients: int,
    forward: dict[str, float],
    workers: int,
    v2: tuple[float, int, int],
    header: Sequence[str],
) -> tuple[str, bool]:
    """The side-by-side table, the verdicts, and whether the run was correct."""
    then, now = tallies
    rows = {t.name: figures(t, clients) for t in tallies}
    out = [*header, ""]
    out.append(
        f"{'server':12}{'pred/s':>8}{'rounds':>16}{'p50':>7}{'p95':>7}{'p99':>7}{'mean':>7}"
        f"{'Little':>8}{'errors':>7}{'lost':>5}{'srv CPU':>9}{'cli CPU':>9}{'other':>7}"
    )
    out.append(
        f"{'':12}{'':8}{'':16}{'ms':>7}{'ms':>7}{'ms':>7}{'ms':>7}{'ms':>8}{'':12}"
        f"{'ms/req':>9}{'ms/req':>9}{'cores':>7}"
    )
    for t in tallies:
        f = rows[t.name]
        rounds = "/".join(f"{r:.0f}" for r in t.per_round)
        out.append(
            f"{t.name:12}{f['per_s']:8.1f}{rounds:>16}{f['p50']:7.1f}{f['p95']:7.1f}"
            f"{f['p99']:7.1f}{f['mean']:7.1f}{f['little']:8.1f}{f['errors']:7.0f}"
            f"{lost[t.name]:5d}{f['server_ms']:9.2f}{f['client_ms']:9.2f}{f['other_cores']:7.2f}"
        )
    out.append("")
    for t in tallies:
        split = ", ".join(
            f"{part} {seconds * 1e3 / len(t.samples):.2f}" for part, seconds in t.parts.items()
        )
        out.append(f"server CPU ms/req by part, {t.name}: {split}")
    f = rows[now.name]
    ratio = f["per_s"] / rows[then.name]["per_s"]
    mix = statistics.fmean(forward[s] for s in STRATEGIES)
    ceiling = workers / mix * 1e3
    p99_ratio = f["p99"] / f["little"]
    cpu_budget = mix + TARGET_OUTSIDE_FORWARD_MS
    v2_rate, v2_images, v2_errors = v2
    # Both servers saturate the same cores, shared with the client: the ratio follows the CPU.
    then_cpu = rows[then.name]["server_ms"] + rows[then.name]["client_ms"]
    now_cpu = f["server_ms"] + f["client_ms"]
    errors = sum(int(rows[t.name]["errors"]) for t in tallies) + v2_errors
    out += [
        "",
        f"now / first release      {ratio:7.2f}x   target >= {TARGET_RATIO}x      "
        f"{verdict(ratio >= TARGET_RATIO)}",
        f"predictions/s now        {f['per_s']:7.1f}    target >= {TARGET_PER_S:.0f}       "
        f"{verdict(f['per_s'] >= TARGET_PER_S)}",
        f"p99 / Little mean now    {p99_ratio:7.2f}x   target <= {TARGET_P99_OVER_LITTLE}x      "
        f"{verdict(p99_ratio <= TARGET_P99_OVER_LITTLE)}",
        f"server CPU ms/req now    {f['server_ms']:7.2f}    target <= forward {mix:.2f} + "
        f"{TARGET_OUTSIDE_FORWARD_MS} = {cpu_budget:.2f}   {verdict(f['server_ms'] <= cpu_budget)}",
        f"errors, both servers     {errors:7d}    target 0          {verdict(errors == 0)}",
        f"lost records             {sum(lost.values()):7d}    target 0          "
        f"{verdict(not any(lost.values()))}",
        "",
        "one-image forward, median ms: "
        + ", ".join(f"{s} {forward[s]:.2f}" for s in STRATEGIES)
        + f"; mix mean {mix:.2f}",
        f"forward-only ceiling: {workers} workers / {mix:.2f} ms = {ceiling:.0f} predictions/s; "
        f"now reaches {100 * f['per_s'] / ceiling:.0f}% of it",
        f"CPU per request, server + client: then {then_cpu:.2f}, now {now_cpu:.2f} ms: "
        f"{then_cpu / now_cpu:.2f}x where the cores are the limit; {TARGET_RATIO}x needs now "
        f"<= {then_cpu / TARGET_RATIO:.2f} ms, {mix:.2f} of it the forward",
        f"V2 /v2/models/bagging/infer, batches of {V2_BATCH} from concurrent clients: "
        f"{v2_rate:.0f} images/s ({v2_images} images, {v2_errors} errors)",
    ]
    return "\n".join(out) + "\n", errors == 0 and not any(lost.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=FIRST_RELEASE, help="the commit to compare with")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=2000, help="per server and round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (1-10)")
    parser.add_argument("--images", type=int, default=500, help="distinct test images")
    parser.add_argument("--v2-clients", type=int, default=4)
    parser.add_argument("--v2-requests", type=int, default=40, help=f"batches of {V2_BATCH} in all")
    parser.add_argument("--repeat", type=int, default=300, help="timed forwards per strategy")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.requests < 1 or not 1 <= args.rounds <= 10:
        parser.error("--clients and --requests must be positive and --rounds 1-10")
    if args.v2_clients < 1 or args.v2_requests < 1:
        parser.error("--v2-clients and --v2-requests must be positive")
    if args.images < V2_BATCH:
        parser.error(f"--images must be at least {V2_BATCH}, the V2 step's batch size")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    tree = baseline_checkout(args.baseline)
    images = fashion_mnist_pngs(args.images)
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chorus-tput-")))
        (work / "then").mkdir()
        (work / "now").mkdir()
        then = stack.enter_context(BaselineServer(tree, work / "then"))
        now = stack.enter_context(FrontServer(work / "now"))
        tallies = [Tally(f"then {args.baseline}", then), Tally("now (front)", now)]
        for tally in tallies:
            tally.recorded_before = total_predictions(tally.server.url, tally.server.admin_password)
        with Client(now.url) as client:
            version = client.get_json("/readyz")["model_version"]
        # The forward is timed before and after the rounds: a shared VM's speed can move by a
        # third within one run, and the CPU budget and the ceiling rest on this figure.
        forwards = forward_calls(version)
        forward_before = mean_forward_ms(forwards, args.repeat)
        for n in range(args.rounds):
            for tally in tallies if n % 2 == 0 else tallies[::-1]:
                measure_round(tally, images, args.clients, args.requests)
        lost = {t.name: t.lost() for t in tallies}
        v2_before = total_predictions(now.url, now.admin_password)
        v2, v2_answered = v2_images_per_s(now.url, images, args.v2_clients, args.v2_requests)
        v2_recorded = total_predictions(now.url, now.admin_password) - v2_before
        lost["V2 images"] = v2_answered - v2_recorded
        with Client(then.url) as client:
            then_version = client.get_json("/readyz")["model_version"]
        workers, then_workers = len(now.worker_pids()), len(then.worker_pids())
        forward_after = mean_forward_ms(forwards, args.repeat)
    forward = {s: (forward_before[s] + forward_after[s]) / 2 for s in forward_before}
    before, after = (
        statistics.fmean(f[s] for s in STRATEGIES) for f in (forward_before, forward_after)
    )
    header = [
        f"CPU {cpu_model()}, {os.cpu_count()} cores; {args.clients} clients (threads), "
        f"{args.requests} predictions per server and round, {args.rounds} alternating rounds",
        f"then: {args.baseline} (gunicorn, {then_workers} workers, model "
        f"{then_version}); now: {ROOT.name} via deploy.serve (nginx + gunicorn, {workers} "
        f"workers, model {version})",
        f"forward mix mean timed before the rounds {before:.2f} ms, after them {after:.2f} ms "
        f"(the machine's speed moved {100 * (after - before) / before:+.1f}%; below, their mean)",
    ]
    text, correct = report(tallies, lost, args.clients, forward, workers, v2, header)
    sys.stdout.write(text)
    return 0 if correct else 1


if __name__ == "__main__":
    raise SystemExit(main())
