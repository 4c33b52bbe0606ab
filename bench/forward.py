"""Member forward against the CPU's limit: each runtime's GFLOP/s as a share of the matmul peak.

`python -m bench.forward [--version V] [--repeat R] [--runtimes torch,onnx]` prints, from one run:
the one-core fp32 matmul peak (``torch.matmul`` of two 1024x1024 float32 matrices on one thread,
best of 10, measured before and after the forwards; the higher one counts), then for every
runtime and every built-in member set (one member, bagging, boosting, stacking's members, all
nine) the bank's batch-1 and batch-64 forward (images in, every member's probabilities out):
median and best milliseconds, GFLOP/s and % of the peak from each, and the process's RSS once
each runtime's banks are built. With ONNX Runtime measured it also prints a second ceiling, the
same matmul by ONNX Runtime's MLAS (``mlas_peak_gflops``), and each median's share of it: MKL
behind ``torch.matmul`` takes a generic AVX2 path on AMD CPUs (``MKL_VERBOSE=1`` names "Intel(R)
Architecture processors"), so there the forwards outrun the issue's reference. The runtimes of
one member set are timed in alternation, so a machine that slows down mid-run shifts them alike.
ONNX's rows "sliced" run the one graph over every member and keep the set's rows: the design a
session per member set replaced.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from bench.load import cpu_model
from models.banks import MemberBank
from models.cnn import flops_per_image
from models.manifest import Manifest
from models.onnx_bank import DEFAULT_CACHE, member_bank
from models.registry import ARTIFACT_ROOT, load_artifact, record_section
from models.versions import TIMING_SECTION

log = logging.getLogger(__name__)
MATMUL_SIZE = 1024
BATCHES = (1, 64)
#: The issue's targets: share of the matmul peak for batch 1 and batch 64.
TARGETS = {1: 75.0, 64: 80.0}


def series_ms(*fns: Callable[[], object], repeat: int, warmup: int = 5) -> list[list[float]]:
    """Wall time of each function in milliseconds, ``repeat`` calls each.

    The functions are timed in alternation (one call of each per round), so a machine that
    speeds up or slows down during the run shifts all of them alike and their ratio holds.
    """
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for fn, series in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            series.append((time.perf_counter() - start) * 1e3)
    return times


def median_ms(*fns: Callable[[], object], repeat: int, warmup: int = 5) -> list[float]:
    """Median wall time of each function in milliseconds, timed in alternation."""
    return [statistics.median(s) for s in series_ms(*fns, repeat=repeat, warmup=warmup)]


def matmul_peak_gflops(size: int = MATMUL_SIZE, tries: int = 10) -> float:
    """One-thread fp32 matmul GFLOP/s, best of ``tries``: the ceiling the forwards are held to."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator)
    b = torch.randn(size, size, generator=generator)
    torch.matmul(a, b)  # first call allocates
    best = min(_timed(lambda: torch.matmul(a, b)) for _ in range(tries))
    return 2 * size**3 / best / 1e9


def mlas_peak_gflops(size: int = MATMUL_SIZE, tries: int = 10) -> float:
    """The same matmul by ONNX Runtime's MLAS on one thread, best of ``tries``: a second ceiling,
    since MKL (behind ``torch.matmul``) takes its generic AVX2 path on AMD CPUs while MLAS uses
    the AVX-512 units the forwards run on, so only this one bounds them there."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from models.onnx_bank import session_options

    square = [size, size]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "matmul",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, square) for n in ("a", "b")],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, square)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(
        model.SerializeToString(), session_options(), providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(0)
    feed = {n: rng.standard_normal(square, dtype=np.float32) for n in ("a", "b")}
    session.run(None, feed)  # first call allocates
    best = min(_timed(lambda: session.run(None, feed)) for _ in range(tries))
    return 2 * size**3 / best / 1e9


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def rss_mb() -> float:
    """Resident set size of this process now (Linux ``/proc/self/statm``), in MiB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


@dataclass(frozen=True)
class Row:
    """One runtime's forward of one member set at one batch size."""

    runtime: str
    label: str
    members: int
    batch: int
    median_ms: float
    best_ms: float

    def gflops(self, flops: int, ms: float) -> float:
        return self.members * self.batch * flops / (ms / 1e3) / 1e9

    def line(self, flops: int, peak: float, mlas: float | None = None) -> str:
        """The table row; ``mlas`` adds the median's share of MLAS's matmul peak."""
        median, best = self.gflops(flops, self.median_ms), self.gflops(flops, self.best_ms)
        return (
            f"{self.runtime:14}{self.label:14}{self.members:>4}{self.batch:>6}"
            f"{self.median_ms:>11.3f}{self.best_ms:>10.3f}{median:>9.1f}{best:>9.1f}"
            f"{100 * median / peak:>9.1f}{100 * best / peak:>9.1f}"
            + (f"{100 * median / mlas:>9.1f}" if mlas else "")
        )


HEADER = (
    f"{'runtime':14}{'members':14}{'k':>4}{'batch':>6}{'median ms':>11}{'best ms':>10}"
    f"{'GFLOP/s':>9}{'(best)':>9}{'% peak':>9}{'(best)':>9}"
)
#: The extra column when ONNX Runtime is measured: the median's share of MLAS's matmul peak.
MLAS_HEADER = f"{'% MLAS':>9}"


def member_sets(manifest: Manifest) -> list[tuple[str, tuple[str, ...]]]:
    """The built-in member sets, labelled: one member, each strategy's members, all of them."""
    spec = manifest.strategies
    names = manifest.member_names
    return [
        ("one member", names[:1]),
        ("bagging", spec.bagging.members),
        ("boosting", spec.boosting.members),
        ("stacking", spec.stacking.members),
        (f"all {len(names)}", names),
    ]


def _sliced(everything: MemberBank, names: Sequence[str]) -> Callable[[torch.Tensor], np.ndarray]:
    rows = np.array([everything.names.index(name) for name in names])
    return lambda x: everything.probabilities(x)[rows]


def measure(
    banks: dict[str, MemberBank],
    sets: list[tuple[str, tuple[str, ...]]],
    repeat: int,
    warmup: int,
) -> list[Row]:
    """Every runtime over every member set and batch, runtimes of one set in alternation."""
    rows: list[Row] = []
    generator = torch.Generator().manual_seed(1)
    cases = [(batch, label, names) for batch in BATCHES for label, names in sets]
    inputs = {batch: torch.randn(batch, 1, 28, 28, generator=generator) for batch in BATCHES}
    for batch, label, names in tqdm(cases, desc="forwards", leave=False):
        x = inputs[batch]
        runs = [(name, bank.select(names).probabilities) for name, bank in banks.items()]
        if "onnx" in banks and len(names) < len(banks["onnx"].names):
            runs.append(("onnx sliced", _sliced(banks["onnx"], names)))
        calls = [lambda fn=fn, x=x: fn(x) for _, fn in runs]
        series = series_ms(*calls, repeat=repeat, warmup=warmup)
        for (runtime, _), times in zip(runs, series, strict=True):
            median, best = statistics.median(times), min(times)
            rows.append(Row(runtime, label, len(names), batch, median, best))
    return rows


def _worst_sets(rows: list[Row], flops: int) -> Iterator[tuple[str, int, Row, list[Row]]]:
    """(runtime, batch, its set with the lowest median GFLOP/s, all its rows at that batch)."""
    for runtime in dict.fromkeys(row.runtime for row in rows):
        for batch in TARGETS:
            mine = [r for r in rows if r.runtime == runtime and r.batch == batch]
            if mine:
                yield runtime, batch, min(mine, key=lambda r: r.gflops(flops, r.median_ms)), mine


def verdicts(rows: list[Row], flops: int, peak: float) -> list[str]:
    """Each runtime's worst set at each batch size against the issue's targets."""
    out = []
    for runtime, batch, worst, mine in _worst_sets(rows, flops):
        target = TARGETS[batch]
        share = 100 * worst.gflops(flops, worst.median_ms) / peak
        best = 100 * min(r.gflops(flops, r.best_ms) for r in mine) / peak
        met = "meets" if share >= target else "misses"
        out.append(
            f"{runtime}: batch {batch} worst set {worst.label} at {share:.1f}% of peak "
            f"(median; {best:.1f}% from best times), {met} the {target:.0f}% target"
        )
    return out


def mlas_lines(mlas: float | None, peak: float) -> list[str]:
    """What the second ceiling is and how it compares, when it was measured."""
    if not mlas:
        return []
    return [
        f"MLAS matmul peak: {mlas:.1f} GFLOP/s (the same matmul by ONNX Runtime, 1 thread, best "
        f"of 10; {mlas / peak:.2f}x torch's): the targets are judged on torch's, as the issue "
        "defines; % MLAS is how close a forward comes to what this CPU's vector units reach"
    ]


def mlas_verdicts(rows: list[Row], flops: int, mlas: float) -> list[str]:
    """Each runtime's worst set at each batch size as a share of MLAS's peak (no target)."""
    return [
        f"{runtime}: batch {batch} worst set {worst.label} at "
        f"{100 * worst.gflops(flops, worst.median_ms) / mlas:.1f}% of MLAS's peak"
        for runtime, batch, worst, _ in _worst_sets(rows, flops)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default=None)
    parser.add_argument("--root", type=Path, default=ARTIFACT_ROOT, help="artifact folder")
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--runtimes", default="torch,onnx", help="comma-separated: torch, onnx")
    parser.add_argument("--onnx-cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument(
        "--record",
        action="store_true",
        help="keep the serving runtime's medians in the manifest (the console's forward times)",
    )
    args = parser.parse_args(argv)
    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    if not runtimes or set(runtimes) - {"torch", "onnx"}:
        parser.error(f"--runtimes takes torch and/or onnx, got {args.runtimes!r}")
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)  # serving's setting: one intra-op thread per worker
    rss = {"start": rss_mb()}
    artifact = load_artifact(args.version, args.root)
    manifest = Manifest.from_dict(artifact.manifest)
    flops = flops_per_image(manifest.cnn)
    sets = member_sets(manifest)
    rss["artifact loaded"] = rss_mb()
    peak_before = matmul_peak_gflops()
    banks: dict[str, MemberBank] = {}
    x = torch.zeros(1, 1, 28, 28)
    for runtime in runtimes:
        bank = member_bank(artifact, runtime, cache_dir=args.onnx_cache)
        for _, names in sets:
            bank.select(names).probabilities(x)  # build (and for ONNX verify) every session now
        banks[runtime] = bank
        rss[f"+ {runtime} banks"] = rss_mb()
    rows = measure(banks, sets, args.repeat, args.warmup)
    peak = max(peak_before, matmul_peak_gflops())
    versions = f"torch {torch.__version__}"
    mlas: float | None = None
    if "onnx" in banks:
        import onnxruntime

        versions += f", onnxruntime {onnxruntime.__version__}"
        mlas = mlas_peak_gflops()
    out = [
        f"model version {artifact.version}; {versions}; 1 thread; CPU {cpu_model()}",
        f"one member = {flops / 1e6:.1f} MFLOP per image (models.cnn.flops_per_image of "
        f"stages {list(manifest.cnn.stages)})",
        f"matmul peak: {peak:.1f} GFLOP/s ({MATMUL_SIZE}x{MATMUL_SIZE} fp32, 1 thread, best of "
        f"10; {peak_before:.1f} before the forwards); forwards: median and best of {args.repeat}",
        *mlas_lines(mlas, peak),
        "",
        HEADER + (MLAS_HEADER if mlas else ""),
        *(row.line(flops, peak, mlas) for row in rows),
        "",
        *verdicts(rows, flops, peak),
        *(mlas_verdicts(rows, flops, mlas) if mlas else []),
        "",
        "RSS: " + ", ".join(f"{stage} {mb:.0f} MiB" for stage, mb in rss.items()),
    ]
    sys.stdout.write("\n".join(out) + "\n")
    if args.record:
        record_section(artifact.path, TIMING_SECTION, timing_record(rows, args, peak, mlas))
        log.warning("recorded the forward times in %s", artifact.path / "manifest.json")
    return 0


def timing_record(
    rows: list[Row], args: argparse.Namespace, peak: float, mlas: float | None = None
) -> dict:
    """The serving runtime's (ONNX if measured, else torch) medians per member set and batch."""
    runtime = "onnx" if any(r.runtime == "onnx" for r in rows) else "torch"
    chosen = [r for r in rows if r.runtime == runtime]
    record: dict = {
        "runtime": runtime,
        "cpu": cpu_model(),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "repeat": args.repeat,
        "matmul_peak_gflops": round(peak, 1),
        "mlas_matmul_peak_gflops": round(mlas, 1) if mlas else None,
        "command": "python -m bench.forward --record"
        + (f" --version {args.version}" if args.version else ""),
    }
    for batch in BATCHES:
        record[f"batch{batch}_ms"] = {
            r.label: round(r.median_ms, 3) for r in chosen if r.batch == batch
        }
    return record


if __name__ == "__main__":
    raise SystemExit(main())
