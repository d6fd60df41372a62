"""featx study: the plan first, one saved unit per fit or fine-tune (a killed study resumes, a re-run computes
nothing, `--unit K` then a gather equals one run), the study file, the evaluation split untouched by every
choice, n = all as featx fit and featx finetune give it, the outputs, and bad input in one line."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

import featx
from featx.cli import main
from featx.artifacts.sidecar import MethodId
from featx.studies.label_curves import COLUMNS
from featx.studies.recipes import gain_lines, recipe_gains

from conftest import TINY, final_error, make_folder, one_line_error

ARGS = ["--backbones", TINY, "--weights", "random", "--workers", "0", "--bootstrap", "100"]
TUNE = ["--finetune", TINY, "--finetune-epochs", "2", "--finetune-image-size", "64"]
QUIET = {"log": lambda m: None}


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def rows_of(path):
    """study.csv without the timings, which differ between runs."""
    return [{k: v for k, v in r.items() if k not in ("train_seconds", "images_per_second")}
            for r in csv.DictReader(open(path))]


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    make_folder(root, 16, split="train")
    make_folder(root, 4, split="test", start=40)
    return root


def test_the_plan_comes_first_and_a_rerun_computes_nothing(data, tmp_path):
    out = tmp_path / "study"
    args = ["study", "--data", data, *ARGS, "--heads", "logreg,knn", "--train-sizes", "16,all", "--repeats", "2",
            "--out", out]
    planned = run(*args, "--dry-run")
    assert planned.exit_code == 0, planned.output
    assert "unit 1-2" in planned.output and "fit timm:test_efficientnet + knn n=16 x2" in planned.output
    assert "1 extraction(s), 6 fits, 0 fine-tunes" in planned.output and "the 8 test images" in planned.output
    assert not out.exists()  # the plan computes nothing
    first = run(*args)
    assert first.exit_code == 0, first.output
    assert "6 of 6 units computed now" in first.output
    rows = list(csv.DictReader(open(out / "study.csv")))
    assert tuple(rows[0]) == COLUMNS and len(rows) == 6  # n = all is drawn once: every repeat would be the same
    assert {r["method"] for r in rows} == {f"{TINY} + logreg", f"{TINY} + knn"}
    assert (out / "learning_curves.png").stat().st_size > 10_000
    assert "Verdict" in (out / "report.md").read_text() and "learning_curves.png" in (out / "report.md").read_text()
    assert "Labels needed" in first.output and "as featx compare shows it" in first.output
    assert max(len(line) for line in first.stdout.splitlines() if str(tmp_path) not in line) <= 100  # a terminal's
    again = run(*args)
    assert "0 of 6 units computed now" in again.output and "7 units (7 done)" in again.output
    assert list(csv.DictReader(open(out / "study.csv"))) == rows
    more = run(*args[:-6], "--train-sizes", "16,24,all", "--repeats", "2", "--out", out)  # one size added
    assert "4 of 10 units computed now" in more.output, more.output
    replay = run("study", "--config", out / "study.toml", "--out", out, "--workers", "0")  # the study file it wrote
    assert replay.exit_code == 0 and "0 of 10 units computed now" in replay.output, replay.output


def test_the_api_returns_what_the_cli_prints(data, tmp_path):
    """featx.study returns the study's answer as values (each record's MethodId, the verdict, the tables) and
    a notebook view with the curves; the CLI on the same folder prints those very lines, computing nothing."""
    out = tmp_path / "study"
    result = featx.study(data, backbones=[TINY], heads=["logreg", "knn"], train_sizes=[16, "all"], repeats=2,
                         weights="random", out=out, workers=0, n_boot=100, cache_dir=tmp_path / "cache", **QUIET)
    assert isinstance(result, featx.StudyResult) and result.split == "test" and result.complete
    assert {r["method_id"] for r in result.records} == {MethodId(TINY, "logreg"), MethodId(TINY, "knn")}
    assert result.verdict and result.verdict[0].startswith("n=16 (") and (out / "report.html").is_file()
    html = result._repr_html_()
    assert "data:image/png;base64," in html and "Labels needed" in html and "<style" not in html  # no page styles
    cli = run("study", "--config", out / "study.toml", "--out", out, "--cache", tmp_path / "cache", "--workers", "0")
    assert cli.exit_code == 0 and "0 of 6 units computed now" in cli.output, cli.output
    assert "\n".join(result.lines()) in cli.stdout


@pytest.mark.slow
def test_a_killed_study_resumes_and_units_gather_to_one_run(data, tmp_path, monkeypatch):
    """Killed in its second fit, then in a fine-tune's second epoch: the re-run computes only the rest, the
    fine-tune goes on from its last epoch, and the result equals a study run unit by unit, then gathered."""
    from featx.finetuning import runner
    from featx.studies import label_curves

    args = ["study", "--data", data, *ARGS, *TUNE, "--heads", "logreg", "--train-sizes", "16,all", "--repeats", "1"]
    fits, real_fit = [], label_curves.Curve.fit

    def dies_in_second_fit(self, budget, **where):
        fits.append(budget.n)
        if len(fits) == 2:
            raise KeyboardInterrupt
        return real_fit(self, budget, **where)

    monkeypatch.setattr(label_curves.Curve, "fit", dies_in_second_fit)
    killed = run(*args, "--out", tmp_path / "a")
    assert killed.exit_code != 0 and len(list((tmp_path / "a" / "units").glob("*.json"))) == 1
    monkeypatch.setattr(label_curves.Curve, "fit", real_fit)
    epochs, real_epoch = [], runner._epoch

    def dies_in_second_epoch(run_, epoch, *rest):
        epochs.append(epoch)
        if len(epochs) == 2:
            raise KeyboardInterrupt
        return real_epoch(run_, epoch, *rest)

    monkeypatch.setattr(runner, "_epoch", dies_in_second_epoch)
    killed = run(*args, "--out", tmp_path / "a")
    assert killed.exit_code != 0 and "epoch 1/2" in killed.output and "epoch 2/2" not in killed.output
    monkeypatch.setattr(runner, "_epoch", real_epoch)
    resumed = run(*args, "--out", tmp_path / "a")
    assert resumed.exit_code == 0, resumed.output
    assert "2 of 4 units computed now" in resumed.output and "resuming after epoch 1" in resumed.output

    plan = run(*args, "--out", tmp_path / "b", "--dry-run")
    n_units = int(plan.output.split("plan: ")[1].split(" units")[0])
    for k in range(n_units):
        one = run(*args, "--out", tmp_path / "b", "--unit", k)
        assert one.exit_code == 0 and f"unit {k} done" in one.output, one.output
    gathered = run(*args, "--out", tmp_path / "b")
    assert "0 of 4 units computed now" in gathered.output, gathered.output
    assert rows_of(tmp_path / "a" / "study.csv") == rows_of(tmp_path / "b" / "study.csv")
    assert "this study has units 0 to 4" in one_line_error(run(*args, "--out", tmp_path / "b", "--unit", 5))


@pytest.mark.slow
def test_the_evaluation_split_enters_no_choice(data, tmp_path):
    """Shuffle the evaluation split's labels: every chosen parameter, threshold and epoch stays the same."""
    options = dict(backbones=[TINY], heads=["logreg", "knn"], finetune=[TINY], train_sizes=[16, "all"], repeats=2,
                   weights="random", threshold="youden", finetune_options={"epochs": 2, "image_size": 64}, workers=0,
                   n_boot=100)
    before = featx.study(data, out=tmp_path / "a", cache_dir=tmp_path / "cache", **options, **QUIET).records
    rng = np.random.default_rng(0)
    for image in sorted((data / "test").rglob("*.jpeg")):  # each test image to a random class
        image.rename(data / "test" / ["NORMAL", "PNEUMONIA"][rng.integers(2)] / image.name)
    after = featx.study(data, out=tmp_path / "b", cache_dir=tmp_path / "cache", **options, **QUIET).records
    chosen = lambda records: [(r["method"], r["n"], r["repeat"], r["params"], r["threshold"]) for r in records]  # noqa: E731
    assert chosen(before) == chosen(after)
    assert [r["y"] for r in before] != [r["y"] for r in after]  # the labels did change


@pytest.mark.slow
def test_n_all_is_what_fit_and_finetune_give(data, tmp_path, monkeypatch):
    import featx.data.datasets as datasets
    import featx.data.files as files

    listed, hashed = [], []
    from_folders, sha1_of_files = datasets._from_folders, files.sha1_of_files

    def listing(root):
        listed.append(root)
        return from_folders(root)

    def hashing(paths, *args, **kwargs):
        hashed.append(list(paths))
        return sha1_of_files(hashed[-1], *args, **kwargs)

    monkeypatch.setattr(datasets, "_from_folders", listing)
    monkeypatch.setattr(files, "sha1_of_files", hashing)
    records = featx.study(data, backbones=[TINY], heads=["logreg"], finetune=[TINY], train_sizes=["all"], repeats=1,
                          weights="random", finetune_options={"epochs": 2, "image_size": 64, "augment": "none"},
                          out=tmp_path / "s", workers=0, n_boot=100, **QUIET).records
    monkeypatch.undo()
    assert len(listed) == 1  # one listing of the data, handed to the extraction and the fine-tune
    every = [str(p) for paths in hashed for p in paths]
    assert every and len(every) == len(set(every))  # each image's bytes hashed once
    head, tuned = records
    [fitted] = featx.fit(data=data, backbone=TINY, weights="random", head="logreg", **QUIET)
    assert head["params"] == fitted.params
    assert head["roc_auc"] == pytest.approx(fitted.metrics["test"]["roc_auc"])
    # featx finetune on a manifest of the fine-tune's own train and validation images and the test split
    budget = json.loads((tmp_path / "s" / "finetunes" / tuned["artifact"].split("/")[-2] / "budget.json").read_text())
    manifest = data.parent / "manifest.csv"
    split_of = {p: s for s, paths in budget.items() for p in paths}
    split_of.update({str(p.relative_to(data)): "test" for p in (data / "test").rglob("*.jpeg")})
    with open(manifest, "w") as f:
        f.write("path,label,split\n")
        for path in sorted(split_of):
            f.write(f"data/{path},{path.split('/')[1]},{split_of[path]}\n")
    direct = featx.finetune(manifest, TINY, weights="random", epochs=2, image_size=64, augment="none", workers=0,
                            progress=False, out_dir=tmp_path / "direct", cache_dir=tmp_path / "c2", **QUIET)
    assert tuned["params"]["best_epoch"] == direct.best_epoch
    assert tuned["roc_auc"] == pytest.approx(direct.metrics["test"]["roc_auc"])
    assert tuned["balanced_accuracy"] == pytest.approx(direct.metrics["test"]["balanced_accuracy"])


def test_bad_input_is_one_line(data, tmp_path):
    assert "unknown backbone" in one_line_error(run("study", "--data", data, "--backbones", "resnet5O"))
    assert "unknown head" in one_line_error(run("study", "--data", data, *ARGS, "--heads", "svm2"))
    assert "larger than the pool of 32" in one_line_error(
        run("study", "--data", data, *ARGS, "--train-sizes", "500", "--out", tmp_path / "s"))
    assert "needs at least 2" in one_line_error(
        run("study", "--data", data, *ARGS, "--train-sizes", "3", "--out", tmp_path / "s"))
    no_eval = make_folder(tmp_path / "flat", 4)
    assert "no test split" in one_line_error(run("study", "--data", no_eval, *ARGS, "--eval-split", "test"))
    assert "is not one of --train-sizes" in one_line_error(
        run("study", "--data", data, *ARGS, *TUNE, "--train-sizes", "16", "--finetune-sizes", "8"))
    study_file = tmp_path / "study.toml"
    for text, said in [('backbones = ["resnet5O"]', "unknown backbone"), ('heads = ["svm2"]', "unknown head"),
                       ('backbone = "resnet50"', "unknown study key 'backbone'"), ("heads = [", "not a valid TOML"),
                       ('[finetune_options]\nepoch = 3', "unknown fine-tune option 'epoch'")]:
        study_file.write_text(f'data = "{data}"\n{text}\n')
        assert said in one_line_error(run("study", "--config", study_file)), text
    over = run("study", "--data", data, *ARGS, *TUNE, "--train-sizes", "16", "--out", tmp_path / "s", "--budget", "0.01s")
    assert "over --budget 0 s" in final_error(over) and not (tmp_path / "s").exists()  # after the plan
    assert "not a time" in one_line_error(run("study", "--data", data, *ARGS, "--budget", "soon"))


@pytest.mark.slow
def test_fine_tune_recipes_are_methods_whose_gains_have_intervals(data, tmp_path):
    """Named recipes are one method each; a unit is named by its options, so the plain study's fine-tune is
    the recipe study's 'plain' unit (computed once); the gain of each recipe over the first has an interval."""
    common = dict(backbones=[], heads=[], finetune=[TINY], train_sizes=["all"], repeats=1, weights="random",
                  finetune_options={"epochs": 2, "image_size": 64}, workers=0, n_boot=100, out=tmp_path / "s",
                  cache_dir=tmp_path / "cache")
    featx.study(data, **common, **QUIET)
    said = []
    records = featx.study(data, **common, finetune_recipes={"plain": {}, "ema": {"ema": 0.9}}, log=said.append).records
    assert [r["method"] for r in records] == [f"{TINY} fine-tune [64 px] (recipe plain)",
                                                  f"{TINY} fine-tune [64 px, EMA 0.9] (recipe ema)"]
    assert any("1 of 2 units computed now" in line for line in said)
    assert records[1]["params"]["ema"] == 0.9
    out_toml = tmp_path / "s" / "study.toml"
    assert "[finetune_recipes.ema]\nema = 0.9" in out_toml.read_text()

    [gain] = recipe_gains(records)
    assert gain["recipe"].endswith("(recipe ema)") and gain["baseline"].endswith("(recipe plain)")
    assert gain["gain"] == pytest.approx(records[1]["roc_auc"] - records[0]["roc_auc"])
    assert gain["low"] <= gain["gain"] <= gain["high"]
    assert gain_lines([gain])[0].startswith(f"n=all: {records[1]['method']} vs {records[0]['method']}: ROC-AUC")
    cli = run("study", "--config", out_toml, "--out", tmp_path / "s", "--cache", tmp_path / "cache", "--workers", "0")
    assert cli.exit_code == 0 and "0 of 2 units computed now" in cli.output, cli.output
    assert gain_lines([gain])[0].split(" [")[0] in cli.output  # the gain is in the study's verdict


def test_a_bad_recipe_is_one_line(data, tmp_path):
    toml = tmp_path / "s.toml"
    toml.write_text(f'data = "{data}"\nfinetune = ["{TINY}"]\n\n[finetune_recipes.fast]\nepoch = 1\n')
    assert "unknown fine-tune option 'epoch' in recipe 'fast'" in one_line_error(run("study", "--config", toml))


def test_a_recipe_gain_interval_excludes_zero_only_for_a_real_gain():
    """Synthetic scores on 400 shared images, 3 repeats: a recipe that adds signal gains with an interval
    above zero; one that only adds noise of the same size does not, and its interval holds its gain."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)

    def unit(recipe, repeat, signal):
        method = MethodId.finetune(TINY, {}, recipe=recipe)
        score = 1 / (1 + np.exp(-(signal * (2 * y - 1) + rng.normal(0, 1, 400))))
        auc = float(np.mean([(a > b) for a in score[y == 1] for b in score[y == 0]]))
        return {"method": method.label, "method_id": method,
                "n": 100, "repeat": repeat, "roc_auc": auc, "train_seconds": 1.0,
                "eval_images": "same", "y": y.tolist(), "proba": np.c_[1 - score, score].tolist()}

    base, better, same = (f"{TINY} fine-tune (recipe {name})" for name in ("base", "better", "same"))
    records = [unit(r, k, s) for k in range(3) for r, s in (("base", 0.5), ("better", 1.5), ("same", 0.5))]
    gains = {g["recipe"]: g for g in recipe_gains(records)}
    assert gains[better]["low"] > 0.1
    assert gains[same]["low"] < gains[same]["gain"] < gains[same]["high"] and gains[same]["low"] < 0 < gains[same]["high"]

