"""featx audit against known label errors: flip a seeded share of the train labels of a cache, audit them
(labelling.auditing: out-of-fold probabilities by patient-grouped folds, then cleanlab), and score the flags
against the flips (precision, recall). Then the evaluation ROC-AUC of a logistic regression (chosen by
patient-grouped CV, as featx fit without a validation split) trained on the true labels, on the flipped
labels, and on the flipped labels without the flagged images: how much of the loss "flagged removed"
recovers. The evaluation split is never flipped, audited or cleaned. Last, the audit of the real labels.

    python benchmarks/label_audit.py CACHE.h5 [--rates 0.05,0.10] [--eval val]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.metrics import roc_auc_score

from featx.features.store import FeatureStore
from featx.heads.selection import select_head
from featx.labelling.auditing import audit_arrays


def evaluation_auc(X, y, groups, X_eval, y_eval) -> float:
    sel = select_head("logreg", X, y, groups, seed=0)
    return float(roc_auc_score(y_eval, sel.estimator.predict_proba(X_eval)[:, 1]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("cache")
    parser.add_argument("--rates", default="0.05,0.10")
    parser.add_argument("--eval", default="val")
    args = parser.parse_args()
    store = FeatureStore(args.cache)
    X, y = store.arrays("train")
    X = X.astype(np.float32)
    groups, paths = np.asarray(store.groups("train")), store.paths("train")
    X_eval, y_eval = store.arrays(args.eval)
    clean = evaluation_auc(X, y, groups, X_eval, y_eval)
    print(f"{store.config['backbone']}: {len(y)} train images, evaluated on {len(y_eval)} {args.eval} images; "
          f"true labels: evaluation ROC-AUC {clean:.4f}")
    for rate in map(float, args.rates.split(",")):
        rng = np.random.default_rng(int(rate * 1000))
        flipped = rng.choice(len(y), int(round(rate * len(y))), replace=False)
        noisy = y.copy()
        noisy[flipped] = 1 - noisy[flipped]
        started = time.perf_counter()
        found = audit_arrays(X, noisy, groups, paths, list(store.classes))
        seconds = time.perf_counter() - started
        flagged = {paths.index(p) for p in found.paths}
        hits = len(flagged & set(flipped.tolist()))
        keep = np.array([i not in flagged for i in range(len(y))])
        lost = evaluation_auc(X, noisy, groups, X_eval, y_eval)
        cleaned = evaluation_auc(X[keep], noisy[keep], groups[keep], X_eval, y_eval)
        print(f"flip {rate:.0%} ({len(flipped)} labels): {len(flagged)} flagged in {seconds:.1f} s; precision "
              f"{hits / max(len(flagged), 1):.3f}, recall {hits / len(flipped):.3f}; evaluation ROC-AUC true labels "
              f"{clean:.4f}, flipped {lost:.4f}, flipped less flagged {cleaned:.4f} (recovers "
              f"{(cleaned - lost) / max(clean - lost, 1e-9):.0%} of the loss)")
    started = time.perf_counter()
    real = audit_arrays(X, y, groups, paths, list(store.classes))
    print(f"real labels: {len(real.paths)} of {len(y)} flagged in {time.perf_counter() - started:.1f} s "
          f"({sum(g == 'NORMAL' for g in real.given)} labelled NORMAL, {sum(g == 'PNEUMONIA' for g in real.given)} "
          "PNEUMONIA)")
    started = time.perf_counter()
    select_head("logreg", X, y, groups, seed=0)
    print(f"one featx fit's selection (logreg, group CV on the same images) for comparison: "
          f"{time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
