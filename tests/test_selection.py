"""Selection that never peeks: the rows that score a candidate never train it or stop its training."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import featx
from featx.cli import main
from featx import FeatxError
from featx.heads.out_of_core import CachedSplits
from featx.heads.out_of_core import select_head as select_streamed
from featx.heads.selection import best_index, select_head

from conftest import toy_features, write_store


def _split_data(n=400, seed=0):
    X, y = toy_features(n, d=6, signal=0.7, seed=seed)
    groups = np.arange(n) // 2
    train, val = np.arange(n) < 0.7 * n, np.arange(n) >= 0.7 * n
    return X[train], y[train], groups[train], X[val], y[val]


@pytest.mark.parametrize("head, grid", [("lightgbm", {"num_leaves": [7], "learning_rate": [0.1]}),
                                        ("mlp", {"alpha": [1e-2]})])
def test_scored_labels_do_not_change_what_is_trained(head, grid):
    """Flip every validation label: the fitted head (its tree count, its probabilities) is the same,
    because validation only scores it. Early stopping on validation would stop elsewhere."""
    X, y, groups, X_val, y_val = _split_data()
    a = select_head(head, X, y, groups, X_val, y_val, grid=grid)
    b = select_head(head, X, y, groups, X_val, 1 - y_val, grid=grid)
    assert a.params == b.params
    assert np.array_equal(a.estimator.predict_proba(X_val), b.estimator.predict_proba(X_val))
    assert a.scores[0][1] == pytest.approx(1 - b.scores[0][1])  # what was scored did change
    if head == "lightgbm":
        assert 1 < a.params["n_estimators"] < 1000  # early stopping happened, inside train


def test_out_of_core_lightgbm_early_stops_inside_train(tmp_path):
    X, y = toy_features(300, d=6, signal=0.7)
    split = np.array(["train"] * 200 + ["val"] * 100)
    scores = []
    for name, labels in (("a", y), ("b", np.where(split == "val", 1 - y, y))):
        data = CachedSplits(write_store(tmp_path / f"{name}.h5", X, labels, split), 64)
        selection = select_streamed("lightgbm", data)
        scores.append([s for _, s in selection.scores])
        assert 1 < selection.estimator.best_iteration_ < 1000
    # Each candidate scores exactly 1 - AUC on the flipped labels: the same models, trained and
    # stopped without validation. Stopping on validation would have grown other trees.
    assert scores[1] == pytest.approx([1 - s for s in scores[0]], abs=1e-12)


def test_a_one_class_validation_split_falls_back_to_group_cv_and_says_so(tmp_path):
    X, y = toy_features(160, d=6)
    split = np.array(["train"] * 120 + ["val"] * 40)
    y[120:] = 1  # validation holds PNEUMONIA only
    path = write_store(tmp_path / "one.h5", X, y, split).path
    result = CliRunner().invoke(main, ["fit", "--features", str(path), "--head", "logreg",
                                       "--models", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert "the val split has no NORMAL images" in result.output
    assert "by 5-fold stratified group CV on train, as val has no NORMAL images" in result.output
    with pytest.raises(FeatxError, match="validation split has no images of class 0"):
        select_head("logreg", X[:120], y[:120], None, X[120:], y[120:])


def test_nothing_is_chosen_when_no_candidate_could_be_scored():
    with pytest.raises(FeatxError, match="no candidate could be scored"):
        best_index([float("nan")] * 3)
    assert best_index([float("nan"), 0.7, 0.9, 0.9]) == 2


def test_val_fraction_takes_patients_of_every_size_not_the_largest_first(tmp_path):
    """Patients with 1 to 8 images: validation must be a fair sample of them, or `featx shift` sees the cut."""
    from conftest import save, xray_like

    root = tmp_path / "sizes"
    sizes = np.random.default_rng(3).integers(1, 9, 120)
    for patient, size in enumerate(sizes):
        for k in range(size):
            cls = "PNEUMONIA" if patient % 3 else "NORMAL"
            save(root / cls / f"person{patient}_{cls}_{k}.png", xray_like(10 * patient + k, size=(8, 8)))
    ds = featx.load_dataset(root, val_fraction=0.25, cache_dir=tmp_path / "c")
    per_patient = {split: [] for split in ("train", "val")}
    for group in set(ds.groups):
        split = ds.splits[ds.groups.index(group)]
        per_patient[split].append(ds.groups.count(group))
    mean = {split: np.mean(v) for split, v in per_patient.items()}
    assert abs(mean["val"] - mean["train"]) < 1.0, mean  # largest first gave val 7.7 images per patient, train 3.9
    assert abs(sum(s == "val" for s in ds.splits) / len(ds.splits) - 0.25) < 0.01


def test_val_fraction_gives_the_share_asked_for(tmp_path):
    """600 images, two per patient: every fraction is met to within one patient."""
    from conftest import save, xray_like

    root = tmp_path / "many"
    for i in range(600):
        cls = "PNEUMONIA" if i % 4 else "NORMAL"
        save(root / cls / f"person{i // 2}_{cls}_{i}.png", xray_like(i, size=(8, 8)))
    for fraction in (0.1, 0.3, 0.45):
        ds = featx.load_dataset(root, val_fraction=fraction, cache_dir=tmp_path / f"c{fraction}")
        counts = ds.counts()
        n_val = sum(counts["val"].values())
        assert abs(n_val - fraction * 600) <= 2, (fraction, n_val)
        for c in ("NORMAL", "PNEUMONIA"):  # stratified: each class near the same share
            share = counts["val"][c] / (counts["val"][c] + counts["train"][c])
            assert abs(share - fraction) < 0.02, (fraction, c, share)
        assert f"{n_val} of 600 train images" in ds.split_note and f"asked {fraction:.1%}" in ds.split_note
        val_groups = {g for g, s in zip(ds.groups, ds.splits) if s == "val"}
        assert not val_groups & {g for g, s in zip(ds.groups, ds.splits) if s == "train"}


@pytest.mark.slow
def test_lightgbm_splits_on_a_small_budget():
    """On 24 images LightGBM's 20 rows per leaf allow no split: every tree was a constant and ROC-AUC 0.5
    (featx study showed it at n = 25 and 50). Its leaves now hold what the rows allow, and it says so."""
    from featx.studies.label_curves import head_learning_curve

    from conftest import toy_features, write_store

    X, y = toy_features(n=240, signal=2.0)
    store = write_store(Path(tempfile.mkdtemp()) / "c.h5", X, y, np.array(["train"] * 160 + ["test"] * 80))
    [small] = head_learning_curve(store, "lightgbm", [24], repeats=1, n_boot=50)
    assert small["roc_auc"] > 0.8 and small["params"]["min_child_samples"] < 20
    [full] = head_learning_curve(store, "lightgbm", ["all"], repeats=1, n_boot=50)
    assert "min_child_samples" not in full["params"]  # LightGBM's own default wherever it can split
