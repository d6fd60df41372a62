import numpy as np
import pytest
from sklearn import metrics as M

from featx import FeatxError
from featx.evaluation.metrics import evaluate
from featx.evaluation.thresholds import choose_threshold


def test_binary_metrics_match_a_hand_count():
    y = np.array([0, 0, 0, 1, 1, 1, 1])
    p1 = np.array([0.1, 0.6, 0.3, 0.8, 0.4, 0.9, 0.7])
    m = evaluate(y, np.c_[1 - p1, p1], ["NORMAL", "PNEUMONIA"])
    # at 0.5: TP=3 (0.8, 0.9, 0.7), FN=1 (0.4), FP=1 (0.6), TN=2
    assert m["confusion_matrix"] == [[2, 1], [1, 3]]
    assert m["sensitivity"] == pytest.approx(3 / 4) and m["specificity"] == pytest.approx(2 / 3)
    assert m["precision"] == pytest.approx(3 / 4) and m["f1"] == pytest.approx(3 / 4)
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 2 / 3) / 2)
    assert m["roc_auc"] == pytest.approx(M.roc_auc_score(y, p1))
    assert m["brier"] == pytest.approx(np.mean((p1 - y) ** 2))
    # Average precision by hand, thresholds from the top: recall steps of 1/4 at precision 1, 1, 1, then
    # 0.6 adds a false positive (no recall), then 0.4 adds the last positive at precision 4/5.
    assert m["pr_auc"] == pytest.approx(0.25 + 0.25 + 0.25 + 0.25 * 0.8)
    assert m["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.4, 0.7, 0.8, 0.4, 0.9, 0.7])))
    assert m["pr_auc"] == pytest.approx(M.average_precision_score(y, p1)) and m["log_loss"] == pytest.approx(
        M.log_loss(y, np.c_[1 - p1, p1]))


def test_youden_and_f1_thresholds_match_a_hand_count():
    y = np.array([0, 0, 0, 1, 1, 1, 1])
    p1 = np.array([0.1, 0.6, 0.3, 0.8, 0.4, 0.9, 0.7])
    # Predict positive at >= t. Youden's J = TPR - FPR: t 0.7 gives 3/4 - 0 = 0.75, the best
    # (0.4: 1 - 1/3; 0.6: 3/4 - 1/3). F1: t 0.4 gives P 4/5, R 1, F1 8/9 = 0.889, the best
    # (0.7: P 1, R 3/4, F1 0.857).
    assert choose_threshold(y, p1, "youden") == pytest.approx(0.7)
    assert choose_threshold(y, p1, "f1") == pytest.approx(0.4)
    assert choose_threshold(y, p1, "sensitivity=0.75") == pytest.approx(0.7)


def test_threshold_changes_the_decision():
    y = np.array([0, 0, 1, 1])
    p1 = np.array([0.2, 0.4, 0.45, 0.9])
    assert evaluate(y, np.c_[1 - p1, p1], ["a", "b"], threshold=0.42)["accuracy"] == 1.0
    assert evaluate(y, np.c_[1 - p1, p1], ["a", "b"])["accuracy"] == 0.75


def test_one_class_split_gives_no_auc_instead_of_crashing():
    m = evaluate(np.array([1, 1]), np.array([[0.2, 0.8], [0.6, 0.4]]), ["a", "b"])
    assert m["roc_auc"] is None and m["pr_auc"] is None and m["accuracy"] == 0.5


def test_multiclass_macro_and_per_class():
    y = np.array([0, 1, 2, 2])
    proba = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.5, 0.1, 0.4]])
    m = evaluate(y, proba, ["NORMAL", "BACTERIA", "VIRUS"])
    assert m["accuracy"] == 0.75 and set(m["per_class"]) == {"NORMAL", "BACTERIA", "VIRUS"}
    assert m["per_class"]["VIRUS"]["recall"] == 0.5
    assert m["recall"] == pytest.approx((1 + 1 + 0.5) / 3)


@pytest.mark.parametrize("rule", ["youden", "f1", "sensitivity=0.95"])
def test_threshold_rules(rule):
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(200, int), np.ones(200, int)]
    score = np.r_[rng.normal(0.3, 0.15, 200), rng.normal(0.7, 0.15, 200)].clip(0, 1)
    t = choose_threshold(y, score, rule)
    assert 0 < t < 1
    if rule.startswith("sensitivity"):
        assert (score[y == 1] >= t).mean() >= 0.95
        assert (score[y == 1] >= t + 1e-3).mean() < 0.96  # and not needlessly low


def test_bad_threshold_rule():
    with pytest.raises(FeatxError, match="--threshold must be"):
        choose_threshold([0, 1], [0.1, 0.9], "median")


@pytest.mark.parametrize("threshold", [0.5, 0.3, None])
@pytest.mark.parametrize("ties", [False, True])
def test_the_binary_bootstrap_gives_the_intervals_of_one_resample_at_a_time(threshold, ties):
    """All resamples at once (counts, mid-ranks, step-wise average precision) = point_metrics on each."""
    from featx.evaluation.significance import BOOTSTRAP_METRICS, bootstrap_ci, point_metrics

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 120)
    score = rng.random(120) * 0.6 + 0.4 * y
    score = np.round(score, 1) if ties else score
    proba = np.column_stack([1 - score, score])
    fast = bootstrap_ci(y, proba, threshold, n_boot=200, seed=5)
    draws = np.random.default_rng(5)  # the same resamples, scored one by one
    by_class = [np.flatnonzero(y == c) for c in (0, 1)]
    samples = {m: [] for m in BOOTSTRAP_METRICS}
    for _ in range(200):
        rows = np.concatenate([draws.choice(r, size=len(r), replace=True) for r in by_class])
        for name, value in point_metrics(y[rows], proba[rows], threshold).items():
            samples[name].append(value)
    for m in BOOTSTRAP_METRICS:
        values = np.array([v for v in samples[m] if v is not None], float)
        assert fast[m] == pytest.approx((np.quantile(values, 0.025), np.quantile(values, 0.975)), abs=1e-12), m


def test_the_multiclass_bootstrap_gives_the_intervals_of_one_resample_at_a_time():
    """Three classes, all resamples at once (per-class counts, one-vs-rest ranks and average precision,
    macro means) = point_metrics (scikit-learn's macro one-vs-rest ROC-AUC and AP) on each resample."""
    from featx.evaluation.significance import BOOTSTRAP_METRICS, bootstrap_ci, point_metrics

    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 90)
    logits = np.round(rng.normal(0, 1, (90, 3)) + 1.5 * np.eye(3)[y])  # whole numbers: tied scores too
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    fast = bootstrap_ci(y, proba, None, n_boot=100, seed=2)
    draws = np.random.default_rng(2)
    by_class = [np.flatnonzero(y == c) for c in range(3)]
    samples = {m: [] for m in BOOTSTRAP_METRICS}
    for _ in range(100):
        rows = np.concatenate([draws.choice(r, size=len(r), replace=True) for r in by_class])
        for name, value in point_metrics(y[rows], proba[rows], None).items():
            samples[name].append(value)
    for m in BOOTSTRAP_METRICS:
        values = np.array(samples[m], float)
        assert fast[m] == pytest.approx((np.quantile(values, 0.025), np.quantile(values, 0.975)), abs=1e-12), m
