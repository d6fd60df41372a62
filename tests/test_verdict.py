"""The study's verdict: the leader at each size, its DeLong test on the same evaluation images (over the
repeats' mean, Holm over the methods behind it), and the labels each method needs."""

from __future__ import annotations

import re

import numpy as np
import pytest

from featx.evaluation.significance import delong_test, holm
from featx.studies.verdict import _paired_p, verdict


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


def test_one_repeat_is_delongs_test_and_more_are_its_mean():
    y = np.random.default_rng(0).integers(0, 2, 300)
    a, b = scores(y, 1.5, 1), scores(y, 0.8, 2)
    assert _paired_p([unit("A", 50, 0, y, a)], [unit("B", 50, 0, y, b)]) == pytest.approx(
        delong_test(y, a, b)["p_value"])
    same = [unit("A", 50, r, y, a) for r in range(3)]  # three identical repeats: the same test
    assert _paired_p(same, [unit("B", 50, 0, y, b)]) == pytest.approx(delong_test(y, a, b)["p_value"])
    assert _paired_p([unit("A", 50, 0, y, a)], [unit("B", 50, 0, y, b, images="other")]) is None


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
