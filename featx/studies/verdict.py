"""A study's verdict: at each label budget, which method leads and whether its lead is significant, and for
each method the labels it needs to come within 0.01 ROC-AUC of its own full-data value (of its value at
its largest size, for a method not run on the whole pool).

The test is DeLong's, paired on the same evaluation images, on the mean ROC-AUC over the repeats: the
AUCs of every repeat of two methods share one DeLong covariance matrix (they are scored on the same
images), and the difference of the two means is a contrast of them. It holds the variation of which
images were evaluated; the variation of which were drawn is in the curves' bands. The leader is tested
against every other method, Holm-adjusted over them. Methods evaluated on other images (a fine-tune
that could not read one) are not tested.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from ..evaluation.significance import delong_auc_variance, holm

WITHIN = 0.01  # "labels needed": the smallest n within this of the method's ROC-AUC at its largest size


def verdict(records: list[dict]) -> list[str]:
    """The verdict paragraph, one line per size and one for the labels needed."""
    cells = defaultdict(list)
    for r in records:
        cells[(r["n"], r["method"])].append(r)
    sizes = sorted({n for n, _ in cells}, key=_order)
    lines = []
    for n in sizes:
        here = {m: rows for (size, m), rows in cells.items() if size == n and _auc(rows) is not None}
        if len(here) < 2:
            continue
        ranked = sorted(here, key=lambda m: -_auc(here[m]))
        leader, others = ranked[0], ranked[1:]
        p = holm([_paired_p(here[leader], here[m]) for m in others])
        images = np.mean([r["n_images"] for rows in here.values() for r in rows])
        parts = [f"{m} by {_auc(here[leader]) - _auc(here[m]):.3f} ({_p(q)})" for m, q in zip(others, p)]
        lines.append(f"n={n} ({images:.0f} images): {leader} leads, ROC-AUC {_auc(here[leader]):.3f} "
                     f"(mean of {len(here[leader])}); ahead of " + ", ".join(parts) + ".")
    needed = labels_needed(cells, sizes)
    if needed:
        lines.append(f"Labels needed (the smallest n within {WITHIN} ROC-AUC of the method's value at its largest n): "
                     + "; ".join(needed) + ".")
    if lines:
        lines.append("p: DeLong on the same evaluation images, mean over repeats, Holm-adjusted over the methods "
                     "behind the leader; it does not hold which images were drawn (the curves' bands do).")
    return lines


def labels_needed(cells: dict, sizes: list) -> list[str]:
    """'method: n (its AUC there, of its AUC at its largest size)' for each method."""
    out = []
    for method in sorted({m for _, m in cells}):
        measured = [n for n in sizes if _auc(cells.get((n, method), [])) is not None]
        if not measured:
            continue
        full = _auc(cells[(measured[-1], method)])
        n = next(n for n in measured if _auc(cells[(n, method)]) >= full - WITHIN)
        out.append(f"{method}: {n} ({_auc(cells[(n, method)]):.3f}, of {full:.3f} at n={measured[-1]})")
    return out


def _paired_p(a: list[dict], b: list[dict]) -> float | None:
    """Two-sided p of equal mean ROC-AUC (DeLong contrast over the repeats); None when not comparable."""
    rows = a + b
    if len({r.get("eval_images") for r in rows}) != 1 or any(len(r["proba"][0]) != 2 for r in rows):
        return None
    y = np.asarray(rows[0]["y"])
    if len(np.unique(y)) != 2:
        return None
    scores = np.array([np.asarray(r["proba"])[:, 1] for r in rows])
    aucs, cov = delong_auc_variance(y, scores)
    contrast = np.array([1 / len(a)] * len(a) + [-1 / len(b)] * len(b))
    diff, var = float(contrast @ aucs), float(contrast @ cov @ contrast)
    if var <= 0:
        return 1.0 if diff == 0 else 0.0
    return math.erfc(abs(diff) / math.sqrt(var) / math.sqrt(2))


def _auc(rows: list[dict]) -> float | None:
    values = [r["roc_auc"] for r in rows if r.get("roc_auc") is not None]
    return float(np.mean(values)) if values else None


def _order(n):
    return (n == "all", n if n != "all" else 0)


def _p(p: float | None) -> str:
    if p is None:
        return "not tested: other images"
    if p < 0.001:
        return "p<0.001"
    return f"p={p:.3f}" + ("" if p < 0.05 else ", not significant")
