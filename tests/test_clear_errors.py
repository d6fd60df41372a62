"""The last tracebacks and misleading words (issue 23, items 7, 10, 12, 13, 14): one true line each."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

import featx
from featx.cli import main

from conftest import TINY, final_error, make_folder, one_line_error, toy_features, write_store

ARGS = ["--weights", "random", "--workers", "0", "--no-progress"]
VIT = "timm:test_vit"  # 16-px patches


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_a_vit_size_that_is_not_a_multiple_of_its_patch_is_one_line(folder):
    for command in (["extract"], ["finetune", "--val-fraction", "0.34", "--epochs", "1"]):
        line = one_line_error(run(*command, "--data", folder, "--backbone", VIT, *ARGS, "--image-size", "100"))
        assert "--image-size 100: timm:test_vit cuts images into 16-px patches" in line and "96 or 112" in line
    assert run("extract", "--data", folder, "--backbone", VIT, *ARGS, "--image-size", "96").exit_code == 0


def test_a_text_file_as_weights_is_named_as_such(folder, tmp_path):
    text = tmp_path / "weights.pth"
    text.write_text("Weights only load failed, said the file\n")
    line = one_line_error(run("extract", "--data", folder, "--backbone", TINY, "--weights", text, "--workers", "0"))
    assert line == (f"Error: {text} is not a PyTorch or safetensors file (it starts with 'Weights only loa'); "
                    "--weights takes a state_dict (.pth, .pt, .bin), a .safetensors file or a Hugging Face model folder")


def test_pool_avg_on_a_cnn_is_refused_as_the_readme_says(folder):
    line = one_line_error(run("extract", "--data", folder, "--backbone", TINY, *ARGS, "--pool", "avg"))
    assert "--pool avg applies to token models (ViTs); timm:test_efficientnet is a CNN" in line
    assert run("extract", "--data", folder, "--backbone", TINY, *ARGS).exit_code == 0
    fitted = run("fit", "--data", folder, "--backbone", TINY, "--weights", "random", "--pool", "avg")
    assert "--pool avg applies to token models" in fitted.output.strip().splitlines()[-1]  # not the avg cache


@pytest.mark.parametrize("labels, patients", [([0, 0, 1, 1, 1, 1], "NORMAL 1, PNEUMONIA 1"),
                                               ([0, 1, 1, 1, 1, 1], "NORMAL 1, PNEUMONIA 2")])
def test_validation_without_a_class_and_too_few_train_patients_says_both(tmp_path, labels, patients):
    X, _ = toy_features(6)  # patients: rows 0-1, 2-3 in train; rows 4-5 (PNEUMONIA) in val
    store = write_store(tmp_path / "few.h5", X, np.array(labels), ["train"] * 4 + ["val"] * 2)
    line = final_error(run("fit", "--features", store.path, "--models", tmp_path / "m"))
    assert "the val split has no NORMAL images, so it cannot rank hyperparameters" in line
    assert f"too few patient groups per class for group CV instead (patients per class: {patients};" in line
    assert "no validation split" not in line


def test_compare_says_where_it_looked_and_how_to_include_a_run_saved_elsewhere(tmp_path):
    data = make_folder(tmp_path / "data", 6)
    run_folder = tmp_path / "runs" / "lite"
    tuned = run("finetune", "--data", data, "--backbone", TINY, *ARGS, "--image-size", "64", "--epochs", "1",
                "--val-fraction", "0.34", "--out", run_folder)
    assert tuned.exit_code == 0, tuned.output
    line = one_line_error(run("compare", "--data", data, "--split", "val", "--no-report"))
    assert "looked for heads, *.skops or *.joblib, and fine-tune run folders, */model.pt" in line
    assert "--models set to the folder that holds DIR" in line
    found = run("compare", "--data", data, "--split", "val", "--no-report", "--models", run_folder.parent)
    assert found.exit_code == 0 and "fine-tune" in found.output
    assert featx.compare(data, split="val", models_dir=run_folder.parent)[0]["kind"] == "finetune"
