"""What each fine-tune recipe of a study gains over the first one, at each label budget, with an interval.

The gain is the mean over repeats of (recipe's ROC-AUC - baseline's ROC-AUC), both scored on the same
evaluation images after training on the same budget. Its 95% interval adds two variances: DeLong's of the
contrast of the repeats' AUCs (which images were evaluated; all AUCs share one covariance matrix) and the
spread of the per-repeat gains over the repeats (which images were drawn, s^2 / R). A default is worth
changing only where this interval excludes zero.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from ..artifacts.sidecar import MethodId
from ..data.budgets import size_order
from .pairing import contrast


def recipe_gains(records: list[dict]) -> list[dict]:
    """One row per (n, recipe other than the first of its backbone): n, recipe, baseline, gain, low, high,
    the repeats' gains, mean AUC and mean training seconds of both."""
    fine = [r for r in records if r["method_id"].finetuned and r["method_id"].recipe is not None]
    first: dict[str, MethodId] = {}
    for r in fine:
        first.setdefault(r["method_id"].backbone, r["method_id"])
    cells = defaultdict(dict)  # (n, method) -> repeat -> record
    for r in fine:
        cells[(r["n"], r["method_id"])][r["repeat"]] = r
    rows = []
    for (n, method), runs in cells.items():
        baseline = first[method.backbone]
        base = cells.get((n, baseline), {})
        repeats = sorted(set(runs) & set(base))
        if method == baseline or not repeats:
            continue
        pairs = [(base[k], runs[k]) for k in repeats]
        found = contrast([b for b, _ in pairs], [r for _, r in pairs], whole_pool=n == "all")
        low, high = found.interval or (None, None)
        rows.append({"n": n, "recipe": method.label, "baseline": baseline.label, "gain": found.difference, "low": low,
                     "high": high, "why": found.why,
                     "roc_auc": _mean(r["roc_auc"] for _, r in pairs),
                     "baseline_roc_auc": _mean(b["roc_auc"] for b, _ in pairs),
                     "train_seconds": float(np.mean([r["train_seconds"] for _, r in pairs])),
                     "baseline_train_seconds": float(np.mean([b["train_seconds"] for b, _ in pairs]))})
    return sorted(rows, key=lambda row: size_order(row["n"]))


def _mean(values) -> float | None:
    values = list(values)
    return None if any(v is None for v in values) else float(np.mean(values))


def gain_lines(rows: list[dict]) -> list[str]:
    """The gains in words, one line each, for the study's output and report."""
    lines = [f"n={r['n']}: {r['recipe']} vs {r['baseline']}: " + _said(r)
             + f"; train {r['train_seconds']:.0f} s vs {r['baseline_train_seconds']:.0f} s" for r in rows]
    if lines:
        lines.append("gain: mean over repeats of the paired ROC-AUC difference on the same evaluation images; 95% "
                     "interval from DeLong's variance (images evaluated) plus the repeats' spread (images drawn).")
    return lines


def _said(r: dict) -> str:
    if r["gain"] is None:
        return r["why"]
    said = f"ROC-AUC {r['roc_auc']:.3f} vs {r['baseline_roc_auc']:.3f}, gain {r['gain']:+.4f}"
    if r["low"] is None:
        return said + f" (no interval: {r['why']})"
    return said + f" [{r['low']:+.4f}, {r['high']:+.4f}]" + ("" if r["low"] <= 0 <= r["high"] else " (excludes 0)")
