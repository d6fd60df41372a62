"""featx compare, the report and explain: intervals, paired tests, grouping by images, what people see."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import featx
from featx.cli import main
from featx.evaluation.significance import (bootstrap_ci, delong_auc_variance, delong_test, holm, mcnemar_test,
                                          point_metrics)

from conftest import TINY, make_folder, one_line_error, save, three_way, toy_features, write_store, xray_like


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# --- statistics ---------------------------------------------------------------------------------

def _scores(n, seed, separation=1.0):
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 4 == 0).astype(int)  # 1:3, like NORMAL:PNEUMONIA reversed
    s = 1 / (1 + np.exp(-(separation * (2 * y - 1) + rng.normal(size=n))))
    return y, np.column_stack([1 - s, s])


def test_bootstrap_interval_contains_the_estimate_and_narrows_with_more_images():
    widths = []
    for n in (200, 2000):
        y, proba = _scores(n, seed=1)
        point = point_metrics(y, proba, 0.5)
        ci = bootstrap_ci(y, proba, 0.5, n_boot=1000, seed=0)
        for metric, (lo, hi) in ci.items():
            assert lo <= point[metric] <= hi, (n, metric)
        widths.append(ci["roc_auc"][1] - ci["roc_auc"][0])
    assert widths[1] < 0.5 * widths[0]
    y, proba = _scores(200, seed=1)
    assert bootstrap_ci(y, proba, n_boot=200, seed=3) == bootstrap_ci(y, proba, n_boot=200, seed=3)


def test_delong_matches_a_case_computed_by_hand():
    # Positives score 0.35 and 0.8, negatives 0.1 and 0.4. Placement values: positives beat
    # [1/2, 2/2] of the negatives, negatives are beaten by [2/2, 1/2] of the positives. AUC 0.75,
    # variance = var([.5, 1])/2 + var([1, .5])/2 = 0.125/2 + 0.125/2 = 0.125.
    y = [0, 0, 1, 1]
    aucs, cov = delong_auc_variance(y, [[0.1, 0.4, 0.35, 0.8]])
    assert aucs[0] == 0.75 and cov[0, 0] == pytest.approx(0.125)
    # Against a perfect ranking (AUC 1, variance 0): z = -0.25 / sqrt(0.125), p = 2 (1 - Phi(0.7071)).
    result = delong_test(y, [0.1, 0.4, 0.35, 0.8], [0.2, 0.1, 0.3, 0.4])
    assert result["z"] == pytest.approx(-0.70710678) and result["p_value"] == pytest.approx(0.4795001, abs=1e-6)


def test_fast_delong_equals_the_direct_definition():
    y, proba = _scores(60, seed=4)
    a, b = proba[:, 1], _scores(60, seed=5, separation=0.5)[1][:, 1]
    pos, neg = y == 1, y == 0

    def placements(s):  # O(m n): psi(x, y) = 1 if x > y, 1/2 if equal
        psi = (s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :])
        return psi.mean(1), psi.mean(0), psi.mean()

    (v10a, v01a, auc_a), (v10b, v01b, auc_b) = placements(a), placements(b)
    s10, s01 = np.cov([v10a, v10b]), np.cov([v01a, v01b])
    cov = s10 / pos.sum() + s01 / neg.sum()
    z = (auc_a - auc_b) / math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    assert delong_test(y, a, b)["z"] == pytest.approx(z)


def test_mcnemar_exact_and_chi_squared_cases():
    # 1 vs 9 discordant pairs: p = 2 * P(X <= 1), X ~ Bin(10, 1/2) = 2 * 11/1024.
    exact = mcnemar_test([1] + [0] * 9, [0] + [1] * 9)
    assert exact["method"] == "exact" and exact["p_value"] == pytest.approx(22 / 1024)
    # b = 121, c = 59 (a textbook table): chi2 = (|121 - 59| - 1)^2 / 180 = 20.672, p = 5.45e-6.
    a = np.r_[np.ones(121), np.zeros(59), np.ones(30)].astype(bool)
    b = np.r_[np.zeros(121), np.ones(59), np.ones(30)].astype(bool)
    result = mcnemar_test(a, b)
    assert result["statistic"] == pytest.approx(61 ** 2 / 180) and result["p_value"] == pytest.approx(5.45e-6, rel=0.01)


def test_holm_matches_a_case_computed_by_hand():
    # Sorted 0.01, 0.02, 0.04 (m = 3): 3 x 0.01 = 0.03, 2 x 0.02 = 0.04, 1 x 0.04 = 0.04; then kept
    # non-decreasing. 0.5 is the largest of four: min(1, 1 x 0.5). None (the best) is no test.
    assert holm([0.04, None, 0.01, 0.02]) == pytest.approx([0.04, None, 0.03, 0.04])
    assert holm([0.04, 0.01, 0.02, 0.5]) == pytest.approx([0.08, 0.04, 0.06, 0.5])
    assert holm([0.02, 0.011]) == pytest.approx([0.022, 0.022])  # step-down: the larger never drops below
    assert holm([0.6, 0.9]) == [1.0, 1.0] and holm([None]) == [None]


# --- compare -----------------------------------------------------------------------------------------

@pytest.fixture
def models(tmp_path):
    X, y = toy_features(150, signal=1.2)
    store = write_store(tmp_path / "toy.h5", X, y, three_way())
    for head in ("logreg", "knn", "rf"):
        featx.fit(store, head=head)
    return store


def test_compare_ranks_with_intervals_and_tests_against_the_best(models):
    records = featx.compare(split="test", n_boot=200)
    assert [r["ranked"] for r in records] == [True] * 3
    best = [r for r in records if r.get("best")]
    assert len(best) == 1 and best[0] is records[0] and best[0]["p_delong"] is None
    for r in records:
        assert r["n"] == 50 and r["roc_auc_ci"][0] <= r["roc_auc"] <= r["roc_auc_ci"][1]
        if not r["best"]:
            assert 0 <= r["p_delong"] <= 1 and 0 <= r["p_mcnemar"] <= 1
    assert records[0]["roc_auc"] >= records[1]["roc_auc"] >= records[2]["roc_auc"]
    for test in ("p_delong", "p_mcnemar"):  # two comparisons with the best: Holm's factors are 2 and 1
        low, high = sorted([records[1][test], records[2][test]])
        adjusted = sorted([records[1][f"{test}_holm"], records[2][f"{test}_holm"]])
        assert adjusted == pytest.approx([min(1, 2 * low), max(min(1, 2 * low), high)])
    from featx.reporting.comparison import format_table

    shown = f"{records[1]['p_delong_holm']:.3f}" if records[1]["p_delong_holm"] >= 0.001 else "<0.001"
    wide = format_table(records, wide=True)
    assert "p DeLong (Holm)" in wide and "best*" in wide and "over the 2 comparisons" in wide
    assert shown in wide.splitlines()[2] and "Predict ms/img" in wide
    narrow = format_table(records)  # what the terminal shows: within 100 columns, the p-value still there
    assert max(map(len, narrow.splitlines())) <= 100 < max(map(len, wide.splitlines()))
    assert shown in narrow.splitlines()[2] and "ROC-AUC [95% CI]" in narrow and "Predict ms/img" not in narrow


def test_models_evaluated_on_other_images_are_listed_apart(models, tmp_path):
    X, y = toy_features(150, signal=1.2)
    other = write_store(tmp_path / "other.h5", X, y, three_way(), salt=1)  # same names, other bytes
    featx.fit(other, head="logreg")
    records = featx.compare(split="test", n_boot=200)
    apart = [r for r in records if not r["ranked"]]
    assert len(apart) == 1 and "other test images" in apart[0]["note"] and apart[0]["p_delong"] is None
    result = run("compare", "--split", "test", "--no-report", "--bootstrap", "200")
    assert result.exit_code == 0 and "evaluated apart" in result.output and "Predict ms/img" not in result.output
    wide = run("compare", "--split", "test", "--no-report", "--bootstrap", "200", "--wide")
    assert "evaluated apart" in wide.output and "Predict ms/img" in wide.output


def test_no_models_or_no_such_split_is_one_line(tmp_path, models):
    assert "no models" in one_line_error(run("compare", "--models", tmp_path / "empty", "--no-report"))
    X, y = toy_features(60)
    s = write_store(tmp_path / "nosplit.h5", X, y, np.random.default_rng(3).permutation(["train", "val"] * 30))
    featx.fit(s, head="logreg", models_dir=tmp_path / "m2")
    line = one_line_error(run("compare", "--models", tmp_path / "m2", "--split", "test", "--no-report"))
    assert "--split val" in line


def test_a_split_with_one_class_says_auc_is_undefined(tmp_path):
    X, y = toy_features(90)
    split = np.where(np.arange(90) < 60, "train", "val").astype(object)
    split[(np.arange(90) >= 60) & (y == 1)] = "train"  # val keeps only NORMAL
    s = write_store(tmp_path / "oneclass.h5", X, y, split)
    featx.fit(s, head="logreg", models_dir=tmp_path / "m")
    featx.fit(s, head="knn", models_dir=tmp_path / "m")
    records = featx.compare(split="val", models_dir=tmp_path / "m", n_boot=100)
    assert all(r["roc_auc"] is None and "undefined" in r["note"] for r in records)
    assert all(r["p_delong"] is None for r in records)


def test_html_report_is_self_contained_and_lists_every_method(models, tmp_path):
    result = featx.report(split="test", out=tmp_path / "report", n_boot=200)
    page = result["html"].read_text()
    for r in result["records"]:
        assert r["method"] in page and r["method"] in result["markdown"].read_text()
    assert not re.search(r"(src|href)\s*=\s*['\"]?(https?:)?//", page)  # nothing fetched from elsewhere
    assert page.count("data:image/png;base64,") == len(result["figures"])
    assert {p.name for p in result["figures"]} == {"roc_pr.png", "calibration.png", "confusion.png", "mistakes.png"}
    for caption in ("ROC and precision-recall curves", "Calibration:", "Confusion matrices",
                    "Most confident mistakes of the best method"):
        assert caption in page
    assert all(p.stat().st_size > 10_000 for p in result["figures"])  # drawn, not empty canvases
    import csv

    rows = list(csv.DictReader(result["csv"].open()))
    assert [r["method"] for r in rows] == [r["method"] for r in result["records"]]
    for row, record in zip(rows, result["records"]):  # the raw p-values, next to the adjusted ones
        for test in ("p_delong", "p_mcnemar", "p_delong_holm"):
            assert (row[test] == "") if record[test] is None else float(row[test]) == pytest.approx(record[test])
        assert float(row["roc_auc_low"]) == pytest.approx(record["roc_auc_ci"][0])
    assert "Holm-adjusted over the 2 comparisons" in page


# --- explain -------------------------------------------------------------------------------------------

@pytest.fixture
def image_models(tmp_path):
    data = make_folder(tmp_path / "data", per_class=6)
    featx.extract(data, TINY, weights="random", val_fraction=0.34, workers=0, progress=False)
    [logreg] = featx.fit(data=data, backbone=TINY, weights="random", head="logreg")
    [knn] = featx.fit(data=data, backbone=TINY, weights="random", head="knn")
    tuned = featx.finetune(data, TINY, weights="random", epochs=1, batch_size=4, workers=0, progress=False)
    return data, logreg.artifact, knn.artifact, tuned.artifact


def test_explain_gives_a_heatmap_of_the_image_size(image_models, tmp_path):
    data, logreg, knn, tuned = image_models
    image = next((data / "PNEUMONIA").glob("*.jpeg"))
    width, height = Image.open(image).size
    for artifact in (logreg, tuned):
        result = featx.explain(artifact, image)
        heat = result["heatmap"]
        assert heat.shape == (height, width) and 0 <= heat.min() and heat.max() <= 1
    assert featx.explain(logreg, image)["heatmap"].max() > 0.9  # min-max scaled, then resized
    out = tmp_path / "heat.png"
    cli = run("explain", "--model", tuned, "--out", out, image)
    assert cli.exit_code == 0, cli.output
    assert Image.open(out).size[0] > 100


def test_linear_cam_is_exact(image_models):
    """The map's mean over positions is the head's decision value on the pooled features."""
    data, logreg, _, _ = image_models
    image = next((data / "NORMAL").glob("*.jpeg"))
    model = featx.load(logreg)
    result = featx.explain(model, image, target="PNEUMONIA")
    features = model.image_features([image])[0]
    assert result["low_res"].mean() == pytest.approx(model.head.decision_function(features)[0], abs=1e-4)


def test_explain_reads_the_image_as_the_model_does(tmp_path):
    """A head on features of JPEGs decoded in draft mode: its heatmap's probabilities are featx predict's,
    from the same (draft-decoded) pixels, not those of a full decode."""
    data = tmp_path / "data"
    for c, name in enumerate(("NORMAL", "PNEUMONIA")):
        for i in range(6):
            big = np.kron(xray_like(i + 50 * c, bright=bool(c)), np.ones((12, 12), np.uint8))  # 768 x 576
            save(data / name / f"IM-{1000 + 10 * c + i:04d}-0001.jpeg", big, quality=90)
    store = featx.extract(data, TINY, weights="random", val_fraction=0.34, decode="pil-draft", workers=0,
                          progress=False)
    [logreg] = featx.fit(store.path, head="logreg", log=lambda m: None)
    image = next((data / "PNEUMONIA").glob("*.jpeg"))
    [row] = featx.predict(logreg.artifact, [image], device="cpu")
    proba = featx.explain(logreg.artifact, image)["proba"]
    assert proba == pytest.approx([row["p_NORMAL"], row["p_PNEUMONIA"]], abs=1e-5)


def test_explain_refusals_are_one_line(image_models, tmp_path):
    data, logreg, knn, _ = image_models
    image = next((data / "NORMAL").glob("*.jpeg"))
    assert "linear head" in one_line_error(run("explain", "--model", knn, image))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert "cannot explain" in one_line_error(run("explain", "--model", logreg, bad))
    assert "not a class" in one_line_error(run("explain", "--model", logreg, "--target", "COVID", image))


def test_report_with_heatmaps_and_fine_tune_curves(image_models, tmp_path):
    result = featx.report(split="val", out=tmp_path / "r", n_boot=100, heatmaps=2)
    names = {p.name for p in result["figures"]}
    assert "heatmaps.png" in names and any(n.startswith("training-") for n in names)
    assert {r["method"] for r in result["records"]} >= {f"{TINY} + logreg", f"{TINY} fine-tune"}
