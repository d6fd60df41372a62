"""The study's verdict: the leader at each size, its test on the repeats' mean (which images were evaluated:
DeLong, or a paired bootstrap for more classes; plus which were drawn: the repeats' spread; Holm over the
methods behind it), and the labels each method needs."""

from __future__ import annotations

import re

import numpy as np
import pytest

from featx.evaluation.significance import delong_test, holm
from featx.studies.pairing import contrast
from featx.studies.verdict import verdict


def _paired_p(a, b):
    return contrast(a, b, whole_pool=a[0]["n"] == "all").p


def unit(method, n, repeat, y, score, images="same"):
    proba = np.column_stack([1 - score, score])
    auc = delong_test(y, score, score)["auc_a"]
    return {"method": method, "n": n, "n_images": n if n != "all" else 400, "repeat": repeat, "roc_auc": auc,
            "eval_images": images, "y": y.tolist(), "proba": proba.tolist()}


def scores(y, signal, seed, other=None):
    """A method's scores; with `other`, an equally good method whose noise is correlated with the first's."""
    noise = np.random.default_rng(seed).standard_normal(len(y))
    if other is not None:
        noise = 0.8 * noise + 0.6 * np.random.default_rng(other).standard_normal(len(y))
    return 1 / (1 + np.exp(-(signal * (2 * y - 1) + noise)))


def test_one_draw_is_delongs_test_and_identical_repeats_are_its_mean():
    y = np.random.default_rng(0).integers(0, 2, 300)
    a, b = scores(y, 1.5, 1), scores(y, 0.8, 2)
    assert _paired_p([unit("A", "all", 0, y, a)], [unit("B", "all", 0, y, b)]) == pytest.approx(
        delong_test(y, a, b)["p_value"])
    same_a = [unit("A", 50, r, y, a) for r in range(3)]  # identical repeats: no spread over draws, DeLong's test
    same_b = [unit("B", 50, r, y, b) for r in range(3)]
    assert _paired_p(same_a, same_b) == pytest.approx(delong_test(y, a, b)["p_value"])
    other = contrast([unit("A", 50, 0, y, a)], [unit("B", 50, 0, y, b, images="other")])
    assert other.p is None and "other images" in other.why
    single = contrast([unit("A", 50, 0, y, a)], [unit("B", 50, 0, y, b)])  # one draw: its spread is unknown
    assert single.p is None and "one draw" in single.why


def test_two_draws_of_one_method_are_not_called_different():
    """The same method on two seeds' draws: the draws move ROC-AUC far more than the evaluated images do.
    DeLong alone calls them apart nearly always (the old verdict); with the repeats' spread, about as often
    as a 5% test should."""
    y = np.random.default_rng(0).integers(0, 2, 1000)
    called, images_only = 0, 0
    for trial in range(40):
        records = []
        for name, seed in (("seed 0", 1000 * trial), ("seed 1", 1000 * trial + 500)):
            for r in range(3):
                signal = 1.0 + 0.5 * np.random.default_rng(seed + r).standard_normal()  # what this draw learned
                records.append(unit(name, 25, r, y, scores(y, signal, 7)))  # the same evaluation noise
        a, b = records[:3], records[3:]
        images_only += contrast(a, b, whole_pool=True).p < 0.05
        called += contrast(a, b).p < 0.05
        if trial == 0:
            assert "not significant" in verdict(records)[0]
    assert images_only >= 30 and called <= 5


def test_more_than_two_classes_are_tested_on_the_same_images():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)

    def three(signal, seed):
        logits = signal * np.eye(3)[y] + np.random.default_rng(seed).standard_normal((len(y), 3))
        e = np.exp(logits)
        return e / e.sum(1, keepdims=True)

    records = []
    for r in range(3):
        for method, signal in (("good", 2.0), ("poor", 0.3)):
            proba = three(signal, 10 * r + len(method))
            from sklearn.metrics import roc_auc_score
            records.append({"method": method, "n": 50, "n_images": 50, "repeat": r, "eval_images": "same",
                            "roc_auc": roc_auc_score(y, proba, multi_class="ovr"), "y": y.tolist(),
                            "proba": proba.tolist()})
    line = verdict(records)[0]
    assert "good leads" in line and "not tested" not in line and "p<0.001" in line


def test_labels_needed_says_when_a_curve_is_not_monotone():
    y = np.random.default_rng(0).integers(0, 2, 300)
    records = [unit("logreg", n, r, y, scores(y, signal, r + 1)) for n, signal in ((25, 0.5), (50, 2.5), ("all", 0.8))
               for r in range(2)]
    needed = next(line for line in verdict(records) if line.startswith("Labels needed"))
    assert "not monotone" in needed and "peaks at n=50" in needed and "logreg: 50 (" not in needed


def test_the_verdict_names_the_leader_its_p_values_and_the_labels_needed():
    y = np.random.default_rng(0).integers(0, 2, 300)
    records = []
    for n, signal in ((25, 0.6), (100, 1.4), ("all", 1.5)):
        for r in range(2):
            records.append(unit("logreg", n, r, y, scores(y, signal, 10 * r + 1)))
            records.append(unit("knn", n, r, y, scores(y, signal * 0.5, 10 * r + 2)))
            records.append(unit("twin", n, r, y, scores(y, signal, 10 * r + 1, other=10 * r + 3)))  # as good
    lines = verdict(records)
    assert lines[0].startswith("n=25 (25 images): logreg leads")
    at_100 = lines[1]
    raw = [_paired_p([x for x in records if x["n"] == 100 and x["method"] == "logreg"],
                     [x for x in records if x["n"] == 100 and x["method"] == m]) for m in ("twin", "knn")]
    shown = [float(p) if p[0].isdigit() else 0.0 for p in re.findall(r"p[=<]([0-9.]+)", at_100)]
    assert shown == pytest.approx(holm(raw), abs=1e-3)  # Holm over the two behind the leader
    assert "knn by" in at_100 and "p<0.001" in at_100 and "not significant" in at_100  # the twin is not apart
    needed = next(line for line in lines if line.startswith("Labels needed"))
    assert "logreg: 100" in needed and "at n=all" in needed
