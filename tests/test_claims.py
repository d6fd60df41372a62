"""Every sentence featx writes is true of its own model and data: the card's patients, the group pattern that
finds none, study options checked once before any work (CLI, API and study file alike), study units stored
as computed with their training images, a dry run that fixes nothing, one head-list syntax, and the
refusals of export targets and sidecars that name other files or formats."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import featx
from featx.cli import main

from conftest import TINY, make_folder, one_line_error, save, xray_like

QUICK = ["--weights", "random", "--workers", "0"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# --- the model card's patients ------------------------------------------------------------------------

def test_a_card_states_the_patients_in_two_splits_of_given_folders(tmp_path):
    """Given train/test folders whose file-name patients recur in both: the card counts them and names one,
    instead of promising that a patient is never on both sides."""
    data = tmp_path / "data"
    make_folder(data, 6, split="train")
    for i in range(3):  # other images of three PNEUMONIA patients of train, and two new NORMAL patients
        save(data / "test" / "PNEUMONIA" / f"person{100 + i}_bacteria_{90 + i}.jpeg", xray_like(70 + i, bright=True),
             quality=90)
        save(data / "test" / "NORMAL" / f"IM-{2000 + i}-0001.jpeg", xray_like(80 + i), quality=90)
    assert run("extract", "--data", data, "--backbone", TINY, *QUICK, "--no-progress").exit_code == 0
    fitted = run("fit", "--data", data, "--backbone", TINY, "--weights", "random", "--head", "logreg")
    assert fitted.exit_code == 0, fitted.output
    card = Path(fitted.stdout.strip().splitlines()[-1]).with_suffix(".md").read_text()
    assert "never on both sides" not in card
    assert "**3 patients have images in two splits** (e.g. person100: train, test)" in card, card
    assert "no validation split" in card


def test_a_card_says_featx_cut_the_validation_split_by_patient(tmp_path):
    data = make_folder(tmp_path / "data", 8)
    assert run("extract", "--data", data, "--backbone", TINY, *QUICK, "--no-progress", "--val-fraction", "0.3"
               ).exit_code == 0
    fitted = run("fit", "--data", data, "--backbone", TINY, "--weights", "random", "--head", "logreg")
    card = Path(fitted.stdout.strip().splitlines()[-1]).with_suffix(".md").read_text()
    assert "cut from train by featx, whole patients on one side" in card and "no patient has images in two" in card
    assert "grouped by the pattern" in card and "8 patients" in card


def test_a_pattern_that_finds_no_patient_is_said_with_one_that_would(tmp_path):
    """NIH-style names (00001280_004.png) do not match the default pattern: every image would be its own
    patient. featx says so with an example and a pattern; with that pattern it says nothing and groups them."""
    data = tmp_path / "nih"
    for c, name in enumerate(("NORMAL", "PNEUMONIA")):
        for i in range(8):
            save(data / name / f"{1000 * (c + 1) + i // 2:08d}_{i % 2:03d}.png", xray_like(i + 10 * c, bright=bool(c)))
    said = run("extract", "--data", data, "--backbone", TINY, *QUICK, "--no-progress", "--val-fraction", "0.3")
    assert said.exit_code == 0, said.output
    assert "found no patient in 16 of 16 file names (e.g. 00001000_000.png)" in said.output
    assert r"--group-pattern REGEX" in said.output and r"suggest '^(\d{8})_'" in said.output
    plan = run("study", "--data", data, "--backbones", TINY, *QUICK, "--group-pattern", r"^(\d{8})_",
               "--val-fraction", "0.3", "--train-sizes", "all", "--dry-run", "--cache", tmp_path / "c2")
    assert plan.exit_code == 0, plan.output
    assert "found no patient" not in plan.output


def test_patients_in_two_classes_are_said(tmp_path):
    data = tmp_path / "d"
    for c, name in enumerate(("NORMAL", "PNEUMONIA")):
        for i in range(4):
            save(data / name / f"person{i}_x_{c}.jpeg", xray_like(i + 10 * c, bright=bool(c)), quality=90)
    said = run("extract", "--data", data, "--backbone", TINY, *QUICK, "--no-progress")
    assert "4 patient groups have images of two classes (e.g. person0: NORMAL, PNEUMONIA)" in said.output


# --- the study's options: one declaration, one line, before any work -----------------------------------

@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    make_folder(root, 8, split="train")
    make_folder(root, 4, split="test", start=40)
    return root


BAD = [({"seed": -1}, "--seed must be a whole number at least 0, not -1"),
       ({"repeats": "3"}, "--repeats must be a whole number at least 1, not '3'"),
       ({"repeats": 2.5}, "--repeats must be a whole number at least 1, not 2.5"),
       ({"finetune_options": {"ema": "high"}}, "--ema must be a number, not 'high'"),
       ({"n_boot": 5}, "--bootstrap must be a whole number at least 100, not 5"),
       ({"threshold": 1.5}, "--threshold must lie between 0 and 1, got 1.5"),
       ({"val_fraction": 1.5}, "--val-fraction must be a number above 0 and below 1, not 1.5")]


def _toml(key, value) -> str:
    if isinstance(value, dict):
        return f"[{key}]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in value.items())
    return f"{key} = {json.dumps(value)}"


@pytest.mark.parametrize("bad,said", BAD)
def test_bad_study_options_are_one_line_from_the_api_the_cli_and_a_study_file(data, tmp_path, bad, said):
    [(key, value)] = bad.items()
    with pytest.raises(featx.FeatxError, match=re.escape(said)):
        featx.study(data, backbones=[TINY], weights="random", out=tmp_path / "api", dry_run=True, **bad)
    study_file = tmp_path / "study.toml"
    study_file.write_text(f'data = "{data}"\nbackbones = ["{TINY}"]\nweights = "random"\n{_toml(key, value)}\n')
    assert said in one_line_error(run("study", "--config", study_file, "--dry-run", "--out", tmp_path / "f"))
    if key in ("seed", "n_boot", "threshold") or value == 2.5:
        flag = {"n_boot": "--bootstrap"}.get(key, f"--{key}")
        assert said in one_line_error(run("study", "--data", data, "--backbones", TINY, *QUICK, flag, value,
                                          "--dry-run", "--out", tmp_path / "c"))
    assert not (tmp_path / "api").exists() and not (tmp_path / "f").exists()
    assert not list(tmp_path.rglob("units"))  # nothing ran


def test_sizes_as_text_are_sizes_and_defaults_fit_the_pool(data, tmp_path):
    study_file = tmp_path / "study.toml"
    study_file.write_text(f'data = "{data}"\nbackbones = ["{TINY}"]\nweights = "random"\ntrain_sizes = "8,all"\n')
    planned = run("study", "--config", study_file, "--dry-run", "--out", tmp_path / "s")
    assert planned.exit_code == 0, planned.output
    assert "(8, all; 3 repeats)" in planned.output
    small = run("study", "--data", data, "--backbones", TINY, *QUICK, "--dry-run", "--out", tmp_path / "d")
    assert small.exit_code == 0, small.output  # a pool of 16: the default sizes below it, and all
    assert "budgets drawn from the 16 train images (all; 3 repeats)" in small.output
    whole = run("study", "--data", data, "--backbones", TINY, *QUICK, "--dry-run", "--train-sizes", "16,all",
                "--out", tmp_path / "w")
    assert "n=16 takes the whole pool of 16 images: one draw, not 3 identical repeats" in whole.output
    assert "fit timm:test_efficientnet + logreg n=16 x1" in whole.output
    budget = run("study", "--data", data, "--backbones", TINY, *QUICK, "--dry-run", "--budget", "1h30m",
                 "--out", tmp_path / "b")
    assert budget.exit_code == 0 and "no estimate on this machine" in budget.output, budget.output


def test_a_dry_run_writes_no_split(tmp_path):
    data = make_folder(tmp_path / "flat", 8)
    planned = run("study", "--data", data, "--backbones", TINY, *QUICK, "--val-fraction", "0.3",
                  "--train-sizes", "all", "--dry-run", "--cache", tmp_path / "cache", "--out", tmp_path / "s")
    assert planned.exit_code == 0, planned.output
    assert "not stored (a dry run)" in planned.output
    assert not list((tmp_path / "cache").rglob("split.json")) and not (tmp_path / "s").exists()


def test_study_units_keep_probabilities_as_computed_and_their_training_images(data, tmp_path):
    from sklearn.metrics import roc_auc_score

    records = featx.study(data, backbones=[TINY], heads=["logreg"], train_sizes=["all"], repeats=1, weights="random",
                          out=tmp_path / "s", workers=0, n_boot=100, log=lambda m: None).records
    [unit] = [json.loads(p.read_text()) for p in (tmp_path / "s" / "units").glob("*.json")]
    proba = np.asarray(unit["proba"])
    assert roc_auc_score(unit["y"], proba[:, 1]) == records[0]["roc_auc"]  # exactly: nothing rounded
    assert any(len(repr(v)) > 11 for v in proba[:, 1])  # more than 7 digits kept
    trained = unit["train_images"]
    assert len(trained["paths"]) == unit["n_images"] == len(trained["sha1"])
    assert all(p.startswith("train/") for p in trained["paths"])


def test_fit_takes_heads_as_study_does(data):
    fitted = run("fit", "--data", data, "--backbone", TINY, "--weights", "random", "--head", "logreg,knn")
    assert fitted.exit_code == 0, fitted.output
    assert len([l for l in fitted.stdout.splitlines() if l.endswith(".skops")]) == 2
    assert "unknown head 'svm2'" in one_line_error(run("fit", "--data", data, "--backbone", TINY, "--weights",
                                                       "random", "--head", "logreg,svm2"))


# --- sidecars name only their own files, in their own format ---------------------------------------------

@pytest.fixture
def head(data):
    fitted = run("fit", "--data", data, "--backbone", TINY, "--weights", "random", "--head", "logreg")
    assert fitted.exit_code == 0, fitted.output
    return Path(fitted.stdout.strip().splitlines()[-1])


def _rewrite(artifact: Path, **changes) -> None:
    from featx.artifacts.format import sidecar_digest

    side = artifact.with_suffix(".json")
    info = {**json.loads(side.read_text()), **changes}
    info["sidecar_sha256"] = sidecar_digest(info)
    side.write_text(json.dumps(info))


def test_a_format_1_sidecar_cannot_describe_a_skops_head(head, data):
    info = json.loads(head.with_suffix(".json").read_text())
    info.update(format=1, classes=info["classes"][::-1], threshold=1e-6)
    info.pop("sidecar_sha256")
    head.with_suffix(".json").write_text(json.dumps(info))
    image = next((data / "test" / "NORMAL").iterdir())
    said = one_line_error(run("predict", "--model", head, image))
    assert "says artifact format 1, which never described a skops file" in said


def test_a_sidecar_naming_a_file_elsewhere_is_refused(head, data):
    _rewrite(head, file="../../etc/passwd")
    image = next((data / "test" / "NORMAL").iterdir())
    assert "names only plain files in its own folder" in one_line_error(run("predict", "--model", head, image))


def test_a_deeply_nested_skops_file_is_one_line(head, data):
    """A crafted skops file whose schema nests past Python's recursion limit, with a sidecar that matches it."""
    import hashlib
    import zipfile

    with zipfile.ZipFile(head, "w") as archive:
        archive.writestr("schema.json", "[" * 100_000 + "]" * 100_000)
    _rewrite(head, sha256=hashlib.sha256(head.read_bytes()).hexdigest())
    image = next((data / "test" / "NORMAL").iterdir())
    assert "nested too deeply" in one_line_error(run("predict", "--model", head, image))


@pytest.mark.slow
def test_a_fine_tuned_leader_s_card_names_the_rows_the_study_chose_it_by(tmp_path):
    """Evaluated on the dataset's val split, a fine-tune unit calls those images its test split (its own val
    chose its epoch): its card says the choice was made on its test rows, the dataset's val split."""
    data = make_folder(tmp_path / "data", 10)
    featx.study(data, backbones=[], heads=[], finetune=[TINY], train_sizes=["all"], repeats=1, weights="random",
                val_fraction=0.3, finetune_options={"epochs": 1, "image_size": 64}, out=tmp_path / "s", workers=0,
                finetune_recipes={"plain": {}, "ema": {"ema": 0.9}}, n_boot=100, log=lambda m: None)
    [text] = [c.read_text() for c in (tmp_path / "s" / "finetunes").glob("*/model.md") if "chose this model" in
              c.read_text()]
    assert "by their ROC-AUC on the test split (the dataset's val split): that choice favoured it" in text
    assert "| test |" in text  # the rows that card calls test


def test_a_study_of_one_method_claims_no_choice(data, tmp_path):
    """One method at n=all: the evaluation split chose nothing, so neither the log nor the card says it did,
    and the verdict explains no p-value it does not give."""
    said = []
    result = featx.study(data, backbones=[TINY], heads=["logreg"], train_sizes=["all"], repeats=1,
                         weights="random", out=tmp_path / "s", workers=0, n_boot=100, log=said.append)
    line = next(s for s in said if " is saved as " in s)
    assert line.startswith(f"the study's only method at n=all, {TINY} + logreg") and "which chose nothing" in line
    assert "optimistic" not in line and not list((tmp_path / "s" / "models").glob("*.chosen.json"))
    assert "chose this model" not in result.leader.with_suffix(".md").read_text()
    assert result.verdict and not any(v.startswith("p: ") for v in result.verdict)
    both = featx.study(data, backbones=[TINY], heads=["logreg", "knn"], train_sizes=["all"], repeats=1,
                       weights="random", out=tmp_path / "s", workers=0, n_boot=100, log=lambda m: None)
    head = max(both.records, key=lambda r: r["roc_auc"])["method_id"].head  # the chosen head, alone: no choice
    again = featx.study(data, backbones=[TINY], heads=[head], train_sizes=["all"], repeats=1, weights="random",
                        out=tmp_path / "s", workers=0, n_boot=100, log=lambda m: None)
    assert again.leader == both.leader and not list((tmp_path / "s" / "models").glob("*.chosen.json"))
    assert "chose this model" not in again.leader.with_suffix(".md").read_text()


def test_the_study_leaves_its_leader_as_a_model_with_its_units_answers(data, tmp_path):
    """The leader at n=all is saved as a featx model (its card beside it) trained by the unit's own protocol:
    its evaluation probabilities are the unit's; it exports; a re-run reuses it."""
    said = []
    records = featx.study(data, backbones=[TINY], heads=["logreg", "knn"], train_sizes=["all"], repeats=1,
                          weights="random", out=tmp_path / "s", workers=0, n_boot=100, log=said.append).records
    leader = max(records, key=lambda r: r["roc_auc"])
    line = next(s for s in said if s.startswith("the leader at n=all"))
    path = Path(line.split(" is saved as ")[1].split(" with its model card")[0])
    assert path.is_file() and leader["method"] in line
    card = path.with_suffix(".md").read_text()  # the study's choice by the evaluation split, said on the card
    assert "chose this model as its leader among 2 methods by their ROC-AUC on the test split" in card
    assert "never used for any choice" not in card
    saved = featx.load(path)
    from featx.artifacts.format import load_predictions

    test = load_predictions(path)["test"]
    order = np.argsort(test["path"], kind="stable")
    assert np.abs(np.asarray(test["proba"])[order] - np.asarray(leader["proba"])).max() <= 1e-9
    assert saved.threshold == leader["threshold"]
    stamp = path.stat().st_mtime_ns
    featx.study(data, backbones=[TINY], heads=["logreg", "knn"], train_sizes=["all"], repeats=1, weights="random",
                out=tmp_path / "s", workers=0, n_boot=100, log=lambda m: None)
    assert path.stat().st_mtime_ns == stamp
