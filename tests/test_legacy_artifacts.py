"""Artifacts written before the layered redesign still load and predict the same (tests/fixtures/legacy).

Their heads are joblib pickles: they load only with trust_pickle=True (tests/test_portable.py shows the refusal)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import featx
from featx.artifacts.sidecar import Sidecar
from featx.features.identity import FeatureRecipe

LEGACY = Path(__file__).parent / "fixtures" / "legacy"
EXPECTED = json.loads((LEGACY / "expected.json").read_text())
IMAGES = [LEGACY / "images" / p for p in EXPECTED["images"]]


@pytest.mark.parametrize("kind", ["head", "finetune"])
def test_old_image_models_give_the_same_probabilities(kind):
    model = featx.load(LEGACY / EXPECTED[kind]["artifact"], trust_pickle=True)
    proba, reasons = model.image_proba(IMAGES, device="cpu")
    assert not any(reasons)
    assert np.allclose(proba, EXPECTED[kind]["proba"], atol=1e-6)


def test_an_old_pickle_of_a_moved_class_loads():
    model = featx.load(LEGACY / EXPECTED["booster"]["artifact"], trust_pickle=True)
    assert type(model.head).__module__ == "featx.heads.out_of_core"
    assert np.allclose(model.predict_proba(np.array(EXPECTED["booster"]["X"], np.float32)),
                       EXPECTED["booster"]["proba"], atol=1e-9)


def test_an_old_cache_config_reads_as_the_recipe_the_backbone_gives_now():
    """Caches were renamed once (no data folder in their identity): their recorded config still reads as the
    recipe that building the same backbone gives today."""
    from featx.data.decode_policy import DecodePolicy
    from featx.models.backbones import create_backbone

    recorded = FeatureRecipe.from_config(EXPECTED["head"]["cache_identity"]["config"])
    built = create_backbone("timm:test_efficientnet", "random")
    assert recorded == FeatureRecipe.of(built.identity(), tta="none", decode=DecodePolicy(dicom_rules=None))
    assert recorded.decode.mode == "pil" and recorded.decode.dicom_rules is None


@pytest.mark.parametrize("kind", ["head", "finetune", "booster"])
def test_old_sidecars_read_as_typed_values(kind):
    from featx.artifacts.format import read_sidecar

    sidecar = Sidecar.from_json(read_sidecar(LEGACY / EXPECTED[kind]["artifact"]))
    assert sidecar.finetuned == (kind == "finetune") and sidecar.recipe.decode.mode == "pil"
    assert sidecar.method.label == {"head": "timm:test_efficientnet + logreg", "finetune": "timm:test_efficientnet fine-tune [64 px]",
                                    "booster": "toy + lightgbm (out of core)"}[kind]


def test_old_saved_predictions_are_read_for_compare():
    from featx.artifacts.format import load_predictions

    predictions = load_predictions(LEGACY / EXPECTED["finetune"]["artifact"])
    assert set(predictions) == {"train", "val"} and len(predictions["val"]["y"]) == len(predictions["val"]["proba"])
