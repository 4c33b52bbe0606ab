"""Forward latency of members and ensembles: fused batched forward vs a Python loop over members.

`python -m bench.forward [--version V] [--threads N] [--repeat R]` prints, from one run, the
median latency of one member and of each whole ensemble for 1 image and a batch of 64, the
fused/loop ratio, and the GFLOP/s the fused forward achieves.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections.abc import Callable

import torch

from ensembles.bundle import load_bundle
from models.cnn import flops_per_image

log = logging.getLogger(__name__)


def median_ms(*fns: Callable[[], object], repeat: int, warmup: int = 5) -> list[float]:
    """Median wall time of each function in milliseconds.

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
    return [statistics.median(series) for series in times]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (serving uses 1)")
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    bundle = load_bundle(args.version)
    flops = flops_per_image(bundle.ensembles["bagging"].cnn)
    out = [
        f"model version {bundle.version}; torch {torch.__version__}, {args.threads} thread(s); "
        f"one member = {flops / 1e6:.1f} MFLOP per image; median of {args.repeat} runs",
        "",
        f"{'':22}{'batch':>6}{'members':>8}{'loop ms':>10}{'fused ms':>10}{'fused/loop':>11}"
        f"{'GFLOP/s':>9}",
    ]
    with torch.inference_mode():
        rows = [("one member", bundle.ensembles["bagging"], 1)]
        rows += [(name, ens, None) for name, ens in bundle.ensembles.items()]
        for batch in (1, 64):
            x = torch.randn(batch, 1, 28, 28)
            for label, ensemble, limit in rows:
                modules = ensemble.bank._member_modules()[:limit]
                bank = ensemble.bank.select(ensemble.bank.names[:limit]).fused
                k = len(modules)
                loop, fused = median_ms(
                    lambda modules=modules, x=x: [m(x) for m in modules],
                    lambda bank=bank, x=x: bank(x),
                    repeat=args.repeat,
                )
                gflops = k * batch * flops / (fused / 1e3) / 1e9
                out.append(
                    f"{label:22}{batch:>6}{k:>8}{loop:>10.3f}{fused:>10.3f}{fused / loop:>11.2f}"
                    f"{gflops:>9.1f}"
                )
            (whole,) = median_ms(lambda x=x: bundle.predict("stacking", x), repeat=args.repeat)
            out.append(f"{'stacking predict()':22}{batch:>6}{'':>8}{'':>10}{whole:>10.3f}")
            out.append("")
    sys.stdout.write("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
