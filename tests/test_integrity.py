"""A model answers only as it was made (issue 23, items 2, 3, 11): an edited sidecar is refused, the
threshold applied is said, weights swapped after `featx.load` are never used, the API's errors are featx's."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import featx
from featx.cli import main

from conftest import TINY, make_folder, one_line_error, three_way, toy_features, write_store

QUIET = dict(weights="random", workers=0, progress=False, log=lambda m: None)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def head(tmp_path):
    """A logreg head on the tiny backbone's features of generated images (and a kNN beside it), and the images."""
    data = make_folder(tmp_path / "data", per_class=6)
    store = featx.extract(data, TINY, val_fraction=0.34, **QUIET)
    [result] = featx.fit(store, head="logreg", threshold="youden", log=lambda m: None)
    featx.fit(store, head="knn", log=lambda m: None)
    return result.artifact, data


def _edit(artifact, change) -> None:
    side = artifact.with_suffix(".json")
    info = json.loads(side.read_text())
    change(info)
    side.write_text(json.dumps(info, indent=2))


@pytest.mark.parametrize("edit", [
    lambda info: info.update(classes=info["classes"][::-1]),
    lambda info: info.update(threshold=0.01),
    lambda info: info["features"]["config"]["data_config"].update(mean=[0.0, 0.0, 0.0]),
    lambda info: info["features"]["config"].update(weights_sha256="0" * 64),
], ids=["classes reversed", "threshold", "preprocessing", "weights fingerprint"])
def test_an_edited_sidecar_is_refused_by_load_predict_and_compare(head, edit):
    artifact, data = head
    _edit(artifact, edit)
    with pytest.raises(featx.FeatxError, match="edited or damaged since featx wrote it"):
        featx.load(artifact)
    assert "edited or damaged" in one_line_error(run("predict", "--model", artifact, data / "NORMAL"))
    ranked, apart = featx.compare(split="val")
    assert ranked["method"].endswith("knn") and not apart["ranked"] and "edited or damaged" in apart["note"]


def test_predict_says_the_threshold_it_applies(head):
    artifact, data = head
    threshold = featx.load(artifact).threshold
    predicted = run("predict", "--model", artifact, data / "NORMAL")
    assert predicted.exit_code == 0, predicted.output
    assert f"decision: PNEUMONIA when p(PNEUMONIA) >= {threshold:.4f}, else NORMAL (threshold chosen by youden" \
           in predicted.output


def test_fine_tune_weights_swapped_after_load_are_refused_when_read(tmp_path):
    data = make_folder(tmp_path / "data", per_class=6)
    result = featx.finetune(data, TINY, epochs=1, val_fraction=0.34, batch_size=4, image_size=64, **QUIET)
    images = sorted((data / "NORMAL").iterdir())[:2]
    model = featx.load(result.artifact)
    pickled = pickle.dumps(model)  # a FineTunedClassifier sent to another process, before its weights are read
    state = torch.load(result.artifact, weights_only=True)
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, result.artifact)
    for swapped in (model, pickle.loads(pickled)):
        with pytest.raises(featx.FeatxError, match="no longer matches the sha256"):
            swapped.predict_proba(images)


def test_the_api_gives_featx_errors_and_per_image_reasons(head):
    artifact, data = head
    model = featx.load(artifact)
    with pytest.raises(featx.FeatxError, match="no images"):
        model.predict_proba([])
    good = sorted((data / "NORMAL").iterdir())[:2]
    missing = data / "NORMAL" / "gone.jpeg"
    with pytest.raises(featx.FeatxError, match="image_proba"):  # the error says how to get the good rows
        model.predict_proba([*good, missing])
    proba, reasons = model.image_proba([*good, missing])
    assert np.isfinite(proba[:2]).all() and np.isnan(proba[2]).all()
    assert reasons[:2] == [None, None] and "No such file" in reasons[2]


def test_toy_heads_still_predict_from_feature_rows(tmp_path):
    X, y = toy_features(90)
    store = write_store(tmp_path / "toy.h5", X, y, three_way(90))
    [result] = featx.fit(store, head="logreg", models_dir=tmp_path / "m", log=lambda m: None)
    assert json.loads(result.artifact.with_suffix(".json").read_text())["format"] == 3
    assert featx.load(result.artifact).predict_proba(X[:3]).shape == (3, 2)
