"""featx study, heads so far: the plan first, one unit per fit saved as it finishes, a re-run computes
nothing, the outputs (study.csv, learning curves), and bad input in one line."""

from __future__ import annotations

import csv

import pytest
from click.testing import CliRunner

import featx
from featx.cli import main
from featx.studies.label_curves import COLUMNS

from conftest import TINY, make_folder, one_line_error

ARGS = ["--backbones", TINY, "--weights", "random", "--workers", "0"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


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
    assert "2 heads x 2 sizes x 2 repeats = 8 fits" in planned.output and "the 8 test images" in planned.output
    assert not out.exists()  # the plan computes nothing
    first = run(*args)
    assert first.exit_code == 0, first.output
    assert "8 of 8 fits computed now" in first.output
    rows = list(csv.DictReader(open(out / "study.csv")))
    assert tuple(rows[0]) == COLUMNS and len(rows) == 8
    assert {r["method"] for r in rows} == {f"{TINY} + logreg", f"{TINY} + knn"}
    assert (out / "learning_curves.png").stat().st_size > 10_000
    again = run(*args)
    assert "0 of 8 fits computed now" in again.output
    assert list(csv.DictReader(open(out / "study.csv"))) == rows
    more = run(*args[:-6], "--train-sizes", "16,24,all", "--repeats", "2", "--out", out)  # one size added
    assert "4 of 12 fits computed now" in more.output, more.output


def test_n_all_is_the_head_fit_chooses(data, tmp_path):
    records = featx.study(data, backbones=[TINY], heads=["logreg"], train_sizes=["all"], repeats=1, weights="random",
                          out=tmp_path / "s", workers=0, log=lambda m: None)
    [fitted] = featx.fit(data=data, backbone=TINY, weights="random", head="logreg", log=lambda m: None)
    assert records[0]["params"] == fitted.params
    assert records[0]["roc_auc"] == pytest.approx(fitted.metrics["test"]["roc_auc"])


def test_bad_input_is_one_line(data, tmp_path):
    assert "unknown backbone" in one_line_error(run("study", "--data", data, "--backbones", "resnet5O"))
    assert "unknown head" in one_line_error(run("study", "--data", data, *ARGS, "--heads", "svm2"))
    assert "larger than the pool of 32" in one_line_error(
        run("study", "--data", data, *ARGS, "--train-sizes", "500", "--out", tmp_path / "s"))
    no_eval = make_folder(tmp_path / "flat", 4)
    assert "no test split" in one_line_error(run("study", "--data", no_eval, *ARGS, "--eval-split", "test"))
