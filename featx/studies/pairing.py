"""Two methods of a study compared on the mean ROC-AUC over their repeats, with both sources of variation.

A study's number for a method at n labels depends on which n images were drawn (the repeats) and on which
images it was evaluated on. The difference of two methods' means is tested against the sum of two
variances: which images were evaluated (every repeat of both is scored on the same images: DeLong's
covariance of their AUCs for two classes, a paired bootstrap of the macro one-vs-rest ROC-AUC for more)
and which were drawn (the spread of the per-repeat differences over the repeats, s^2 / R, pairing repeat k
of one method with repeat k of the other, which saw the same budget). With a few repeats that spread is
itself uncertain, so the test uses Student's t with Welch-Satterthwaite degrees of freedom (R - 1 for the
draws, unbounded for the images), not the normal. The verdict and the recipe gains both use this one
comparison.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..evaluation.significance import delong_auc_variance, macro_auc_resampled

N_BOOT = 1000  # resamples of the evaluation images for more than two classes


@dataclass(frozen=True)
class Contrast:
    """Mean ROC-AUC of `b`'s repeats minus `a`'s, and its variance; `why` says why there is none."""

    difference: float | None
    variance: float | None = None
    why: str | None = None
    df: float = math.inf  # degrees of freedom of the variance (Welch-Satterthwaite)

    @property
    def p(self) -> float | None:
        """Two-sided p of no difference (Student's t with `df`; the normal when df is unbounded)."""
        if self.variance is None or self.difference is None:
            return None
        if self.variance <= 0:
            return 1.0 if self.difference == 0 else 0.0
        from scipy.stats import t

        return float(2 * t.sf(abs(self.difference) / math.sqrt(self.variance), self.df))

    @property
    def interval(self) -> tuple[float, float] | None:
        """The 95% interval of the difference."""
        if self.variance is None or self.difference is None:
            return None
        from scipy.stats import t

        half = float(t.ppf(0.975, self.df)) * math.sqrt(max(self.variance, 0.0))
        return self.difference - half, self.difference + half


def contrast(a: list[dict], b: list[dict], *, whole_pool: bool = False) -> Contrast:
    """Compare the unit records `a` and `b` (one per repeat, each with "y", "proba", "roc_auc", "repeat" and
    "eval_images"). `whole_pool`: every repeat trained on the same images (n = all), so no draw varies."""
    if any(r.get("roc_auc") is None for r in a + b):
        return Contrast(None, why="ROC-AUC undefined (an evaluation split without every class)")
    difference = float(np.mean([r["roc_auc"] for r in b]) - np.mean([r["roc_auc"] for r in a]))
    if len({r.get("eval_images") for r in a + b}) != 1:
        return Contrast(difference, why="evaluated on other images (a file one of them could not read)")
    images = _images_variance(a, b)
    if whole_pool:
        return Contrast(difference, images)
    drawn = _draws_variance(a, b)
    if drawn is None:
        return Contrast(difference, why="one draw per method: the spread over draws is unknown (--repeats 2 or more)")
    variance, repeats = images + drawn[0], drawn[1]
    df = math.inf if drawn[0] <= 0 else variance ** 2 * (repeats - 1) / drawn[0] ** 2
    return Contrast(difference, variance, df=df)


def _images_variance(a: list[dict], b: list[dict]) -> float:
    """The variance of the contrast over which images were evaluated (paired: the same images for all)."""
    runs = a + b
    weights = np.array([-1 / len(a)] * len(a) + [1 / len(b)] * len(b))
    y = np.asarray(runs[0]["y"])
    probas = [np.asarray(r["proba"], float) for r in runs]
    if probas[0].shape[1] == 2:
        _, cov = delong_auc_variance(y, np.array([p[:, 1] for p in probas]))
        return max(float(weights @ cov @ weights), 0.0)
    resampled = macro_auc_resampled(y, np.array(probas), n_boot=N_BOOT)
    return float(np.var(resampled @ weights, ddof=1))


def _draws_variance(a: list[dict], b: list[dict]) -> tuple[float, int] | None:
    """(s^2 / R of the differences over the repeats both ran, R): repeat k of each saw the same budget; where
    they share fewer than two repeats, the sum of the two methods' own s^2 / R (and the smaller R). None with
    one draw each."""
    mine, theirs = {r["repeat"]: r["roc_auc"] for r in a}, {r["repeat"]: r["roc_auc"] for r in b}
    shared = sorted(set(mine) & set(theirs))
    if len(shared) >= 2:
        gains = np.array([theirs[k] - mine[k] for k in shared])
        return float(gains.var(ddof=1) / len(gains)), len(gains)
    if len(mine) < 2 or len(theirs) < 2:
        return None
    return (float(np.var(list(mine.values()), ddof=1) / len(mine) + np.var(list(theirs.values()), ddof=1) /
                  len(theirs)), min(len(mine), len(theirs)))
