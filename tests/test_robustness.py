"""featx robustness: saved heads and fine-tunes on corrupted copies of a split, computed once."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import featx
from featx.cli import main
from featx.evaluation.significance import bootstrap_auc_ci, bootstrap_ci, point_metrics
from featx.data.decode_policy import DecodePolicy
from featx.studies.measurements import COLUMNS

from conftest import TINY, make_folder, one_line_error

QUICK = dict(weights="random", workers=0, progress=False)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A head and two tiny fine-tunes (plain, --augment corrupt) of one dataset with a test split, built
    once for the module: the tests read them and add only corrupted caches and results of their own cells."""
    root = tmp_path_factory.mktemp("robustness")
    data, cache = root / "data", root / "cache"
    make_folder(data, 8, split="train")
    make_folder(data, 4, split="test", start=30)
    featx.extract(data, TINY, val_fraction=0.25, cache_dir=cache, **QUICK)
    [head] = featx.fit(data=data, backbone=TINY, weights="random", head="logreg", cache_dir=cache, log=lambda m: None)
    tuned = [featx.finetune(data, TINY, **QUICK, epochs=1, batch_size=4, image_size=64, augment=a,
                            cache_dir=cache).artifact for a in ("xray", "corrupt")]
    return data, cache, head.artifact, tuned


@pytest.fixture
def models(built, monkeypatch):
    data, cache, head, tuned = built
    monkeypatch.setenv("FEATX_CACHE_DIR", str(cache))  # the commands find the models in the module's cache
    return data, head, tuned


@pytest.mark.slow
def test_every_model_every_cell_in_the_csv_plot_and_report_and_a_rerun_computes_nothing(models, tmp_path):
    data, head, tuned = models
    args = ["robustness", "--data", data, "--corruptions", "gaussian_noise,zoom", "--severities", "1,5",
            "--output", tmp_path / "out", "--workers", "0", "--no-progress"]
    first = run(*args)
    assert first.exit_code == 0, first.output
    assert "extracting" in first.output and "corrupted by zoom at severity 5" in first.output
    rows = list(csv.DictReader(open(tmp_path / "out" / "robustness.csv")))
    assert tuple(rows[0]) == COLUMNS
    methods = {r["method"] for r in rows}
    assert methods == {f"{TINY} + logreg", f"{TINY} fine-tune [64 px]", f"{TINY} fine-tune [64 px, augment corrupt]"}
    cells = {(r["method"], r["corruption"], r["severity"]) for r in rows}
    assert len(rows) == len(cells) == 3 * (1 + 2 * 2)
    assert all((m, "none", "0") in cells for m in methods) and all(int(r["n"]) == 8 for r in rows)
    assert "relative drop" in first.output and "[3]" in first.output
    assert Image.open(tmp_path / "out" / "robustness.png").size[0] > 600
    for card in (head.with_suffix(".md"), tuned[0].with_suffix(".md"), tuned[1].with_suffix(".md")):
        text = card.read_text()  # every model's card now shows its own rows
        assert "## Robustness" in text and "| zoom |" in text and "gaussian_noise" in text

    # the clean row is what compare ranks
    clean = {r["method"]: float(r["roc_auc"]) for r in rows if r["corruption"] == "none"}
    for record in featx.compare(data, split="test"):
        assert clean[record["method"]] == pytest.approx(record["roc_auc"])

    kept = sorted((tuned[0].parent / "robustness").glob("*.npz"))
    assert len(kept) == 4
    stamps = [p.stat().st_mtime_ns for p in kept]
    again = run(*args)
    assert again.exit_code == 0, again.output
    assert "extracting" not in again.output
    assert [p.stat().st_mtime_ns for p in kept] == stamps
    assert list(csv.DictReader(open(tmp_path / "out" / "robustness.csv"))) == rows

    # the corrupted copies stay apart: fit still finds the one clean cache
    refit = run("fit", "--data", data, "--backbone", TINY, "--weights", "random")
    assert refit.exit_code == 0, refit.output
    report = run("compare", "--data", data, "--out", tmp_path / "report", "--heatmaps", "0")
    assert report.exit_code == 0, report.output
    page = (tmp_path / "report" / "report.html").read_text()
    assert "Robustness to corruption" in page and (tmp_path / "report" / "robustness.png").is_file()


def test_a_head_row_is_the_head_on_features_of_the_corrupted_images(models, tmp_path):
    data, head, _ = models
    result = featx.robustness(data, corruptions="shot_noise", severities="5", workers=0, progress=False,
                              log=lambda m: None)
    store = featx.extract(data, TINY, corruption="shot_noise:5", splits=["test"], **QUICK, log=lambda m: None)
    model = featx.load(head)
    X, y = store.arrays("test")
    expected = point_metrics(y, model.head.predict_proba(X), model.threshold)["roc_auc"]
    assert result.auc(f"{TINY} + logreg", "shot_noise", 5) == pytest.approx(expected)
    assert store.n_rows == 8  # the test split alone was extracted
    clean = featx.extract(data, TINY, **QUICK, log=lambda m: None)
    assert not np.allclose(X, clean.arrays("test")[0])


def test_a_network_and_a_cache_see_the_same_corrupted_pixels(tmp_path):
    from featx.features.computing import run_on_images
    from featx.models.backbones import create_backbone

    data = make_folder(tmp_path / "data", 3)
    store = featx.extract(data, TINY, corruption="motion_blur:4", **QUICK, log=lambda m: None)
    bb = create_backbone(TINY, "random")
    paths = store.paths()
    out, reasons, _ = run_on_images(bb.model, bb.data_config, bb.num_features, paths, root=data,
                                    policy=DecodePolicy(corruption=("motion_blur", 4)), workers=0)
    assert reasons == [None] * len(paths)
    np.testing.assert_allclose(out, store.arrays()[0], atol=1e-5)


def test_the_fast_auc_interval_agrees_with_the_bootstrap_of_compare():
    rng = np.random.default_rng(3)
    y = np.arange(300) % 2
    score = np.round(np.clip(0.25 * y + rng.random(300), 0, 1), 2)  # ties
    proba = np.c_[1 - score, score]
    fast = bootstrap_auc_ci(y, proba, n_boot=2000, seed=1)
    slow = bootstrap_ci(y, proba, None, n_boot=2000, seed=2)["roc_auc"]
    assert fast[0] == pytest.approx(slow[0], abs=0.015) and fast[1] == pytest.approx(slow[1], abs=0.015)
    assert fast[0] < point_metrics(y, proba)["roc_auc"] < fast[1]


def test_bad_options_are_one_line(models, tmp_path):
    data, _, _ = models
    assert "unknown corruption 'fog'" in one_line_error(run("robustness", "--data", data, "--corruptions", "fog"))
    assert "--severities takes numbers 1 to 5" in one_line_error(
        run("robustness", "--data", data, "--severities", "0,7"))
    other = make_folder(tmp_path / "other", 2, split="test")
    assert "has no val split" in one_line_error(run("robustness", "--data", other, "--split", "val"))
    assert "no models of" in one_line_error(run("robustness", "--data", other))


def test_a_card_shows_only_its_own_models_robustness_and_shift(built, tmp_path, monkeypatch):
    """Robustness rows belong to the model file they were measured on: a second Lite0-style logreg fitted with
    other options (another model, the same method label) has a card that says "not measured", as does its
    export; the first keeps its rows. A shift shows only on the features and images it was measured on."""
    import shutil

    data, cache, head, _ = built  # copied as a project folder (data and cache side by side): it keeps its caches
    data, cache = shutil.copytree(data, tmp_path / "data"), shutil.copytree(cache, tmp_path / "cache")
    monkeypatch.setenv("FEATX_CACHE_DIR", str(cache))
    first = cache / "models" / head.name
    measured = run("robustness", "--data", data, "--corruptions", "zoom", "--severities", "1", "--output",
                   tmp_path / "out", "--workers", "0", "--no-progress")
    assert measured.exit_code == 0, measured.output
    assert "| zoom |" in first.with_suffix(".md").read_text()
    fitted = run("fit", "--backbone", TINY, "--data", data, "--weights", "random", "--head", "logreg", "--pca", "4",
                 "--threshold", "youden")
    assert fitted.exit_code == 0, fitted.output
    second = next(p for p in (cache / "models").glob("*.skops") if p.name != first.name)
    assert run("card", "--model", second).exit_code == 0
    text = second.with_suffix(".md").read_text()
    assert "## Robustness (featx robustness)\n\nNot measured for this model." in text and "| zoom |" not in text
    assert "| zoom |" in run("card", "--model", first).output or "| zoom |" in first.with_suffix(".md").read_text()
    assert "## Split shift\n\nNot measured" in text
    shifted = run("shift", "--data", data, "--backbone", TINY, "--weights", "random", "--splits", "train,test",
                  "--no-map")
    assert shifted.exit_code == 0, shifted.output
    run("card", "--model", second)
    assert "train -> test: domain ROC-AUC" in second.with_suffix(".md").read_text()  # its own features and images
