"""What the cascade's early exits buy against Stacking, measured in one run.

`python -m bench.cascade [--version V] [--timing-images N] [--threads T]` prints, on the 10,000
test images with the shipped artifact: for a sweep of thresholds, the cascade's accuracy, mean
members run, mean MFLOP per image, its FLOPs as a share of Stacking's and its accuracy
difference to Stacking in points (the shipped threshold marked ``*``); then wall-clock ms per
image at batch 1 for ``cascade.predict`` against ``stacking.predict``, timed in alternation on one
torch thread; and whether the target (within 0.2 points of Stacking at no more than a third of
its FLOPs) is met. The sweep only reports: the shipped threshold was chosen on the blend split.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from bench.load import cpu_model
from ensembles.bundle import load_bundle
from ensembles.cascade import Cascade, cascade_combine
from ensembles.stacking import Stacking
from models.banks import member_probabilities
from models.data import load_fashion_mnist
from models.tensor import to_tensor

log = logging.getLogger(__name__)
THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999, 1.0)
#: The target: at most this many points below Stacking, at most this share of its FLOPs.
MAX_GAP_POINTS = 0.2
MAX_FLOPS_SHARE = 1 / 3


def time_batch1(
    cascade: Cascade, stacking: Stacking, images: np.ndarray, threads: int
) -> tuple[list[float], list[float], list[int]]:
    """ms per image at batch 1 for cascade and stacking, alternating which goes first."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        cascade.warm_up()
        for i in range(5):
            x = to_tensor(images[i : i + 1])
            cascade.predict(x)
            stacking.predict(x)
        times: dict[str, list[float]] = {"cascade": [], "stacking": []}
        used: list[int] = []
        for i in tqdm(range(len(images)), desc="batch-1 timing", leave=False):
            x = to_tensor(images[i : i + 1])
            order = ("cascade", "stacking") if i % 2 == 0 else ("stacking", "cascade")
            for name in order:
                ensemble = cascade if name == "cascade" else stacking
                start = time.perf_counter()
                result = ensemble.predict(x)
                times[name].append((time.perf_counter() - start) * 1e3)
                if name == "cascade":
                    used.append(int(result.members_used[0]))
    finally:
        torch.set_num_threads(previous)
    return times["cascade"], times["stacking"], used


def main(argv: list[str] | None = None) -> int:
    """Sweep thresholds on the test split and time batch-1 predictions; print one report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default=None, help="artifact version (default: newest)")
    parser.add_argument("--timing-images", type=int, default=300, help="batch-1 timed images")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for timing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    bundle = load_bundle(args.version)
    if "cascade" not in bundle.ensembles:
        sys.stderr.write(f"model version {bundle.version} has no cascade; retrain it\n")
        return 1
    cascade: Cascade = bundle.ensembles["cascade"]
    stacking = bundle.ensembles["stacking"]
    data = load_fashion_mnist()
    images, labels = data.test_images, data.test_labels

    probs = member_probabilities(cascade.forward_members, images, 1000, desc="test members")
    position = {name: i for i, name in enumerate(cascade.member_names_)}
    stack_probs = probs[[position[name] for name in stacking.member_names_]]
    stack_result = stacking.combine_outputs(stacking.split_outputs(stack_probs))
    stack_acc = float(np.mean(stack_result.predictions == labels))
    unit = cascade.mflops_per_member
    stack_mflops = len(stacking.member_names_) * unit

    out = [
        f"model version {bundle.version}; test n={len(labels)}; one member = {unit:.1f} MFLOP "
        f"per image; cascade: {cascade.pool} pool over {len(cascade.member_names_)} members, "
        f"shipped threshold {cascade.threshold:g} (chosen on the blend split)",
        "",
        f"{'':12}{'threshold':>10}{'accuracy':>10}{'members':>9}{'MFLOP':>8}"
        f"{'FLOPs/stacking':>16}{'acc diff pts':>14}",
        f"{'stacking':12}{'':>10}{stack_acc:>10.4f}{len(stacking.member_names_):>9.2f}"
        f"{stack_mflops:>8.1f}{1.0:>16.3f}{0.0:>+14.2f}",
    ]
    shipped = (0.0, 0.0, 0.0)
    for threshold in sorted({*THRESHOLDS, cascade.threshold}):
        combined, used = cascade_combine(
            probs, cascade.weights_, threshold, cascade.pool, cascade.bias
        )
        acc = float(np.mean(combined.argmax(-1) == labels))
        mflops = float(used.mean()) * unit
        row = (acc, float(used.mean()), mflops)
        mark = "*" if threshold == cascade.threshold else ""
        if mark:
            shipped = row
        out.append(
            f"{'cascade' + mark:12}{threshold:>10g}{acc:>10.4f}{used.mean():>9.2f}{mflops:>8.1f}"
            f"{mflops / stack_mflops:>16.3f}{(acc - stack_acc) * 100:>+14.2f}"
        )

    n_time = min(args.timing_images, len(images))
    sample = images[np.random.default_rng(0).choice(len(images), n_time, replace=False)]
    c_ms, s_ms, used = time_batch1(cascade, stacking, sample, args.threads)
    c_mean, s_mean = statistics.fmean(c_ms), statistics.fmean(s_ms)
    out += [
        "",
        f"batch 1, {n_time} test images, {args.threads} torch thread(s), alternating; "
        f"{cpu_model()}, torch {torch.__version__}",
        f"{'':22}{'mean ms':>9}{'median ms':>11}{'members':>9}",
        f"{'cascade.predict':22}{c_mean:>9.3f}{statistics.median(c_ms):>11.3f}"
        f"{statistics.fmean(used):>9.2f}",
        f"{'stacking.predict':22}{s_mean:>9.3f}{statistics.median(s_ms):>11.3f}"
        f"{len(stacking.member_names_):>9.2f}",
        f"cascade / stacking wall-clock: {c_mean / s_mean:.3f} (mean), "
        f"{statistics.median(c_ms) / statistics.median(s_ms):.3f} (median)",
    ]
    acc, members, mflops = shipped
    gap = (acc - stack_acc) * 100
    met = gap >= -MAX_GAP_POINTS - 1e-9 and mflops <= stack_mflops * MAX_FLOPS_SHARE
    out += [
        "",
        f"target (within {MAX_GAP_POINTS} points of Stacking at <= 1/3 of its FLOPs): "
        f"{'MET' if met else 'NOT MET'} (shipped cascade {acc:.4f} vs stacking {stack_acc:.4f}, "
        f"{gap:+.2f} points; {mflops:.1f} vs {stack_mflops:.1f} MFLOP, "
        f"{mflops / stack_mflops:.3f} of Stacking's)",
    ]
    sys.stdout.write("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
