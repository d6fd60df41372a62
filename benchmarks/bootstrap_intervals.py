"""Bootstrap 95% intervals of featx's metrics (evaluation.significance.bootstrap_ci), all resamples at once
against the baseline of one resample at a time through `point_metrics` (scikit-learn's metrics), in one run,
on the same resamples, for two and for three classes. Prints each one's seconds, the ratio, and the
largest difference between the two intervals (0: the same answer).

    python benchmarks/bootstrap_intervals.py [--images 624] [--resamples 1000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from featx.evaluation.significance import BOOTSTRAP_METRICS, bootstrap_ci, point_metrics


def one_at_a_time(y, proba, threshold, n_boot: int, seed: int) -> dict:
    """The baseline: the same stratified resamples as bootstrap_ci, each scored by point_metrics."""
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(y == c) for c in np.unique(y)]
    samples = {m: [] for m in BOOTSTRAP_METRICS}
    for _ in range(n_boot):
        rows = np.concatenate([rng.choice(r, size=len(r), replace=True) for r in by_class])
        for name, value in point_metrics(y[rows], proba[rows], threshold).items():
            samples[name].append(value)
    return {m: (float(np.quantile(v, 0.025)), float(np.quantile(v, 0.975)))
            for m, v in ((m, np.array([x for x in s if x is not None], float)) for m, s in samples.items())}


def case(k: int, n: int, n_boot: int) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k)) + 1.2 * np.eye(k)[y]
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    threshold = 0.5 if k == 2 else None
    started = time.perf_counter()
    slow = one_at_a_time(y, proba, threshold, n_boot, seed=1)
    baseline = time.perf_counter() - started
    started = time.perf_counter()
    fast = bootstrap_ci(y, proba, threshold, n_boot=n_boot, seed=1)
    featx_seconds = time.perf_counter() - started
    gap = max(abs(a - b) for m in BOOTSTRAP_METRICS for a, b in zip(fast[m], slow[m]))
    print(f"{k} classes, {n} images, {n_boot} resamples: one at a time {baseline:.2f} s, all at once "
          f"{featx_seconds:.3f} s ({baseline / featx_seconds:.0f}x); largest interval difference {gap:.1e}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=624)
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()
    for k in (2, 3):
        case(k, args.images, args.resamples)


if __name__ == "__main__":
    main()
