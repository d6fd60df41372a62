"""Uncertainty of a metric and paired tests between two methods on the same images.

- Stratified bootstrap: each class is resampled with replacement on its own, so every resample
  has the class balance of the data and ROC-AUC stays defined.
- DeLong's test for two correlated ROC-AUCs, in the fast form of Sun & Xu (2014).
- McNemar's test for two classifiers' accuracy: exact binomial below 25 discordant pairs,
  otherwise chi-squared with continuity correction.
- Holm's step-down correction, for a family of such tests (every method against the best).
"""

from __future__ import annotations

import math

import numpy as np
from sklearn import metrics as M

from .decision import decided

BOOTSTRAP_METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "f1", "roc_auc", "pr_auc")


def bootstrap_ci(y, proba, threshold: float | None = 0.5, *, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> dict[str, tuple[float, float] | None]:
    """Percentile confidence intervals of BOOTSTRAP_METRICS from stratified resamples, scored for all
    resamples at once (the same resamples and values as `point_metrics` on each, about 50x faster: a
    study's, a card's or a comparison's table has many cells); one at a time only when a class is absent."""
    y = np.asarray(y)
    proba = np.asarray(proba, dtype=np.float64)
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(y == c) for c in np.unique(y)]
    idx = np.array([np.concatenate([rng.choice(rows, size=len(rows), replace=True) for rows in by_class])
                    for _ in range(n_boot)]).reshape(n_boot, -1)
    if proba.shape[1] == 2 and len(by_class) == 2:
        samples = resampled_binary_metrics(y, proba, threshold, idx)
    elif proba.shape[1] > 2 and len(by_class) == proba.shape[1]:
        samples = resampled_multiclass_metrics(y, proba, idx)
    else:
        samples = {m: [] for m in BOOTSTRAP_METRICS}
        for rows in idx:
            for name, value in point_metrics(y[rows], proba[rows], threshold).items():
                samples[name].append(value)
    alpha = (1 - level) / 2
    out = {}
    for name, values in samples.items():
        values = np.array([v for v in values if v is not None], dtype=float)
        values = values[~np.isnan(values)]
        out[name] = (float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))) if len(values) else None
    return out


def resampled_binary_metrics(y, proba, threshold: float | None, idx: np.ndarray) -> dict[str, np.ndarray]:
    """`point_metrics` of two classes on every resample (row of `idx`) at once, both classes present in each:
    counts for the thresholded metrics, mid-ranks for ROC-AUC, and average precision as scikit-learn
    computes it (one step per distinct score, ties together)."""
    from scipy.stats import rankdata

    score = proba[:, 1]
    pred = score >= threshold if threshold is not None else proba[:, 1] > proba[:, 0]  # argmax: ties to class 0
    yb, pb, sb = y[idx] == 1, pred[idx], score[idx]
    n = idx.shape[1]
    positives = yb.sum(1)
    negatives = n - positives
    tp, fp = (pb & yb).sum(1), (pb & ~yb).sum(1)
    tn = negatives - fp
    with np.errstate(invalid="ignore", divide="ignore"):
        sensitivity, specificity = tp / positives, tn / negatives
        out = {"accuracy": (tp + tn) / n, "balanced_accuracy": (sensitivity + specificity) / 2,
               "sensitivity": sensitivity, "specificity": specificity,
               "f1": 2 * tp / (positives + tp + fp)}
        ranks = rankdata(sb, axis=1)
        out["roc_auc"] = ((ranks * yb).sum(1) - positives * (positives + 1) / 2) / (positives * negatives)
        out["pr_auc"] = _average_precision(yb, sb, positives)
    return {m: out[m] for m in BOOTSTRAP_METRICS}


def resampled_multiclass_metrics(y, proba, idx: np.ndarray) -> dict[str, np.ndarray]:
    """`point_metrics` of more than two classes (argmax, macro averages) on every resample at once, every
    class present in each: per-class counts, and one-vs-rest ROC-AUC and average precision per class as
    for two classes, then averaged."""
    from scipy.stats import rankdata

    k, n = proba.shape[1], idx.shape[1]
    yr, pr = y[idx], proba.argmax(1)[idx]
    classes = np.arange(k)
    is_y, is_p = yr[..., None] == classes, pr[..., None] == classes  # resamples x images x classes
    tp, support, predicted = (is_y & is_p).sum(1), is_y.sum(1), is_p.sum(1)
    tn = n - support - predicted + tp
    with np.errstate(invalid="ignore", divide="ignore"):
        recall, specificity = tp / support, tn / (n - support)
        f1 = np.where(support + predicted > 0, 2 * tp / (support + predicted), np.nan)
        aucs, aps = [], []
        for c in classes:
            yb, sb, positives = is_y[..., c], proba[:, c][idx], support[:, c]
            ranks = rankdata(sb, axis=1)
            aucs.append(((ranks * yb).sum(1) - positives * (positives + 1) / 2) / (positives * (n - positives)))
            aps.append(_average_precision(yb, sb, positives))
    return {"accuracy": tp.sum(1) / n, "balanced_accuracy": recall.mean(1), "sensitivity": np.nanmean(recall, 1),
            "specificity": np.nanmean(specificity, 1), "f1": np.nanmean(f1, 1), "roc_auc": np.mean(aucs, 0),
            "pr_auc": np.mean(aps, 0)}


def _average_precision(yb: np.ndarray, sb: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """Average precision per row: the sum over positives of the precision at the end of its tie group, over
    the positives (scikit-learn's step-wise AP, ties together)."""
    order = np.argsort(-sb, axis=1, kind="stable")
    s, t = np.take_along_axis(sb, order, 1), np.take_along_axis(yb, order, 1)
    cum_tp = np.cumsum(t, 1)
    n = s.shape[1]
    ends = np.where(np.append(s[:, 1:] != s[:, :-1], np.ones((len(s), 1), bool), axis=1), np.arange(n), n)
    group_end = np.minimum.accumulate(ends[:, ::-1], axis=1)[:, ::-1]  # each position's tie group's last index
    precision = np.take_along_axis(cum_tp, group_end, 1) / (group_end + 1)
    return (precision * t).sum(1) / positives


def bootstrap_auc_ci(y, proba, *, n_boot: int = 1000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float] | None:
    """The ROC-AUC interval of `bootstrap_ci` (stratified percentile bootstrap), all resamples at once
    for two classes: ranks instead of a scikit-learn call per resample, for tables of many cells."""
    y = np.asarray(y)
    proba = np.asarray(proba, dtype=np.float64)
    if proba.shape[1] != 2:
        return bootstrap_ci(y, proba, None, n_boot=n_boot, seed=seed, level=level)["roc_auc"]
    positives, negatives = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if not len(positives) or not len(negatives):
        return None
    from scipy.stats import rankdata

    rng = np.random.default_rng(seed)
    idx = np.hstack([rng.choice(negatives, (n_boot, len(negatives))), rng.choice(positives, (n_boot, len(positives)))])
    ranks = rankdata(proba[idx, 1], axis=1)  # ties share their mean rank, as in the Mann-Whitney U
    n1, n0 = len(positives), len(negatives)
    auc = (ranks[:, n0:].sum(1) - n1 * (n1 + 1) / 2) / (n1 * n0)
    alpha = (1 - level) / 2
    return float(np.quantile(auc, alpha)), float(np.quantile(auc, 1 - alpha))


def point_metrics(y, proba, threshold: float | None = 0.5) -> dict[str, float | None]:
    """The bootstrapped metrics, computed fast: binary at `threshold`, else argmax and macro averages."""
    k = proba.shape[1]
    pred = decided(proba, threshold)
    cm = np.zeros((k, k), np.int64)
    np.add.at(cm, (y, pred), 1)
    tp = np.diag(cm).astype(float)
    support, predicted = cm.sum(1), cm.sum(0)
    recall = np.divide(tp, support, out=np.full(k, np.nan), where=support > 0)
    tn = cm.sum() - support - predicted + tp
    specificity = np.divide(tn, cm.sum() - support, out=np.full(k, np.nan), where=(cm.sum() - support) > 0)
    f1 = np.divide(2 * tp, support + predicted, out=np.full(k, np.nan), where=(support + predicted) > 0)
    present = np.unique(y)
    out = {"accuracy": float(tp.sum() / len(y)), "balanced_accuracy": float(np.nanmean(recall[present]))}
    if k == 2:
        out.update(sensitivity=_num(recall[1]), specificity=_num(specificity[1]), f1=_num(f1[1]))
        both = len(present) == 2
        out["roc_auc"] = float(M.roc_auc_score(y, proba[:, 1])) if both else None
        out["pr_auc"] = float(M.average_precision_score(y, proba[:, 1])) if both else None
    else:
        out.update(sensitivity=_num(np.nanmean(recall)), specificity=_num(np.nanmean(specificity)),
                   f1=_num(np.nanmean(f1)))
        full = len(present) == k
        out["roc_auc"] = float(M.roc_auc_score(y, proba, multi_class="ovr", labels=np.arange(k))) if full else None
        out["pr_auc"] = float(M.average_precision_score(np.eye(k)[y], proba, average="macro")) if full else None
    return out


def _num(value) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def _midrank(x: np.ndarray) -> np.ndarray:
    """Ranks starting at 1, ties sharing the mean of their ranks."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    n = len(x)
    ranks = np.zeros(n)
    i = 0
    while i < n:
        j = i
        while j < n and sorted_x[j] == sorted_x[i]:
            j += 1
        ranks[i:j] = 0.5 * (i + j - 1) + 1
        i = j
    out = np.empty(n)
    out[order] = ranks
    return out


def delong_auc_variance(y, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of each row of `scores` (methods x images) and their DeLong covariance matrix."""
    y = np.asarray(y).astype(bool)
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    pos, neg = scores[:, y], scores[:, ~y]
    m, n = pos.shape[1], neg.shape[1]
    if m == 0 or n == 0:
        raise ValueError("DeLong's test needs both classes")
    aucs, v10, v01 = [], [], []
    for p, q in zip(pos, neg):
        tx, ty, tz = _midrank(p), _midrank(q), _midrank(np.concatenate([p, q]))
        aucs.append((tz[:m].sum() - m * (m + 1) / 2) / (m * n))
        v10.append((tz[:m] - tx) / n)        # per positive: share of negatives scored below it
        v01.append(1 - (tz[m:] - ty) / m)    # per negative: share of positives scored above it
    v10, v01 = np.array(v10), np.array(v01)
    cov = (np.atleast_2d(np.cov(v10)) / m if m > 1 else 0) + (np.atleast_2d(np.cov(v01)) / n if n > 1 else 0)
    return np.array(aucs), np.atleast_2d(cov)


def macro_auc_resampled(y, probas, *, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """Macro one-vs-rest ROC-AUC (scikit-learn's multi_class="ovr") of each of `probas` (runs x images x
    classes), on the same `n_boot` resamples of the images (stratified by class): n_boot x runs. The
    resamples are shared, so differences between runs are paired over the images."""
    from scipy.stats import rankdata

    y, probas = np.asarray(y), np.asarray(probas, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = np.hstack([rng.choice(np.flatnonzero(y == c), (n_boot, int((y == c).sum()))) for c in np.unique(y)])
    labels = y[idx[0]]  # every resample keeps each class's count, in the same order
    aucs = np.zeros((n_boot, len(probas)))
    for c in range(probas.shape[2]):
        positive = labels == c
        n1, n0 = int(positive.sum()), int((~positive).sum())
        for r, proba in enumerate(probas):
            ranks = rankdata(proba[idx, c], axis=1)
            aucs[:, r] += (ranks[:, positive].sum(1) - n1 * (n1 + 1) / 2) / (n1 * n0)
    return aucs / probas.shape[2]


def delong_test(y, scores_a, scores_b) -> dict:
    """Two-sided DeLong test that two methods scored on the same images have equal ROC-AUC."""
    aucs, cov = delong_auc_variance(y, np.vstack([scores_a, scores_b]))
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    diff = aucs[0] - aucs[1]
    if var <= 0:
        return {"auc_a": aucs[0], "auc_b": aucs[1], "z": 0.0 if diff == 0 else math.inf,
                "p_value": 1.0 if diff == 0 else 0.0}
    z = diff / math.sqrt(var)
    return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "z": float(z), "p_value": _two_sided_normal(z)}


def mcnemar_test(correct_a, correct_b) -> dict:
    """McNemar's test on paired correctness: b = only A right, c = only B right."""
    a, b_ = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    b, c = int((a & ~b_).sum()), int((~a & b_).sum())
    n = b + c
    if n == 0:
        return {"b": b, "c": c, "statistic": 0.0, "p_value": 1.0, "method": "no discordant pairs"}
    if n < 25:
        tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n
        return {"b": b, "c": c, "statistic": float(min(b, c)), "p_value": min(1.0, 2 * tail), "method": "exact"}
    stat = (abs(b - c) - 1) ** 2 / n
    return {"b": b, "c": c, "statistic": stat, "p_value": math.erfc(math.sqrt(stat / 2)),
            "method": "chi-squared, continuity-corrected"}


def _two_sided_normal(z: float) -> float:
    return math.erfc(abs(z) / math.sqrt(2))


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm-adjusted p-values (Holm 1979), in the given order; None entries are left out of the family.

    The k-th smallest of m p-values is multiplied by m - k + 1, and adjusted values are made
    non-decreasing in that order and capped at 1. Controls the family-wise error rate.
    """
    present = [(p, i) for i, p in enumerate(p_values) if p is not None]
    m, adjusted, running = len(present), list(p_values), 0.0
    for k, (p, i) in enumerate(sorted(present)):
        running = max(running, min(1.0, (m - k) * p))
        adjusted[i] = running
    return adjusted


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float] | None:
    """Wilson's score interval of a proportion (sensible at small n and near 0 or 1); None when n is 0."""
    if n <= 0:
        return None
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + level / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def labels_for_half_width(p: float, half_width: float = 0.05, level: float = 0.95) -> int:
    """About how many labelled images give a proportion near `p` an interval of +-`half_width` (normal
    approximation; p is kept at least 0.05 from 0 and 1 so a perfect small sample does not promise too much)."""
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + level / 2))
    p = min(max(p, 0.05), 0.95)
    return math.ceil(z * z * p * (1 - p) / half_width ** 2)
