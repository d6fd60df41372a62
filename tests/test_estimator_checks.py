"""scikit-learn's estimator contract (`parametrize_with_checks`) on featx's own estimators.

FeatureExtractor takes image paths, not numbers: the checks that feed it numeric arrays cannot apply
and are listed, each with its reason; every other check runs."""

from __future__ import annotations

from sklearn.utils.estimator_checks import parametrize_with_checks

from featx import FeatureExtractor
from featx.heads.out_of_core import BoosterClassifier

from conftest import TINY

PATHS_NOT_NUMBERS = "X is a list of image paths: the check feeds a numeric array"
NUMERIC_INPUT_CHECKS = (
    "check_fit_score_takes_y", "check_n_features_in_after_fitting", "check_estimators_dtypes", "check_complex_data",
    "check_dtype_object", "check_estimators_empty_data_messages", "check_pipeline_consistency",
    "check_estimators_nan_inf", "check_estimator_sparse_tag", "check_estimators_pickle",
    "check_f_contiguous_array_estimator", "check_transformer_data_not_an_array", "check_transformer_general",
    "check_transformer_preserve_dtypes", "check_transformers_unfitted_stateless", "check_methods_sample_order_invariance",
    "check_methods_subset_invariance", "check_dict_unchanged", "check_fit_idempotent", "check_n_features_in",
    "check_fit1d", "check_fit2d_predict1d",
)


def _expected_failures(estimator) -> dict:
    return {name: PATHS_NOT_NUMBERS for name in NUMERIC_INPUT_CHECKS} if isinstance(estimator, FeatureExtractor) else {}


@parametrize_with_checks([FeatureExtractor(TINY, weights="random", cache=None, device="cpu"),
                          BoosterClassifier(n_estimators=20)], expected_failed_checks=_expected_failures)
def test_the_estimator_contract(estimator, check):
    check(estimator)


def test_the_booster_keeps_the_labels_it_was_given():
    import numpy as np

    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 4)).astype(np.float32)
    y = np.where(X[:, 0] > 0, "PNEUMONIA", "NORMAL")
    booster = BoosterClassifier(n_estimators=20).fit(X, y)
    assert list(booster.classes_) == ["NORMAL", "PNEUMONIA"]
    assert set(booster.predict(X)) <= {"NORMAL", "PNEUMONIA"} and (booster.predict(X) == y).mean() > 0.9
