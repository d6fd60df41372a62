"""featx fit --out-of-core: heads trained block by block from the cache equal the in-memory heads."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from click.testing import CliRunner

import featx
from featx.cli import main
from featx.features.store import FeatureStore

from conftest import one_line_error, three_way, toy_features, write_store

BLOCK = 16  # rows per read: many blocks even on toy data


@contextlib.contextmanager
def never_load_whole(monkeypatch):
    """Inside, loading a split's features whole (FeatureStore.arrays) fails the test."""
    with monkeypatch.context() as m:
        m.setattr(FeatureStore, "arrays", lambda *a, **k: pytest.fail("features loaded whole"))
        yield


def _fit(store, models, head, **kw):
    return featx.fit(store, head=head, models_dir=models, log=lambda m: None, **kw)[0]


def _held_out(result, split):
    return np.load(result.artifact.with_suffix(".predictions.npz"))[f"{split}__proba"]


@pytest.mark.parametrize("layout", ["val split", "group CV", "three classes"])
def test_streamed_logreg_equals_in_memory_logreg(tmp_path, monkeypatch, layout):
    classes = ("NORMAL", "BACTERIA", "VIRUS") if layout == "three classes" else ("NORMAL", "PNEUMONIA")
    X, y = toy_features(180, d=12, classes=len(classes), signal=1.0)
    split = three_way(180)
    if layout == "group CV":
        split = np.where(split == "val", "train", split)
    store = write_store(tmp_path / "toy.h5", X, y, split, classes=classes)
    memory = _fit(store, tmp_path / "models", "logreg", threshold=0.5)
    with never_load_whole(monkeypatch):
        streamed = _fit(store, tmp_path / "models", "logreg", threshold=0.5, out_of_core=True, block_rows=BLOCK)
    assert streamed.artifact != memory.artifact
    assert streamed.params == {**memory.params, "solver": "lbfgs"}
    assert [s for _, s in streamed.scores] == pytest.approx([s for _, s in memory.scores], abs=1e-4)
    for split_name in ("train", "test"):
        assert np.allclose(_held_out(streamed, split_name), _held_out(memory, split_name), atol=1e-3)
    assert streamed.metrics["test"]["roc_auc"] == pytest.approx(memory.metrics["test"]["roc_auc"], abs=1e-3)
    # The artifact is an ordinary scikit-learn pipeline that predicts on feature rows.
    model = featx.load(streamed.artifact)
    assert np.allclose(model.predict_proba(X[:5]), featx.load(memory.artifact).predict_proba(X[:5]), atol=1e-3)


def test_sgd_logreg_is_near_the_in_memory_logreg(tmp_path, monkeypatch):
    X, y = toy_features(300, d=12, signal=1.0)
    store = write_store(tmp_path / "toy.h5", X, y, three_way(300))
    with never_load_whole(monkeypatch):
        streamed = _fit(store, tmp_path / "m", "logreg", out_of_core=True, solver="sgd", block_rows=BLOCK)
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    split = three_way(300)
    train, test = split == "train", split == "test"
    # The in-memory head with the chosen C, fitted here from the arrays.
    exact = make_pipeline(StandardScaler(), LogisticRegression(C=streamed.params["C"], class_weight="balanced"))
    p_exact = exact.fit(X[train], y[train]).predict_proba(X[test])[:, 1]
    p_sgd = _held_out(streamed, "test")[:, 1]
    assert streamed.params["solver"] == "sgd"
    assert np.corrcoef(p_exact, p_sgd)[0, 1] > 0.98
    assert abs(roc_auc_score(y[test], p_sgd) - roc_auc_score(y[test], p_exact)) < 0.02


@pytest.mark.parametrize("with_val", [True, False])
def test_lightgbm_through_a_sequence_equals_in_memory_lightgbm(tmp_path, monkeypatch, with_val):
    X, y = toy_features(240, d=6, signal=1.0)
    split = three_way(240) if with_val else np.where(three_way(240) == "val", "train", three_way(240))
    store = write_store(tmp_path / "toy.h5", X, y, split)
    memory = _fit(store, tmp_path / "models", "lightgbm")
    with never_load_whole(monkeypatch):
        streamed = _fit(store, tmp_path / "models", "lightgbm", out_of_core=True, block_rows=BLOCK)
    assert streamed.params == memory.params  # including the tree count early stopping chose
    assert streamed.metrics["test"]["roc_auc"] == pytest.approx(memory.metrics["test"]["roc_auc"], abs=0.02)
    if with_val:  # the same bins, rows, weights and early stopping: the same trees
        assert np.allclose(_held_out(streamed, "test"), _held_out(memory, "test"), atol=1e-6)
    assert featx.load(streamed.artifact).predict_proba(X[:3]).shape == (3, 2)


def test_out_of_core_refusals_are_one_line(tmp_path):
    X, y = toy_features(60)
    path = write_store(tmp_path / "toy.h5", X, y, ["train"] * 40 + ["val"] * 20).path
    run = CliRunner().invoke
    assert "needs the features in memory" in one_line_error(run(main, ["fit", "--features", str(path),
                                                                        "--head", "knn", "--out-of-core"]))
    assert "--pca" in one_line_error(run(main, ["fit", "--features", str(path), "--out-of-core", "--pca", "2"]))
    assert "--solver" in one_line_error(run(main, ["fit", "--features", str(path), "--solver", "sgd"]))
    X[3, 2] = np.nan
    bad = write_store(tmp_path / "nan.h5", X, y, ["train"] * 40 + ["val"] * 20).path
    assert "NaN" in one_line_error(run(main, ["fit", "--features", str(bad), "--out-of-core"]))


def test_out_of_core_from_the_cli(tmp_path):
    X, y = toy_features(90)
    path = write_store(tmp_path / "toy.h5", X, y, three_way(90)).path
    result = CliRunner().invoke(main, ["fit", "--features", str(path), "--head", "logreg", "--out-of-core",
                                       "--models", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert "out of core" in result.output and "solver=lbfgs" in result.output
