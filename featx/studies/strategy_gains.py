"""What a labelling strategy saves over random draws, per method: the verdict's "labels saved" lines.

Rows: one per (method, strategy, n, repeat), each with "method" (the method without its strategy),
"strategy", "n", "n_images" (every label the strategy saw) and "roc_auc". For each larger budget m of the
random curve, a strategy "reaches random's n=m ROC-AUC" at the smallest of its own budgets whose mean
ROC-AUC over the repeats is at least random's mean at m; the labels are the mean number it saw there.
Intervals are 95% t-intervals over the repeats (which images were drawn or chosen).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

import numpy as np

from ..artifacts.sidecar import CLEANED
from ..data.budgets import size_order
from ..labelling.strategies import SEED_STRATEGY, needs_model

RANDOM = "random"


def over_repeats(values) -> tuple[float, float | None, float | None]:
    """(mean, low, high) of a 95% t-interval over the repeats; no interval from one repeat."""
    values = np.asarray([v for v in values if v is not None], float)
    if not len(values):
        return float("nan"), None, None
    if len(values) < 2:
        return float(values.mean()), None, None
    from scipy.stats import t

    half = float(t.ppf(0.975, len(values) - 1)) * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean()), float(values.mean() - half), float(values.mean() + half)


def _cells(rows: list[dict]) -> dict:
    cells = defaultdict(list)
    for r in rows:
        cells[(r["method"], r["strategy"], r["n"])].append(r)
    return cells


def _shown(rows: list[dict], metric: str = "roc_auc") -> str:
    mean, low, high = over_repeats([r.get(metric) for r in rows])
    low, high = (None, None) if low is None else (max(low, 0.0), min(high, 1.0))  # a t-interval may pass the bounds
    return f"{mean:.3f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None else "")


def _labels(rows: list[dict]) -> str:
    counts = [int(r["n_images"]) for r in rows]
    return str(counts[0]) if len(set(counts)) == 1 else f"{np.mean(counts):.1f} (mean; {min(counts)}-{max(counts)})"


def strategy_summary(rows: list[dict]) -> list[str]:
    """One line per method, strategy and size: ROC-AUC and balanced accuracy with their intervals over repeats."""
    cells = _cells(rows)
    lines = []
    for method, strategy, n in sorted(cells, key=lambda k: (k[0], k[1] != RANDOM, k[1], size_order(k[2]))):
        here = cells[(method, strategy, n)]
        lines.append(f"{method}, {strategy} n={n} ({_labels(here)} labels, {len(here)} repeats): ROC-AUC "
                     f"{_shown(here)}, balanced accuracy {_shown(here, 'balanced_accuracy')}")
    return lines


def labels_saved(rows: list[dict]) -> list[str]:
    """Per method and strategy, the labels it needed to reach random's ROC-AUC at each larger budget."""
    cells = _cells(rows)
    lines = []
    for method in sorted({m for m, _, _ in cells}):
        random = {n: cells[(method, RANDOM, n)] for m, s, n in cells if m == method and s == RANDOM}
        for strategy in sorted({s for m, s, _ in cells if m == method and s != RANDOM}):
            mine = {n: cells[(method, strategy, n)] for m, s, n in cells if m == method and s == strategy}
            parts = [_reached(random, mine, m) for m in sorted(random, key=size_order)]
            parts = [p for p in parts if p]
            if parts:
                lines.append(f"Labels saved, {method} with {strategy} labels: " + "; ".join(parts) + ".")
    return lines


def _reached(random: dict, mine: dict, m) -> str:
    """'random's n=m ROC-AUC (value) with L labels (its value [interval])', or that it is not reached."""
    target = over_repeats([r["roc_auc"] for r in random[m]])[0]
    smaller = [n for n in sorted(mine, key=size_order) if size_order(n) <= size_order(m)]
    if not smaller:
        return ""
    hit = next((n for n in smaller if over_repeats([r["roc_auc"] for r in mine[n]])[0] >= target), None)
    if hit is None:
        return f"random's n={m} ROC-AUC ({target:.3f}) not reached up to n={smaller[-1]}"
    if hit == m:  # no label saved: at or above random at the same size
        return f"at n={m} at or above random ({_shown(mine[hit])} against {target:.3f}), no label saved"
    return (f"random's n={m} ROC-AUC ({target:.3f}) with {_labels(mine[hit])} labels "
            f"({_shown(mine[hit])})")


def strategy_note(strategy: str, sizes) -> str:
    """The plan's line on how a strategy labels, round by round, up to each size."""
    numbers = [n for n in sizes if n != "all"]
    if len(numbers) < 2:
        return f"strategy {strategy}: " + (f"{numbers[0]} images chosen at once" + (f" by {SEED_STRATEGY} (one size: no "
                                           "round with a model)" if needs_model(strategy) else "")
                                           if numbers else "no size below the whole pool, so no unit")
    steps = ", ".join(f"+{b - a}" for a, b in zip(numbers, numbers[1:]))
    start = (f"first {numbers[0]} by {SEED_STRATEGY}, then rounds of {steps}, each chosen with a logistic regression "
             "trained on the labels so far" if needs_model(strategy) else
             f"{numbers[0]}, then {steps} more, each round given the images already chosen")
    return (f"strategy {strategy}: nested rounds on each backbone's frozen features, {start}; where the images chosen "
            "hold fewer than 2 patients of a class it goes on choosing, one image at a time, and those labels count too "
            "(n_images); no n=all (the whole pool is random's)")


def strategy_rows(records: list[dict]) -> list[dict]:
    """A study's records as labels_saved reads them: the method without its strategy, and the strategy."""
    return [{**r, "method": replace(r["method_id"], labels=None).label, "strategy": r["method_id"].labels or RANDOM}
            for r in records if r["method_id"].labels != CLEANED]
