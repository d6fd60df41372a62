"""Where a model will be used: featx calibrate (a threshold the site's labels imply, scaling, conformal sets that
keep their coverage, the card's local estimate, predict's sets), and bad input in one line."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

import featx
from featx.cli import main
from featx.evaluation.conformal import ConformalSets, smallest_class
from featx.evaluation.scaling import fit_scaling
from featx.evaluation.thresholds import choose_threshold

from conftest import TINY, make_folder, one_line_error


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def trained(tmp_path):
    """A tiny-backbone logreg head (threshold by youden on validation) and its training folder."""
    data = tmp_path / "data"
    make_folder(data, 8, split="train")
    make_folder(data, 4, split="val", start=30)
    [result] = featx.fit(data=data, backbone=TINY, weights="random", threshold="youden", log=lambda m: None)
    return result.artifact, data


@pytest.fixture
def site(tmp_path):
    """Labelled images of another site: new patients, 10 of each class."""
    return make_folder(tmp_path / "site", 10, start=60)


def test_calibrate_rechooses_the_threshold_the_site_labels_imply_and_gives_sets(trained, site, tmp_path):
    model, _ = trained
    done = run("calibrate", "--model", model, "--data", site, "--scaling", "platt", "--site", "Hospital B")
    assert done.exit_code == 0, done.output
    out = model.with_name(f"{model.stem}.at-Hospital_B{model.suffix}")
    assert "ROC-AUC at Hospital B" in done.output and str(out) in done.output
    calibrated = featx.load(out)
    original = featx.load(model)
    paths = sorted(site.rglob("*.jpeg"))
    y = np.array([p.parent.name == "PNEUMONIA" for p in paths], dtype=int)
    raw, _ = original.image_proba(paths)
    scaled = calibrated.local.scaling.apply(raw)
    assert calibrated.threshold == pytest.approx(choose_threshold(y, scaled[:, 1], "youden"))
    assert np.allclose(calibrated.image_proba(paths)[0], scaled)  # every prediction goes through the site's scaling
    assert calibrated.info["sha256"] == original.info["sha256"]  # the model file is the same
    assert calibrated.sidecar.method.label.endswith("calibrated at Hospital B")
    card = out.with_suffix(".md").read_text()
    assert "## At Hospital B (featx calibrate)" in card and "out of fold" in card and "would narrow" in card
    assert "on 20 labelled images from Hospital B (10 NORMAL, 10 PNEUMONIA)" in card
    rows = featx.predict(out, paths[:3])
    assert all(r["set"] for r in rows)
    shown = run("predict", "--model", out, paths[0])
    assert "set: " in shown.output and "90% prediction sets" in shown.output
    assert "cannot carry" in one_line_error(run("export", "--model", out))
    again = run("calibrate", "--model", out, "--data", site)
    assert "already calibrated for Hospital B" in one_line_error(again)


def test_calibrate_refuses_bad_sites_in_one_line(trained, site, tmp_path):
    model, data = trained
    base = ["calibrate", "--model", model]
    said = one_line_error(run(*base, "--data", data / "train"))
    assert "are the model's own train images" in said
    one_class = tmp_path / "one"
    shutil.copytree(site / "NORMAL", one_class / "NORMAL")
    assert "PNEUMONIA has 0" in one_line_error(run(*base, "--data", one_class))
    foreign = tmp_path / "foreign"
    shutil.copytree(site, foreign)
    shutil.copytree(site / "NORMAL", foreign / "COVID")
    assert "labels the model does not know (COVID)" in one_line_error(run(*base, "--data", foreign))
    said = one_line_error(run(*base, "--data", site, "--confidence", "0.95"))
    assert "need at least 19 calibration images of each class" in said
    said = one_line_error(run(*base, "--data", site, "--threshold", "sensitivity=0.95"))
    assert "needs at least 20 PNEUMONIA images" in said
    assert "must be one of" in one_line_error(run(*base, "--data", site, "--scaling", "isotonic"))
    user_file = model.with_name(f"{model.stem}.at-site{model.suffix}")
    user_file.write_text("mine")
    assert "is not a version featx made" in one_line_error(run(*base, "--data", site))
    assert user_file.read_text() == "mine"


def test_conformal_sets_keep_their_coverage_on_exchangeable_data():
    rng = np.random.default_rng(0)

    def draw(n):
        y = (rng.random(n) < 0.3).astype(int)  # the rarer class keeps its promise too (class-conditional)
        logit = 1.2 * (2 * y - 1) + rng.normal(0, 1.5, n)
        p1 = 1 / (1 + np.exp(-logit))
        return y, np.column_stack([1 - p1, p1])
    for confidence in (0.9, 0.95):
        y_cal, p_cal = draw(400)
        sets = ConformalSets.fit(y_cal, p_cal, confidence, ["NORMAL", "PNEUMONIA"])
        y, p = draw(20000)
        inside = sets.members(p)[np.arange(len(y)), y]
        for c in (0, 1):
            assert inside[y == c].mean() >= confidence - 0.02, (confidence, c, inside[y == c].mean())
        assert (sets.members(p).sum(1) == 1).mean() > 0.05  # informative: not every set is both classes
    assert smallest_class(0.9) == 9 and smallest_class(0.95) == 19


def test_scaling_keeps_the_ranking_and_fits_the_site():
    rng = np.random.default_rng(1)
    y = (rng.random(500) < 0.5).astype(int)
    p1 = 1 / (1 + np.exp(-(3 * (2 * y - 1) + rng.normal(0, 2, 500)) + 2.5))  # shifted: overconfident for class 0
    proba = np.column_stack([1 - p1, p1])
    for method in ("platt", "temperature"):
        scaled = fit_scaling(method, y, proba).apply(proba)
        assert np.array_equal(np.argsort(scaled[:, 1], kind="stable"), np.argsort(p1, kind="stable"))
    platt = fit_scaling("platt", y, proba).apply(proba)
    def nll(q):
        return -np.mean(np.log(q[np.arange(len(y)), y]))
    assert nll(platt) < nll(proba) - 0.05
    assert json.loads(json.dumps(fit_scaling("platt", y, proba).to_json()))["method"] == "platt"


def planted_site(n=600, seed=0, prior=0.5):
    """Source blobs, and a target whose every feature went through a planted gain and offset (an acquisition
    change: brightness and contrast) with its own class prior."""
    rng = np.random.default_rng(seed)
    y_s = (rng.random(n) < 0.5).astype(int)
    X_s = rng.normal(0, 1, (n, 6)) + 1.5 * y_s[:, None] * np.r_[1, 1, 0, 0, 0, 0]
    y_t = (rng.random(n) < prior).astype(int)
    X_t = (rng.normal(0, 1, (n, 6)) + 1.5 * y_t[:, None] * np.r_[1, 1, 0, 0, 0, 0]) * 1.8 + 2.0
    return X_s, y_s, X_t, y_t


def test_standardisation_recovers_the_planted_accuracy():
    from sklearn.linear_model import LogisticRegression

    from featx.heads.adaptation import learn_map

    X_s, y_s, X_t, y_t = planted_site(prior=0.5)
    head = LogisticRegression().fit(X_s, y_s)
    at_source = (head.predict(X_s) == y_s).mean()
    unadapted = (head.predict(X_t) == y_t).mean()
    mapping = learn_map("standardise", X_s, X_t)
    adapted = mapping.wrap(LogisticRegression().fit(mapping.source(X_s), y_s))
    assert unadapted < at_source - 0.15  # the planted change costs accuracy
    assert (adapted.predict(X_t) == y_t).mean() >= at_source - 0.03  # and standardising gets it back
    for name in ("coral", "ot"):  # skada's mappings do as well here
        m = learn_map(name, X_s, X_t)
        assert (m.wrap(LogisticRegression().fit(m.source(X_s), y_s)).predict(X_t) == y_t).mean() >= at_source - 0.05
    import sklearn  # skada's import switches metadata routing on for the process; featx keeps it off

    assert not sklearn.get_config()["enable_metadata_routing"]


def test_bbse_finds_a_planted_prior():
    from sklearn.linear_model import LogisticRegression

    from featx.heads.adaptation import estimate_prior

    X_s, y_s, _, _ = planted_site(2000, seed=1)
    _, _, X_t, y_t = planted_site(2000, seed=2, prior=0.2)
    X_t = (X_t - 2.0) / 1.8  # label shift only: the images themselves did not change
    head = LogisticRegression(class_weight="balanced").fit(X_s[:1000], y_s[:1000])
    prior = estimate_prior(y_s[1000:], head.predict_proba(X_s[1000:]), head.predict_proba(X_t))
    assert abs(prior[1] - y_t.mean()) < 0.05, (prior, y_t.mean())


def test_fit_scores_a_target_site_and_adapts_to_it(trained, site, tmp_path):
    _, data = trained
    done = featx.fit(data=data, backbone=TINY, weights="random", target=site, log=lambda m: None)[0]
    assert done.metrics["target"]["n"] == 20 and "roc_auc" in done.metrics["target"]
    info = json.loads(done.artifact.with_suffix(".json").read_text())
    assert info["target"]["site"] == "site" and 0 <= info["target"]["shift"]["auc"] <= 1
    card = done.artifact.with_suffix(".md").read_text()
    assert "## Target site: site" in card and "| target | 20 |" in card
    unlabelled = tmp_path / "waiting" / "unlabelled"
    shutil.copytree(site / "NORMAL", unlabelled)
    said = []
    adapted = featx.fit(data=data, backbone=TINY, weights="random", target=unlabelled.parent, adapt="standardise",
                        log=said.append)[0]
    assert adapted.artifact != done.artifact and "target" not in adapted.metrics
    assert any("cannot be checked" in line for line in said)
    model = featx.load(adapted.artifact)
    assert model.sidecar.method.label.endswith("adapted by standardise")
    assert model.head.steps[0][0] == "site"  # the target's own statistics come first
    assert "cannot be checked without some" in adapted.artifact.with_suffix(".md").read_text()


def test_fit_refuses_a_bad_target_in_one_line(trained, site, tmp_path):
    _, data = trained
    base = ["fit", "--backbone", TINY, "--weights", "random", "--data", data]
    assert "are train images of the training data" in one_line_error(run(*base, "--target", data / "train"))
    foreign = tmp_path / "foreign"
    shutil.copytree(site / "NORMAL", foreign / "COVID")
    assert "labels the training data does not have (COVID)" in one_line_error(run(*base, "--target", foreign))
    assert "give them with --target" in one_line_error(run(*base, "--adapt", "coral"))
    assert "logreg head" in one_line_error(run(*base, "--target", site, "--adapt", "prior", "--head", "knn"))
    assert "must be one of" in one_line_error(run(*base, "--target", site, "--adapt", "magic"))


def test_study_scores_every_unit_at_the_target_and_gives_its_verdict(tmp_path):
    data = make_folder(tmp_path / "data", 12, split="train")
    make_folder(data, 4, split="test", start=30)
    site = make_folder(tmp_path / "site", 10, start=60)
    args = ["study", "--data", data, "--backbones", TINY, "--weights", "random", "--train-sizes", "all",
            "--repeats", "1", "--bootstrap", "100", "--workers", "0"]
    first = run(*args, "--out", tmp_path / "plain")
    assert first.exit_code == 0, first.output
    units = sorted((tmp_path / "plain" / "units").glob("*.json"))
    done = run(*args, "--out", tmp_path / "plain", "--target", site, "--adapt", "standardise", "--target-sizes", "4,8")
    assert done.exit_code == 0, done.output
    transfer = list(csv.DictReader(open(tmp_path / "plain" / "site_transfer.csv")))
    assert {r["option"] for r in transfer} == {"as is", "re-thresholded", "source + k", "k alone"}
    assert all(r["site_labels"] == "0" for r in transfer if r["option"] == "as is")
    assert "Site transfer to site" in done.output
    assert "Site transfer to site: what k labelled images" in (tmp_path / "plain" / "report.html").read_text()
    assert (tmp_path / "plain" / "site_transfer.png").is_file()
    assert "Shift from train to the target site" in done.output and "At the target site site (20 labelled" in done.output
    assert "adapted by standardise" in done.output and "At n=all" in done.output
    assert all(u.read_bytes() == (tmp_path / "plain" / "units" / u.name).read_bytes() for u in units)  # untouched
    assert len(list((tmp_path / "plain" / "units").glob("*.at-*.json"))) == 2  # the plain head and the adapted one
    rows = (tmp_path / "plain" / "study.csv").read_text().splitlines()
    assert "target_roc_auc" in rows[0]
    card = next((tmp_path / "plain" / "models").glob("*.md")).read_text()
    assert "## Target site: site" in card and "| target | 20 |" in card
    unlabelled = tmp_path / "waiting" / "unlabelled"
    shutil.copytree(site / "NORMAL", unlabelled)
    blind = run(*args, "--out", tmp_path / "blind", "--target", unlabelled.parent, "--adapt", "coral")
    assert blind.exit_code == 0, blind.output
    assert "cannot be checked until some target images are labelled" in " ".join(blind.output.split())
    said = one_line_error(run(*args, "--out", tmp_path / "bad", "--target", data / "train"))
    assert "are train images of the training data" in said
    assert not (tmp_path / "bad").exists()  # refused before any work
    assert "give them with --target" in one_line_error(run(*args, "--out", tmp_path / "bad", "--adapt", "ot"))
    said = one_line_error(run(*args, "--out", tmp_path / "bad", "--target", site, "--target-sizes", "20"))
    assert "the target has 20 labelled images" in said
    assert "give it with --target" in one_line_error(run(*args, "--out", tmp_path / "bad", "--target-sizes", "4"))
    assert "2 or more" in one_line_error(run(*args, "--out", tmp_path / "bad", "--target", site, "--target-sizes", "x"))


def test_site_draws_are_whole_patients_nested_and_hold_both_classes():
    from featx.studies.site_transfer import nested_draws

    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(60), rng.integers(1, 4, 60))  # patients of one to three images
    y = (groups % 3 == 0).astype(int)  # a third of the patients have the disease
    for draws in nested_draws(y, groups, [6, 12, 30], repeats=3, seed=1):
        assert set(draws[6]) <= set(draws[12]) <= set(draws[30])
        for k, rows in draws.items():
            assert np.bincount(y[rows], minlength=2).min() >= k / 2
            taken = set(groups[rows])
            assert all(set(np.flatnonzero(groups == g)) <= set(rows) for g in taken)  # whole patients


def test_adabn_changes_batchnorm_statistics_and_nothing_else(trained, site, tmp_path):
    import torch

    model, data = trained
    tuned = featx.finetune(data, TINY, weights="random", epochs=1, workers=0, out_dir=tmp_path / "ft",
                           log=lambda m: None).artifact
    said = []
    done = featx.adapt_batchnorm(tuned, site, log=said.append)
    before, after = torch.load(tuned, weights_only=True), torch.load(done.path, weights_only=True)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.rsplit(".", 1)[1] in ("running_mean", "running_var", "num_batches_tracked")
                           for k in changed)
    assert any(line.startswith("after: ROC-AUC") for line in said)
    assert featx.load(done.path).sidecar.method.label.endswith("adapted by adabn")
    assert "target" in featx.load(done.path).info["metrics"]
    unlabelled = tmp_path / "waiting" / "unlabelled"
    shutil.copytree(site / "NORMAL", unlabelled)
    said = []
    featx.adapt_batchnorm(tuned, unlabelled.parent, log=said.append)
    assert any("cannot be checked" in line for line in said)
    assert "is a head on frozen features" in one_line_error(run("adapt", "--model", model, "--target", site))
    said = one_line_error(run("adapt", "--model", tuned, "--target", data / "train"))
    assert "are train images of the training data" in said
