"""What peeking costs: fixed-horizon vs always-valid sequential tests under continuous monitoring.

`python -m bench.peeking [--experiments 2000 --max-n 5000 --every 100 --seed 0]` simulates A/A
experiments (labelled accuracy 0.92 in both arms) and looks after every ``--every`` labelled
outcomes per arm up to ``--max-n`` per arm. It prints the share of experiments declared
significant at *any* look by (a) the fixed-horizon two-sided Welch test of ``compare`` (alpha
0.05), checked at every look, and (b) ``compare``'s always-valid sequential interval (N* =
``--tuning``, 5000 by default, on both arms' units as gbstats counts them); target (b) <= 5%.
Then the same looks with a real +2-point difference (0.92 vs 0.94): the power of (b) at any look,
the median labelled outcomes per arm when (b) first fires, and the fixed-horizon power at the
last look alone, for contrast.

The looks are vectorised with numpy (cumulative sums of per-look binomial counts, which is exactly
the running count of Bernoulli outcomes at each look). The decisions use the library's own
formulas: ``sequential_halfwidth`` on arrays, and the fixed-horizon test written out as in
``compare``; a random sample of (experiment, look) cells is then recomputed with ``compare`` itself
and the run fails if any decision differs.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from bench.load import cpu_model
from experiments.stats import RatioStats, compare, sequential_halfwidth

log = logging.getLogger(__name__)

TARGET_FALSE_POSITIVE = 0.05
"""Target for (b): the share of A/A experiments ever declared significant."""


@dataclass(frozen=True)
class Looks:
    """Cumulative correct counts per arm at each look: arrays of shape (experiments, looks)."""

    control: np.ndarray
    treatment: np.ndarray
    n: np.ndarray  # labelled outcomes per arm at each look, shape (looks,)


def simulate(
    rng: np.random.Generator, experiments: int, max_n: int, every: int, p_c: float, p_t: float
) -> Looks:
    """Running correct counts per arm after every ``every`` labelled outcomes up to ``max_n``."""
    looks = max_n // every
    if looks < 1:
        raise ValueError(f"--max-n ({max_n}) must be at least --every ({every})")
    control = np.cumsum(rng.binomial(every, p_c, size=(experiments, looks)), axis=1)
    treatment = np.cumsum(rng.binomial(every, p_t, size=(experiments, looks)), axis=1)
    return Looks(control, treatment, every * np.arange(1, looks + 1))


def _moments(looks: Looks) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Difference, its variance and each arm's per-unit variance p (1 - p) (ProportionStatistic)."""
    n = looks.n[np.newaxis, :].astype(float)
    p_c = looks.control / n
    p_t = looks.treatment / n
    var_c = p_c * (1.0 - p_c)
    var_t = p_t * (1.0 - p_t)
    return p_t - p_c, var_t / n + var_c / n, var_c, var_t


def fixed_horizon_significant(looks: Looks, alpha: float) -> np.ndarray:
    """Two-sided Welch t test as ``compare`` computes it, at every look (False when undefined)."""
    difference, variance, var_c, var_t = _moments(looks)
    n = looks.n[np.newaxis, :].astype(float)
    defined = (var_c > 0) & (var_t > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        dof = variance**2 / ((var_t**2 + var_c**2) / (n**2 * (n - 1.0)))
        t_stat = difference / np.sqrt(variance)
        p_value = 2.0 * sps.t.sf(np.abs(t_stat), dof)
    return defined & (p_value < alpha)


def sequential_significant(looks: Looks, alpha: float, tuning: int) -> np.ndarray:
    """``compare``'s sequential interval excludes 0: |difference| > sequential_halfwidth(...)."""
    difference, variance, var_c, var_t = _moments(looks)
    units = 2 * looks.n[np.newaxis, :]  # gbstats: n = n_control + n_treatment
    halfwidth = sequential_halfwidth(variance * units, units, alpha=alpha, tuning=tuning)
    defined = (var_c > 0) & (var_t > 0)
    return defined & (np.abs(difference) > halfwidth)


def verify_with_compare(
    looks: Looks,
    fixed: np.ndarray,
    sequential: np.ndarray,
    rng: np.random.Generator,
    cells: int,
    alpha: float,
    tuning: int,
) -> int:
    """Recompute random cells with ``compare`` itself; raise if any vectorised decision differs."""
    experiments, count = fixed.shape
    rows = rng.integers(0, experiments, cells)
    cols = rng.integers(0, count, cells)
    for i, k in zip(rows, cols, strict=True):
        n = int(looks.n[k])
        result = compare(
            RatioStats.proportion(int(looks.control[i, k]), n),
            RatioStats.proportion(int(looks.treatment[i, k]), n),
            alpha=alpha,
            tuning=tuning,
        )
        p_value = result["absolute"]["p_value"]
        low, high = result["sequential"]["ci_low"], result["sequential"]["ci_high"]
        lib_fixed = p_value is not None and p_value < alpha
        lib_sequential = low is not None and (low > 0 or high < 0)
        if lib_fixed != bool(fixed[i, k]) or lib_sequential != bool(sequential[i, k]):
            raise AssertionError(
                f"vectorised decision differs from compare() at experiment {i}, n={n}: "
                f"fixed {bool(fixed[i, k])} vs {lib_fixed}, "
                f"sequential {bool(sequential[i, k])} vs {lib_sequential}"
            )
    return cells


def _share(flags: np.ndarray) -> tuple[float, float]:
    """Share of True and its Monte Carlo standard error."""
    share = float(np.mean(flags))
    return share, math.sqrt(share * (1.0 - share) / flags.size)


def run(
    experiments: int,
    max_n: int,
    every: int,
    seed: int,
    accuracy: float = 0.92,
    lift: float = 0.02,
    alpha: float = 0.05,
    tuning: int = 5000,
    verify_cells: int = 200,
) -> dict:
    """Both scenarios (A/A and a real ``lift``); the figures the report prints."""
    rng = np.random.default_rng(seed)
    figures: dict = {}
    for scenario, p_t in (("aa", accuracy), ("lift", accuracy + lift)):
        looks = simulate(rng, experiments, max_n, every, accuracy, p_t)
        fixed = fixed_horizon_significant(looks, alpha)
        sequential = sequential_significant(looks, alpha, tuning)
        checked = verify_with_compare(looks, fixed, sequential, rng, verify_cells, alpha, tuning)
        fired = sequential.any(axis=1)
        first = sequential.argmax(axis=1)
        stop_n = looks.n[first[fired]]
        figures[scenario] = {
            "fixed_any_look": _share(fixed.any(axis=1)),
            "sequential_any_look": _share(fired),
            "fixed_last_look": _share(fixed[:, -1]),
            "sequential_last_look": _share(sequential[:, -1]),
            "median_stop_n": float(np.median(stop_n)) if stop_n.size else None,
            "verified_cells": checked,
            "looks": int(looks.n.size),
        }
    return figures


def main(argv: list[str] | None = None) -> int:
    """Simulate, print one table and the target line; exit 0 whether or not the target is met."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=2000, help="experiments per scenario")
    parser.add_argument("--max-n", type=int, default=5000, help="labelled outcomes per arm")
    parser.add_argument("--every", type=int, default=100, help="look after this many per arm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--accuracy", type=float, default=0.92, help="control accuracy")
    parser.add_argument("--lift", type=float, default=0.02, help="real difference, absolute")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--tuning", type=int, default=5000, help="sequential N*")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    start = time.perf_counter()
    figures = run(
        args.experiments,
        args.max_n,
        args.every,
        args.seed,
        accuracy=args.accuracy,
        lift=args.lift,
        alpha=args.alpha,
        tuning=args.tuning,
    )
    elapsed = time.perf_counter() - start
    aa, real = figures["aa"], figures["lift"]
    treated = args.accuracy + args.lift

    def pct(pair: tuple[float, float]) -> str:
        return f"{pair[0] * 100:6.2f}% ± {pair[1] * 100:4.2f}"

    out = [
        f"{args.experiments} experiments per scenario; looks after every {args.every} labelled "
        f"outcomes per arm up to {args.max_n} ({aa['looks']} looks); alpha {args.alpha:g}; "
        f"sequential N* = {args.tuning}; seed {args.seed}",
        "",
        f"{'':46}{'any look':>17}{'last look only':>19}",
        f"A/A, accuracy {args.accuracy:g} in both arms (share declared significant)",
        f"{'  (a) fixed-horizon Welch test at every look':46}{pct(aa['fixed_any_look']):>17}"
        f"{pct(aa['fixed_last_look']):>19}",
        f"{'  (b) sequential (always-valid) interval':46}{pct(aa['sequential_any_look']):>17}"
        f"{pct(aa['sequential_last_look']):>19}",
        f"{args.accuracy:g} vs {treated:g} (power)",
        f"{'  (a) fixed-horizon Welch test at every look':46}{pct(real['fixed_any_look']):>17}"
        f"{pct(real['fixed_last_look']):>19}",
        f"{'  (b) sequential (always-valid) interval':46}{pct(real['sequential_any_look']):>17}"
        f"{pct(real['sequential_last_look']):>19}",
        "",
        "  (b) median labelled outcomes per arm at the first significant look: "
        + (f"{real['median_stop_n']:.0f}" if real["median_stop_n"] is not None else "never"),
        "  fixed-horizon power at n = "
        f"{args.max_n} per arm (one look): {real['fixed_last_look'][0] * 100:.2f}%",
        f"decisions re-checked with compare() on {aa['verified_cells'] + real['verified_cells']} "
        f"random (experiment, look) cells: all equal",
        f"{elapsed:.1f} s on {cpu_model()}",
        "",
    ]
    met = aa["sequential_any_look"][0] <= TARGET_FALSE_POSITIVE
    out.append(
        f"target ((b) <= {TARGET_FALSE_POSITIVE:.0%} of A/A experiments ever significant): "
        f"{'MET' if met else 'NOT MET'} ({aa['sequential_any_look'][0] * 100:.2f}% vs "
        f"{aa['fixed_any_look'][0] * 100:.2f}% for (a))"
    )
    sys.stdout.write("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
