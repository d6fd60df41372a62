"""featx.FeatureExtractor inside scikit-learn: Pipeline, cross_val_score, GridSearchCV, the cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import Pipeline

import featx
from featx._core.accelerators import cpu_has_bf16

from conftest import TINY, make_folder


@pytest.fixture
def images(tmp_path):
    root = make_folder(tmp_path / "data", per_class=6)
    paths = sorted(str(p) for p in root.rglob("*.jpeg"))
    return root, paths, np.array([int("PNEUMONIA" in p) for p in paths])


def extractor(**kw):
    return featx.FeatureExtractor(TINY, weights="random", batch_size=4, **kw)


def test_pipeline_works_with_cross_val_score_and_grid_search(images):
    _, paths, y = images
    pipe = Pipeline([("features", extractor(cache=None)), ("clf", LogisticRegression(max_iter=500))])
    scores = cross_val_score(pipe, paths, y, cv=2, scoring="roc_auc")
    assert scores.shape == (2,) and np.all(np.isfinite(scores))
    search = GridSearchCV(pipe, {"clf__C": [0.1, 10.0]}, cv=2).fit(paths, y)
    assert search.best_params_["clf__C"] in (0.1, 10.0)
    assert search.predict_proba(paths[:3]).shape == (3, 2)


def test_transform_matches_extract_and_reads_the_cache(images, tmp_path):
    root, paths, _ = images
    store = featx.extract(root, TINY, weights="random", batch_size=4, workers=0, progress=False)
    cached = dict(zip(store.paths(), store.arrays()[0]))
    expected = np.stack([cached[str(Path(p).relative_to(root))] for p in paths])

    fresh = extractor(cache=None)
    computed = fresh.transform(paths)
    assert fresh.n_cached_ == 0 and computed.shape == expected.shape
    assert np.allclose(computed, expected, atol=1e-5)

    reused = extractor()  # default: look in featx's cache folder
    assert np.array_equal(reused.transform(paths), expected) and reused.n_cached_ == len(paths)


def test_cache_of_other_weights_is_not_used(images, tmp_path):
    root, paths, _ = images
    featx.extract(root, TINY, weights="random", batch_size=4, workers=0, progress=False, tta="hflip")
    fe = extractor()  # tta none: the hflip cache was made differently
    fe.transform(paths)
    assert fe.n_cached_ == 0


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no native bfloat16")
def test_a_bfloat16_cache_is_not_read_as_float32_features(images):
    root, paths, _ = images
    featx.extract(root, TINY, weights="random", batch_size=4, workers=0, progress=False, precision="bf16")
    fe = extractor()
    fe.transform(paths)
    assert fe.n_cached_ == 0


def test_estimator_contract(images):
    _, paths, _ = images
    fe = extractor(cache=None)
    assert fe.fit(paths) is fe
    assert clone(fe).get_params() == fe.get_params()
    assert len(fe.get_feature_names_out()) == fe.transform(paths[:1]).shape[1]
    with pytest.raises(featx.FeatxError, match="list of image paths"):
        fe.transform(paths[0])


def test_unreadable_image_is_named(images, tmp_path):
    _, paths, _ = images
    bad = tmp_path / "bad.jpeg"
    bad.write_bytes(b"nope")
    with pytest.raises(featx.FeatxError, match="bad.jpeg"):
        extractor(cache=None).transform(paths[:2] + [str(bad)])
