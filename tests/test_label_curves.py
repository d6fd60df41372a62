"""A head's learning curve over label budgets (featx.studies.label_curves): the evaluation split never
enters a choice, n = all is the head fit would choose, and the budgets are those of featx.data.budgets."""

from __future__ import annotations

import numpy as np
import pytest

from featx import FeatxError
from featx.data.budgets import label_budgets
from featx.heads.selection import select_head
from featx.studies.label_curves import COLUMNS, head_learning_curve

from conftest import toy_features, write_store


def _store(path, y_eval=None):
    X, y = toy_features(n=240, signal=1.2)
    split = np.array(["train"] * 160 + ["test"] * 80)
    if y_eval is not None:
        y = np.concatenate([y[:160], y_eval])
    return write_store(path, X, y, split)


def test_every_size_and_repeat_is_a_row_of_the_head_chosen_inside_its_budget(tmp_path):
    store = _store(tmp_path / "c.h5")
    rows = head_learning_curve(store, "logreg", [40, 80, "all"], repeats=2, n_boot=50)
    assert [(r["n"], r["repeat"]) for r in rows] == [(40, 0), (80, 0), ("all", 0), (40, 1), (80, 1), ("all", 1)]
    assert all(set(r) == {*COLUMNS, "proba"} and r["proba"].shape == (80, 2) for r in rows)
    assert all(r["n_images"] <= (160 if r["n"] == "all" else r["n"]) for r in rows)
    assert all(r["roc_auc_low"] <= r["roc_auc"] <= r["roc_auc_high"] for r in rows)

    X, y = store.arrays("train")
    groups = np.asarray(store.groups("train"))
    [small] = [b for b in label_budgets(y, groups, [40], repeats=1)]
    by_hand = select_head("logreg", X[small.rows], y[small.rows], groups[small.rows])
    assert rows[0]["params"] == by_hand.params  # chosen by patient-grouped CV inside the 40 images alone
    full = select_head("logreg", X, y, groups)
    assert rows[2]["params"] == full.params and rows[2]["n_images"] == 160  # n = all: fit's own choice


def test_shuffled_evaluation_labels_change_no_choice(tmp_path):
    kw = dict(repeats=2, n_boot=50)
    honest = head_learning_curve(_store(tmp_path / "a.h5"), "logreg", [40, "all"], **kw)
    shuffled_labels = np.random.default_rng(5).permutation(toy_features(n=240, signal=1.2)[1][160:])
    shuffled = head_learning_curve(_store(tmp_path / "b.h5", shuffled_labels), "logreg", [40, "all"], **kw)
    assert [(r["params"], r["threshold"]) for r in honest] == [(r["params"], r["threshold"]) for r in shuffled]
    assert [r["roc_auc"] for r in honest] != [r["roc_auc"] for r in shuffled]


def test_a_budget_too_small_for_patient_cv_is_one_line(tmp_path):
    with pytest.raises(FeatxError, match="at least 2 of each class"):
        head_learning_curve(_store(tmp_path / "c.h5"), "logreg", [2], repeats=1)
    with pytest.raises(FeatxError, match="larger than the pool of 160"):
        head_learning_curve(_store(tmp_path / "d.h5"), "logreg", [500], repeats=1)
