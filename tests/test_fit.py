"""featx fit, artifacts and predict: honest selection, thresholds, round trips and every refusal."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

import featx
from featx.cli import main
from featx.heads.specs import HEAD_NAMES
from featx.evaluation.thresholds import choose_threshold

from conftest import TINY, final_error, make_folder, one_line_error, three_way, toy_features, write_store


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def store(tmp_path):
    X, y = toy_features(150)
    return write_store(tmp_path / "toy.h5", X, y, three_way())


def test_logreg_fits_saves_and_reports_every_split(store, tmp_path):
    [result] = featx.fit(store.path, head="logreg", models_dir=tmp_path / "models")
    assert set(result.metrics) == {"train", "val", "test"}
    assert result.metrics["val"]["roc_auc"] > 0.8 and result.selection == "validation split"
    assert result.params["C"] in [float(c) for c in np.logspace(-4, 2, 7)]
    side = json.loads(result.artifact.with_suffix(".json").read_text())
    assert side["metrics"]["test"]["n"] == 50 and side["threshold"] == 0.5
    assert side["features"]["config_hash"] == "toy0000000" and len(side["sha256"]) == 64
    assert len(side["selection"]["candidates"]) == 7


def test_selection_never_looks_at_test(tmp_path):
    """Shuffling the test labels changes nothing that was chosen: hyperparameters, threshold, val metrics."""
    X, y = toy_features(150, signal=0.8)
    split = three_way()
    shuffled = y.copy()
    test = split == "test"
    shuffled[test] = np.random.default_rng(1).permutation(y[test])[::-1]
    for with_val in (True, False):
        s = split if with_val else np.where(split == "val", "train", split)
        a = featx.fit(write_store(tmp_path / f"a{with_val}.h5", X, y, s), head="logreg", threshold="youden",
                      models_dir=tmp_path / "ma")[0]
        b = featx.fit(write_store(tmp_path / f"b{with_val}.h5", X, shuffled, s), head="logreg", threshold="youden",
                      models_dir=tmp_path / "mb")[0]
        assert a.params == b.params and a.threshold == b.threshold and a.scores == b.scores
        assert a.metrics["train"] == b.metrics["train"]
        assert a.metrics["test"]["accuracy"] != b.metrics["test"]["accuracy"]
        assert ("fold" in a.selection) is not with_val


def test_threshold_is_chosen_on_validation_and_used_by_predict(store, tmp_path):
    [result] = featx.fit(store.path, head="logreg", threshold="sensitivity=0.9", models_dir=tmp_path)
    model = featx.load(result.artifact)
    X_val, y_val = store.arrays("val")
    proba = model.predict_proba(X_val)
    assert result.threshold == pytest.approx(choose_threshold(y_val, proba[:, 1], "sensitivity=0.9"))
    assert result.metrics["val"]["sensitivity"] >= 0.9
    expected = np.where(proba[:, 1] >= result.threshold, "PNEUMONIA", "NORMAL")
    assert list(model.predict(X_val)) == list(expected)
    assert result.threshold != 0.5


def test_artifact_round_trip_gives_the_same_probabilities(store, tmp_path):
    [result] = featx.fit(store.path, head="knn", seed=3, models_dir=tmp_path)
    model = featx.load(result.artifact)
    X, y = store.arrays("test")
    from featx.evaluation.metrics import evaluate

    assert evaluate(y, model.predict_proba(store, split="test"), store.classes) == \
        {k: v for k, v in result.metrics["test"].items() if k != "ci"}  # the same metrics, and their intervals
    # The same probabilities by hand: scale with the fitted statistics, then distance-weighted votes.
    from sklearn.neighbors import NearestNeighbors

    scaler, knn = model.head.named_steps["scale"], model.head.named_steps["clf"]
    X_train, y_train = store.arrays("train")
    Z = (X - X_train.mean(0)) / X_train.std(0)
    dist, idx = NearestNeighbors(n_neighbors=knn.n_neighbors).fit((X_train - X_train.mean(0)) / X_train.std(0)).kneighbors(Z)
    votes = np.stack([((y_train[idx] == c) / dist).sum(1) for c in (0, 1)], 1)
    assert np.allclose(scaler.mean_, X_train.mean(0), atol=1e-5)
    assert np.allclose(model.predict_proba(X), votes / votes.sum(1, keepdims=True), atol=1e-5)
    assert type(model.head).__name__ == "Pipeline"  # a plain scikit-learn object, usable without featx


def test_all_heads_train_and_separate_the_classes(store, tmp_path):
    results = featx.fit(store.path, head="all", models_dir=tmp_path)
    assert [r.head for r in results] == list(HEAD_NAMES)
    for r in results:
        assert r.metrics["val"]["roc_auc"] > 0.75, (r.head, r.metrics["val"])
        assert featx.load(r.artifact).predict_proba(store.arrays("test")[0]).shape == (50, 2)


def test_without_validation_uses_group_folds_and_refits_lightgbm(tmp_path):
    X, y = toy_features(150)
    s = write_store(tmp_path / "cv.h5", X, y, np.where(three_way() == "val", "train", three_way()))
    [result] = featx.fit(s.path, head="lightgbm", models_dir=tmp_path)
    assert result.selection.endswith("stratified group CV on train") and "val" not in result.metrics
    head = featx.load(result.artifact).head[-1]
    assert head.n_estimators < 1000  # the early-stopped size from the folds, not the upper bound
    assert result.metrics["test"]["roc_auc"] > 0.8


def test_multiclass_reports_macro_and_per_class(tmp_path):
    X, y = toy_features(180, classes=3, signal=2.5)
    s = write_store(tmp_path / "three.h5", X, y, three_way(180), classes=("NORMAL", "BACTERIA", "VIRUS"))
    [result] = featx.fit(s.path, head="logreg", models_dir=tmp_path)
    val = result.metrics["val"]
    assert set(val["per_class"]) == {"NORMAL", "BACTERIA", "VIRUS"} and val["roc_auc"] > 0.8
    assert result.threshold is None
    assert featx.load(result.artifact).predict(X[:4]).tolist() == [
        ["NORMAL", "BACTERIA", "VIRUS"][i] for i in featx.load(result.artifact).predict_proba(X[:4]).argmax(1)]
    with pytest.raises(featx.FeatxError, match="applies to two classes"):
        featx.fit(s.path, head="logreg", threshold="youden", models_dir=tmp_path)


def test_pca_option_adds_a_pca_step(store, tmp_path):
    [result] = featx.fit(store.path, head="logreg", pca=3, models_dir=tmp_path)
    head = featx.load(result.artifact).head
    assert head.named_steps["pca"].n_components_ == 3


# --- refusals: one line, non-zero exit ---------------------------------------------------------

def test_nan_features_are_refused_with_the_count(tmp_path):
    X, y = toy_features(60)
    X[[3, 9], 2] = np.nan
    X[5, 0] = np.inf
    s = write_store(tmp_path / "nan.h5", X, y, three_way(60))
    line = one_line_error(run("fit", "--features", s.path, "--models", tmp_path))
    split = three_way(60)
    assert split[[3, 5, 9]].tolist().count("train") == 2  # the fixture this count relies on
    assert "2 train feature rows contain NaN or inf (2 values)" in line


def test_single_class_and_missing_train_are_refused(tmp_path):
    X, y = toy_features(60)
    one = write_store(tmp_path / "one.h5", X, np.zeros(60, int), three_way(60))
    assert "only one class" in one_line_error(run("fit", "--features", one.path))
    notrain = write_store(tmp_path / "notrain.h5", X, y, np.array(["val", "test"] * 30))
    assert "no train images" in one_line_error(run("fit", "--features", notrain.path))


def test_unknown_head_lists_the_valid_ones(store):
    line = one_line_error(run("fit", "--features", store.path, "--head", "xgboost"))
    assert all(name in line for name in HEAD_NAMES)


@pytest.mark.parametrize("bad", ["0", "1.5", "median", "sensitivity=2"])
def test_bad_threshold_is_refused(store, bad):
    assert "--threshold" in one_line_error(run("fit", "--features", store.path, "--threshold", bad))


def test_tampered_or_incomplete_artifact_is_refused(store, tmp_path):
    [result] = featx.fit(store.path, head="logreg", models_dir=tmp_path / "m")
    path = result.artifact
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered = tmp_path / "tampered.skops"
    tampered.write_bytes(bytes(data))
    shutil.copy(path.with_suffix(".json"), tampered.with_suffix(".json"))
    assert "sha256" in one_line_error(run("predict", "--model", tampered, tmp_path))
    orphan = tmp_path / "orphan.skops"
    shutil.copy(path, orphan)  # as if killed before the sidecar was written
    assert "no sidecar" in one_line_error(run("predict", "--model", orphan, tmp_path))


def test_features_from_another_backbone_are_refused(store, tmp_path):
    [result] = featx.fit(store.path, head="logreg", models_dir=tmp_path)
    X, y = store.arrays()
    other = write_store(tmp_path / "other.h5", X, y, three_way(), config={"backbone": "resnet50",
                                                                           "weights_sha256": "1" * 64})
    with pytest.raises(featx.FeatxError, match="made differently"):
        featx.load(result.artifact).predict_proba(other)
    with pytest.raises(featx.FeatxError, match="columns"):
        featx.load(result.artifact).predict_proba(X[:, :5])


# --- end to end from images -----------------------------------------------------------------------

def test_fit_from_backbone_and_data_then_predict_images(tmp_path):
    data = make_folder(tmp_path / "data", per_class=8)
    extract = run("extract", "--data", data, "--backbone", TINY, "--weights", "random", "--workers", "0",
                  "--no-progress", "--val-fraction", "0.25")
    assert extract.exit_code == 0, extract.output
    fitted = run("fit", "--backbone", TINY, "--data", data, "--weights", "random", "--head", "logreg",
                 "--threshold", "youden")
    assert fitted.exit_code == 0, fitted.output
    artifact = fitted.stdout.strip().splitlines()[-1]
    assert "logreg" in fitted.stdout and "val" in fitted.stdout and artifact.endswith(".skops")

    (data / "PNEUMONIA" / "broken.jpeg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "preds.csv"
    predicted = run("predict", "--model", artifact, "--output", out, data / "NORMAL", data / "PNEUMONIA")
    assert predicted.exit_code == 0, predicted.output
    assert "broken.jpeg  unreadable" in predicted.stdout and "1 of 17 images could not be read" in predicted.output
    lines = out.read_text().splitlines()
    assert lines[0] == "path,p_NORMAL,p_PNEUMONIA,predicted,error" and len(lines) == 18

    # The same probabilities as the head on the cached features of those images.
    model = featx.load(artifact)
    store = featx.FeatureStore(model.sidecar.features_file(artifact))
    X, _ = store.arrays()
    rows = featx.predict(model, [str(data / p) for p in store.paths()])
    assert np.allclose([[r["p_NORMAL"], r["p_PNEUMONIA"]] for r in rows], model.predict_proba(X), atol=1e-4)


def test_fit_extracts_first_when_nothing_is_cached(tmp_path):
    data = make_folder(tmp_path / "data", per_class=8)
    [result] = featx.fit(data=data, backbone=TINY, weights="random", head="logreg")
    assert result.selection.endswith("CV on train") and result.metrics["train"]["n"] == 16


def test_fit_finds_the_cache_of_the_same_weights_by_their_hash(tmp_path, monkeypatch):
    """--weights imagenet (here: a weights folder) never takes a cache made from another file, and
    the same bytes under another name find the same cache."""
    import torch

    data = make_folder(tmp_path / "data", per_class=6)
    state = featx.create_backbone(TINY, "random").model.state_dict()
    folder, other = tmp_path / "weights", tmp_path / "other.pth"
    folder.mkdir()
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, folder / "test_efficientnet.pth")
    torch.save(state, other)
    monkeypatch.setenv("FEATX_WEIGHTS_DIR", str(folder))
    from_other = featx.extract(data, TINY, weights=str(other), workers=0, progress=False, log=lambda m: None)
    [fitted] = featx.fit(data=data, backbone=TINY, weights="imagenet", head="logreg", log=lambda m: None)
    imagenet_cache = featx.load(fitted.artifact).sidecar.features_file(fitted.artifact).resolve()
    assert imagenet_cache != from_other.path.resolve()  # extracted anew, from the folder's weights
    assert featx.FeatureStore(imagenet_cache).config["weights_source"] == str((folder / "test_efficientnet.pth"))
    copy = tmp_path / "copy.pth"
    copy.write_bytes(other.read_bytes())
    [again] = featx.fit(data=data, backbone=TINY, weights=str(copy), head="logreg", log=lambda m: None)
    assert featx.load(again.artifact).sidecar.features_file(again.artifact).resolve() == from_other.path.resolve()


def test_predict_refuses_weights_that_differ(tmp_path):
    data = make_folder(tmp_path / "data", per_class=6)
    [result] = featx.fit(data=data, backbone=TINY, weights="random", head="logreg")
    import torch

    other = tmp_path / "other.pth"
    bb = featx.create_backbone(TINY, "random")
    torch.save({k: v + 1 for k, v in bb.model.state_dict().items()}, other)
    line = one_line_error(run("predict", "--model", result.artifact, "--weights", other, data))
    assert "differ from those this model was trained with" in line


def test_predict_missing_image_is_one_line(store, tmp_path):
    [result] = featx.fit(store.path, head="logreg", models_dir=tmp_path)
    assert "not found" in one_line_error(run("predict", "--model", result.artifact, tmp_path / "nope.png"))


@pytest.mark.parametrize("head", ["rf", "lightgbm", "mlp"])
def test_same_seed_same_model(store, tmp_path, head):
    a = featx.fit(store, head=head, seed=5, models_dir=tmp_path / "a")[0]
    b = featx.fit(store, head=head, seed=5, models_dir=tmp_path / "b")[0]
    X, _ = store.arrays("test")
    assert a.params == b.params
    # equal up to the order of parallel sums (random forest averages trees across threads)
    assert np.allclose(featx.load(a.artifact).predict_proba(X), featx.load(b.artifact).predict_proba(X), rtol=0,
                       atol=1e-9)


def test_linsvm_probabilities_are_platt_scaled(store, tmp_path):
    """LinearSVC has margins, not probabilities: the saved head maps them through a fitted sigmoid."""
    from scipy.special import expit

    [result] = featx.fit(store.path, head="linsvm", models_dir=tmp_path)
    head = featx.load(result.artifact).head
    calibrated = head[-1]
    assert type(calibrated).__name__ == "CalibratedClassifierCV" and calibrated.cv == 3
    [fold] = calibrated.calibrated_classifiers_  # ensemble=False: one SVM on all rows, Platt-fitted by 3-fold CV
    assert fold.estimator.C == result.params["C"]
    X = store.arrays("test")[0]
    margin = fold.estimator.decision_function(head[:-1].transform(X))
    sigmoid = fold.calibrators[0]
    assert np.allclose(head.predict_proba(X)[:, 1], expit(-(sigmoid.a_ * margin + sigmoid.b_)))
    assert sigmoid.a_ < 0  # a larger margin means a higher probability of the positive class


@pytest.mark.slow
def test_a_head_that_cannot_train_on_so_few_images_is_one_line_and_all_goes_on(tmp_path):
    X, y = toy_features(n=12)
    path = write_store(tmp_path / "few.h5", X, y, ["train"] * 12).path
    runner = CliRunner()
    alone = runner.invoke(main, ["fit", "--features", str(path), "--head", "mlp", "--models", str(tmp_path / "m")])
    assert "mlp cannot be trained on 12 train images" in final_error(alone)
    every = runner.invoke(main, ["fit", "--features", str(path), "--head", "all", "--models", str(tmp_path / "m")])
    assert every.exit_code == 0, every.output
    assert "skipped mlp cannot be trained" in every.output
    assert len(list((tmp_path / "m").glob("*.skops"))) == len(HEAD_NAMES) - 1
