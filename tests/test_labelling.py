"""Which images to label next and which labels look wrong: the strategies (nested, seeded, not fooled by a
cluster of duplicates, an uncertainty strategy finds the boundary), featx suggest on unlabelled images,
featx audit (flipped labels found, evaluation images never audited), --exclude, strategies in the study
(labels counted with the seed set, evaluation images never chosen, a killed study resumes to the same
units), and bad input in one line."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

import featx
from featx.cli import main
from featx.labelling.auditing import audit_arrays
from featx.labelling.strategies import choose, nested_selection

from conftest import TINY, make_folder, one_line_error

ARGS = ["--backbones", TINY, "--weights", "random", "--workers", "0", "--bootstrap", "100"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def blobs(n=120, seed=0):
    """Two classes in four clusters, with patients of two images."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (4, 6))
    k = np.arange(n) % 4
    X = centres[k] + rng.normal(0, 0.6, (n, 6))
    return X.astype(np.float32), (k % 2), np.array([f"p{i // 2}" for i in range(n)])


@pytest.mark.parametrize("strategy", ["typiclust", "coreset", "probcover", "margin", "badge", "random"])
def test_selections_are_nested_and_reproducible_per_seed(strategy):
    X, y, groups = blobs()

    def fit_proba(rows):
        from sklearn.linear_model import LogisticRegression
        return LogisticRegression().fit(X[rows], y[rows]).predict_proba(X)

    first = nested_selection(strategy, X, y, groups, [8, 16, 32], fit_proba=fit_proba, seed=3)
    again = nested_selection(strategy, X, y, groups, [8, 16, 32], fit_proba=fit_proba, seed=3)
    for n in (8, 16, 32):
        assert np.array_equal(first[n], again[n]) and len(set(first[n])) == len(first[n]) >= n
    assert set(first[8]) <= set(first[16]) <= set(first[32])
    for n, rows in first.items():  # two patients of each class, whatever the strategy chose
        assert all(len(set(groups[rows][y[rows] == c])) >= 2 for c in (0, 1))


@pytest.mark.parametrize("strategy", ["typiclust", "coreset"])
def test_a_cluster_of_duplicates_is_not_picked_five_times(strategy):
    X, _, _ = blobs(60)
    twins = np.repeat(X[:1] + 10, 30, axis=0) + np.random.default_rng(1).normal(0, 1e-3, (30, 6))
    X = np.concatenate([X, twins.astype(np.float32)])
    picks = choose(strategy, X, [], 8, seed=0)
    assert np.sum(picks.rows >= 60) <= 1, picks.rows


def test_an_uncertainty_strategy_picks_the_boundary():
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, (200, 2)).astype(np.float32)
    proba1 = 1 / (1 + np.exp(-8 * X[:, 0]))  # the boundary is x = 0
    proba = np.stack([1 - proba1, proba1], 1)
    for name in ("margin", "entropy"):
        picks = choose(name, X, [], 10, proba=proba)
        assert np.all(np.abs(X[picks.rows, 0]) < 0.1), X[picks.rows, 0]
        assert picks.why[0].startswith(("smallest margin", "highest entropy"))


def test_flipped_labels_are_found():
    X, y, groups = blobs(200, seed=2)
    X[:, :2] += 4 * y[:, None]  # separable classes
    flipped = np.array([3, 50, 91, 140, 177])
    noisy = y.copy()
    noisy[flipped] = 1 - noisy[flipped]
    found = audit_arrays(X, noisy, groups, [f"img{i}" for i in range(200)], ["NORMAL", "PNEUMONIA"])
    flagged = {int(p[3:]) for p in found.paths}
    assert set(flipped) <= flagged and len(flagged) <= 10, flagged
    assert found.rows()[0]["suggested"] != found.rows()[0]["given"]


@pytest.fixture
def waiting(tmp_path):
    """Labelled train and test images, and an unlabelled/ folder of six more."""
    root = tmp_path / "data"
    make_folder(root, 10, split="train")
    make_folder(root, 4, split="test", start=40)
    extra = make_folder(tmp_path / "extra", 3, start=60)
    (root / "unlabelled").mkdir()
    for f in sorted(extra.rglob("*.jpeg")):
        shutil.copy(f, root / "unlabelled" / f.name)
    return root


def test_suggest_ranks_unlabelled_images_and_labelling_them_feeds_fit(waiting, tmp_path):
    out = tmp_path / "suggest"
    done = run("suggest", "--data", waiting, "--backbone", TINY, "--weights", "random", "--k", "4", "--out", out)
    assert done.exit_code == 0, done.output
    rows = list(csv.DictReader(open(out / "suggestions.csv")))
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4"]
    assert all(r["path"].startswith("unlabelled/") and r["why"] for r in rows)
    assert (out / "suggestions.html").read_text().count("<img") == 4
    found = featx.suggest(waiting, TINY, k=3, strategy="margin", weights="random", out=tmp_path / "m")
    assert found.proba.shape == (3, 2) and "p(PNEUMONIA)" in found.rows()[0]
    # label one suggestion: move it into its class folder; fit then trains on it with no other step
    shutil.move(waiting / rows[0]["path"], waiting / "train" / "NORMAL" / "IM-0999-0001.jpeg")
    fitted = featx.fit(data=waiting, backbone=TINY, weights="random", log=lambda m: None)[0]
    assert fitted.metrics["train"]["n"] == 21


def test_suggest_refuses_in_one_line(waiting, tmp_path):
    base = ["suggest", "--backbone", TINY, "--weights", "random", "--out", tmp_path / "s"]
    assert "no unlabelled images" in one_line_error(run(*base, "--data", make_folder(tmp_path / "plain")))
    assert "more than the 6 unlabelled images" in one_line_error(run(*base, "--data", waiting, "--k", "7"))
    assert "must be one of" in one_line_error(run(*base, "--data", waiting, "--strategy", "magic"))
    cold = tmp_path / "cold"
    shutil.copytree(waiting / "unlabelled", cold / "unlabelled")
    said = one_line_error(run(*base, "--data", cold, "--strategy", "margin"))
    assert "no image has a label yet" in said and "typiclust" in said
    assert run(*base, "--data", cold, "--k", "2").exit_code == 0  # cold start works without any label
    manifest = tmp_path / "m.csv"
    paths = sorted(p.relative_to(waiting) for p in waiting.rglob("*.jpeg"))
    lines = ["path,label"] + [f"{waiting / p},{'PNEUMONIA' if 'train/PNEUMONIA' in str(p) else ''}" for p in paths]
    manifest.write_text("\n".join(lines) + "\n")
    said = one_line_error(run(*base, "--data", manifest, "--strategy", "margin"))
    assert "only PNEUMONIA has labels yet" in said


def test_audit_never_reads_evaluation_images_and_exclude_trains_without_flags(tmp_path):
    root = tmp_path / "data"
    make_folder(root, 12, split="train")
    make_folder(root, 4, split="test", start=40)
    test_image = next((root / "test" / "NORMAL").glob("*.jpeg"))
    shutil.move(test_image, root / "test" / "PNEUMONIA" / test_image.name)  # a wrong label, in test
    out = tmp_path / "audit"
    done = run("audit", "--data", root, "--backbone", TINY, "--weights", "random", "--folds", "3", "--out", out)
    assert done.exit_code == 0, done.output
    rows = list(csv.DictReader(open(out / "audit.csv")))
    assert all(r["path"].startswith("train/") for r in rows)
    (tmp_path / "ex.txt").write_text("train/NORMAL/IM-1000-0001.jpeg\n")
    fitted = featx.fit(data=root, backbone=TINY, weights="random", exclude=tmp_path / "ex.txt", log=lambda m: None)[0]
    assert fitted.metrics["train"]["n"] == 23
    sidecar = json.loads(fitted.artifact.with_suffix(".json").read_text())
    assert sidecar["excluded"]["images"] == 1
    assert "1 train images named by `ex.txt`" in fitted.artifact.with_suffix(".md").read_text()
    base = ["fit", "--data", root, "--backbone", TINY, "--weights", "random", "--exclude"]
    (tmp_path / "bad.txt").write_text("train/NORMAL/nope.jpeg\n")
    assert "not images of this data" in one_line_error(run(*base, tmp_path / "bad.txt"))
    (tmp_path / "judged.txt").write_text(f"test/PNEUMONIA/{test_image.name}\n")
    assert "only train images can be excluded" in one_line_error(run(*base, tmp_path / "judged.txt"))


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "study-data"
    make_folder(root, 24, split="train")
    make_folder(root, 4, split="test", start=60)
    return root


def test_study_strategies_count_every_label_and_never_choose_evaluation_images(data, tmp_path):
    out = tmp_path / "st"
    done = run("study", "--data", data, *ARGS, "--train-sizes", "12,24,all", "--repeats", "2",
               "--strategies", "random,typiclust,margin", "--out", out)
    assert done.exit_code == 0, done.output
    assert "strategy margin: nested rounds" in done.output and "first 12 by typiclust" in done.output
    records = {(r["method"], r["n"], r["repeat"]): r for r in csv.DictReader(open(out / "study.csv"))}
    assert any(m.endswith("margin labels") for m, _, _ in records)
    units = [json.loads(p.read_text()) for p in (out / "units").glob("*.json")]
    test_paths = {str(p.relative_to(data)) for p in (data / "test").rglob("*.jpeg")}
    for unit in units:
        assert not set(unit["train_images"]["paths"]) & test_paths
        assert unit["n_images"] == len(unit["train_images"]["paths"])  # every label seen, seed set included
    chosen = [json.loads(p.read_text()) for p in (out / "selections").glob("*.json")]
    assert chosen and all(set(c["12"]) <= set(c["24"]) for c in chosen)
    assert "Labels saved" in done.output


@pytest.mark.slow
def test_a_killed_strategy_study_resumes_to_identical_units(data, tmp_path, monkeypatch):
    from featx.studies import label_curves

    args = ["study", "--data", data, *ARGS, "--train-sizes", "8,16", "--repeats", "1", "--strategies", "coreset,margin"]
    fits, real_fit = [], label_curves.Curve.fit

    def dies_in_third_fit(self, budget):
        fits.append(budget.n)
        if len(fits) == 3:
            raise KeyboardInterrupt
        return real_fit(self, budget)

    monkeypatch.setattr(label_curves.Curve, "fit", dies_in_third_fit)
    assert run(*args, "--out", tmp_path / "a").exit_code != 0
    monkeypatch.setattr(label_curves.Curve, "fit", real_fit)
    assert run(*args, "--out", tmp_path / "a").exit_code == 0
    assert run(*args, "--out", tmp_path / "b").exit_code == 0

    def units(folder):
        found = {}
        for p in (folder / "units").glob("*.json"):
            r = json.loads(p.read_text())
            found[p.name] = (r["train_images"]["images_sha256"], r["roc_auc"], r["proba"])
        return found

    assert units(tmp_path / "a") == units(tmp_path / "b") and len(units(tmp_path / "a")) == 4


def test_study_exclude_adds_a_flagged_removed_curve_and_bad_strategies_are_one_line(data, tmp_path):
    (tmp_path / "flags.txt").write_text("train/NORMAL/IM-1000-0001.jpeg\ntrain/NORMAL/IM-1000-0002.jpeg\n")
    out = tmp_path / "ex"
    done = run("study", "--data", data, *ARGS, "--train-sizes", "16,all", "--repeats", "1", "--exclude",
               tmp_path / "flags.txt", "--out", out)
    assert done.exit_code == 0, done.output
    cleaned = [r for r in csv.DictReader(open(out / "study.csv")) if r["method"].endswith("flagged removed")]
    assert {r["n"] for r in cleaned} == {"16", "all"}
    assert [r["n_images"] for r in cleaned if r["n"] == "all"] == ["46"]
    only = run("study", "--data", data, *ARGS, "--train-sizes", "16,all", "--repeats", "1", "--strategies", "coreset",
               "--exclude", tmp_path / "flags.txt", "--out", tmp_path / "only")  # the cleaned curve alone has n=all
    assert only.exit_code == 0, only.output
    card = next((tmp_path / "only" / "models").glob("*.md")).read_text()
    assert "2 train images named by `flags.txt`" in card
    assert "is not a strategy" in one_line_error(run("study", "--data", data, *ARGS, "--strategies", "nope"))
    said = one_line_error(run("study", "--data", data, *ARGS, "--strategies", "typiclust", "--finetune", "resnet18"))
    assert "add resnet18 to --backbones" in said


def test_copies_are_never_suggested_and_labelling_beside_copies_still_feeds_fit(waiting, tmp_path):
    """An unlabelled file with a labelled image's bytes is not suggested (nor refused as a leak); with
    byte-identical copies inside train, labelling an image still updates the cache without a refusal."""
    train_image = next((waiting / "train" / "NORMAL").glob("*.jpeg"))
    shutil.copy(train_image, waiting / "unlabelled" / "copy-of-train.jpeg")
    shutil.copy(train_image, waiting / "train" / "NORMAL" / "IM-0998-0001.jpeg")  # a copy within train
    found = featx.suggest(waiting, TINY, k=6, weights="random", out=tmp_path / "s")
    assert "unlabelled/copy-of-train.jpeg" not in found.paths and "same bytes as a labelled one" in found.notes[0]
    with pytest.raises(featx.FeatxError, match="more than the 6 unlabelled images featx can suggest.*1 copy"):
        featx.suggest(waiting, TINY, k=7, weights="random", out=tmp_path / "s")
    moved = found.paths[0]
    shutil.move(waiting / moved, waiting / "train" / "PNEUMONIA" / "person999_bacteria_1.jpeg")
    said = []
    fitted = featx.fit(data=waiting, backbone=TINY, weights="random", log=said.append)[0]
    assert fitted.metrics["train"]["n"] == 22 and any("got their label" in line for line in said), said
