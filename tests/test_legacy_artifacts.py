"""Artifacts written before the layered redesign still load and predict the same (tests/fixtures/legacy)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import featx
from featx.features.identity import cache_identity, identity_hash

LEGACY = Path(__file__).parent / "fixtures" / "legacy"
EXPECTED = json.loads((LEGACY / "expected.json").read_text())
IMAGES = [LEGACY / "images" / p for p in EXPECTED["images"]]


@pytest.mark.parametrize("kind", ["head", "finetune"])
def test_old_image_models_give_the_same_probabilities(kind):
    model = featx.load(LEGACY / EXPECTED[kind]["artifact"])
    proba, reasons = model.image_proba(IMAGES, device="cpu")
    assert not any(reasons)
    assert np.allclose(proba, EXPECTED[kind]["proba"], atol=1e-6)


def test_an_old_pickle_of_a_moved_class_loads():
    model = featx.load(LEGACY / EXPECTED["booster"]["artifact"])
    assert type(model.head).__module__ == "featx.heads.out_of_core"
    assert np.allclose(model.predict_proba(np.array(EXPECTED["booster"]["X"], np.float32)),
                       EXPECTED["booster"]["proba"], atol=1e-9)


def test_the_cache_identity_still_hashes_to_the_recorded_name():
    recorded = EXPECTED["head"]["cache_identity"]
    c = recorded["config"]
    backbone = {k: c[k] for k in ("backbone", "timm_model", "numerics", "weights_sha256", "data_config", "layer")}
    identity = cache_identity(backbone, data_root=c["data_root"], precision=c["precision"], tta=c["tta"],
                              dtype=c["dtype"], decode=c["decode"])
    assert identity_hash(identity) == recorded["config_hash"] == "b4828e9945"


def test_old_saved_predictions_are_read_for_compare():
    from featx.artifacts.format import load_predictions

    predictions = load_predictions(LEGACY / EXPECTED["finetune"]["artifact"])
    assert set(predictions) == {"train", "val"} and len(predictions["val"]["y"]) == len(predictions["val"]["proba"])
