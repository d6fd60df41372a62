"""Typed identities (#24): the decode policy, weights, feature recipe and method are values, and the seams
that strings left are closed: DICOM rules per file, copied projects, the out-of-core heatmap, 8-bit DICOM."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import featx
from featx.data.decode_policy import DICOM_RULES, DecodePolicy, check_window
from featx.data.corruptions import CORRUPTIONS

from conftest import TINY, make_folder, save, xray_like

QUICK = dict(weights="random", workers=0, progress=False)

windows = st.one_of(st.sampled_from(["default", "minmax"]),
                    st.tuples(st.floats(-1e9, 1e9, allow_nan=False),
                              st.floats(1e-6, 1e9, allow_nan=False)).map(lambda cw: check_window(f"{cw[0]},{cw[1]}")))
policies = st.builds(
    lambda mode, kind, window, corruption, dicom: DecodePolicy(mode, kind if mode == "device" else None, window,
                                                               DICOM_RULES if dicom else None, corruption),
    st.sampled_from(["pil", "pil-draft", "device"]), st.sampled_from(["cpu", "cuda", "mps"]), windows,
    st.one_of(st.none(), st.tuples(st.sampled_from(CORRUPTIONS), st.integers(1, 5))), st.booleans())


@given(policies)
def test_a_decode_policy_reads_back_as_itself(policy):
    if policy.dicom_rules is None:  # text of an older featx: no DICOM part, hence the default window
        policy = DecodePolicy(policy.mode, policy.device_kind, "default", None, policy.corruption)
    assert DecodePolicy.parse(policy.format()) == policy


def test_older_policy_texts_parse_and_a_window_written_with_an_exponent_stays_whole():
    assert DecodePolicy.parse("featx-decode-1") == DecodePolicy(dicom_rules=None)
    assert DecodePolicy.parse(None).mode == "pil" and DecodePolicy.parse("featx-decode-1+jpeg-draft").mode == "pil-draft"
    old = DecodePolicy.parse("featx-decode-1+torchvision-cuda+featx-dicom-1:1e+06,2e+06+featx-corrupt-1:zoom:3")
    assert (old.mode, old.device_kind, old.dicom_window, old.dicom_rules, old.corruption) == \
        ("device", "cuda", "1e+06,2e+06", "featx-dicom-1", ("zoom", 3))
    assert check_window("1000000,2000000") == "1e+06,2e+06"
    with pytest.raises(featx.FeatxError, match="unknown decode policy"):
        DecodePolicy.parse("featx-decode-9")


def _dicom(path, pixels, **tags):
    pytest.importorskip("pydicom")
    from test_dicom import write_dicom

    path.parent.mkdir(parents=True, exist_ok=True)
    write_dicom(path, pixels, **tags)
    return path


def test_an_8_bit_dicom_without_a_window_gives_the_pixels_of_the_same_png(tmp_path):
    from featx.data.images import load_image

    pixels = (xray_like(3) * 0.6 + 40).astype(np.uint8)  # 40..193: a min-max stretch would change every value
    dcm = load_image(_dicom(tmp_path / "a.dcm", pixels))
    png = load_image(save(tmp_path / "a.png", pixels))
    assert np.array_equal(np.asarray(dcm), np.asarray(png))
    stored16 = load_image(_dicom(tmp_path / "b.dcm", pixels.astype(np.uint16) * 16, bits_stored=12))
    assert np.asarray(stored16).max() == 255  # more bits than 8: still min-max


def test_one_dicom_file_added_to_a_jpeg_folder_is_the_only_row_computed(folder):
    said = []
    featx.extract(folder, TINY, **QUICK, log=said.append)
    _dicom(folder / "NORMAL" / "IM-0900-0001.dcm", xray_like(9))
    said.clear()
    store = featx.extract(folder, TINY, **QUICK, log=said.append)
    assert any(line.startswith("extracting 1 of 13 images") for line in said), said
    assert store.counts()["train"]["done"] == 13


def test_feature_extractor_reuses_a_cache_that_holds_dicom_files(folder):
    _dicom(folder / "NORMAL" / "IM-0900-0001.dcm", xray_like(9))
    store = featx.extract(folder, TINY, **QUICK, log=lambda m: None)
    paths = [folder / p for p in store.paths()]
    extractor = featx.FeatureExtractor(TINY, weights="random", device="cpu")
    X = extractor.fit_transform(paths)
    assert extractor.n_cached_ == len(paths) and np.allclose(X, store.arrays()[0])


def test_robustness_runs_on_a_mixed_folder_whose_tested_split_has_no_dicom(tmp_path):
    data = tmp_path / "data"
    make_folder(data, 6, split="train")
    make_folder(data, 4, split="test", start=30)
    _dicom(data / "train" / "NORMAL" / "IM-0900-0001.dcm", xray_like(9))
    featx.extract(data, TINY, val_fraction=0.25, **QUICK, log=lambda m: None)
    featx.fit(data=data, backbone=TINY, weights="random", head="logreg", log=lambda m: None)
    result = featx.robustness(data, split="test", corruptions=["gaussian_noise"], severities=[1], workers=0,
                              progress=False, log=lambda m: None)
    assert {(r["corruption"], r["severity"]) for r in result.rows} == {("none", 0), ("gaussian_noise", 1)}


def _cli(cwd, monkeypatch, *args) -> str:
    """A featx command run from the project folder `cwd`, with its own cache/ folder."""
    from click.testing import CliRunner

    from featx.cli import main

    monkeypatch.chdir(cwd)
    monkeypatch.delenv("FEATX_CACHE_DIR", raising=False)
    done = CliRunner().invoke(main, [str(a) for a in args])
    assert done.exit_code == 0, done.output
    return done.output


def test_a_copied_project_keeps_its_caches_and_models(tmp_path, monkeypatch):
    project = tmp_path / "project"
    make_folder(project / "data")
    args = ["--backbone", TINY, "--data", "data", "--weights", "random", "--workers", "0", "--no-progress"]
    _cli(project, monkeypatch, "extract", *args, "--val-fraction", "0.34")
    fitted = _cli(project, monkeypatch, "fit", "--backbone", TINY, "--data", "data", "--weights", "random",
                  "--head", "logreg")
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(project, copy)
    shutil.rmtree(project)  # nothing of the original is left to be found
    again = _cli(copy, monkeypatch, "extract", *args, "--val-fraction", "0.34")
    assert "extracting" not in again and "nothing to extract" in again
    model = fitted.strip().splitlines()[-1].split("-> ")[-1]
    refit = _cli(copy, monkeypatch, "fit", "--backbone", TINY, "--data", "data", "--weights", "random",
                 "--head", "logreg")
    assert model.endswith(".skops") and refit.strip().splitlines()[-1].endswith(f"-> {model}")  # the same model
    compared = _cli(copy, monkeypatch, "compare", "--data", "data", "--split", "val", "--no-report")
    assert f"{TINY} + logreg" in compared
    predicted = _cli(copy, monkeypatch, "predict", "data/NORMAL", "--model", model)
    assert "-> " in predicted


def test_the_report_draws_the_heatmap_of_an_out_of_core_logreg(split_folder, tmp_path):
    pytest.importorskip("matplotlib")
    featx.extract(split_folder, TINY, **QUICK, log=lambda m: None)
    featx.fit(data=split_folder, backbone=TINY, weights="random", head="logreg", out_of_core=True, log=lambda m: None)
    from featx.reporting.document import report

    [record] = featx.compare(split_folder, split="val", n_boot=50)
    assert record["method"] == f"{TINY} + logreg (out of core)" and record["head"] == "logreg"
    said = []
    report(split_folder, split="val", out=tmp_path / "report", n_boot=50, heatmaps=1, log=said.append)
    assert (tmp_path / "report" / "heatmaps.png").is_file(), said


@pytest.mark.slow
def test_a_moved_project_reuses_every_study_unit_and_a_fine_tune_from_a_parent(tmp_path):
    """No absolute path names anything: after the project folder moves, the study computes nothing, a
    fine-tune continued from one of its units keeps its run folder's name, and no unit, run record or
    head's sidecar holds the old place."""
    project, moved = tmp_path / "project", tmp_path / "elsewhere" / "project"
    data = project / "data"
    make_folder(data, 16, split="train")
    make_folder(data, 6, split="val", start=30)
    make_folder(data, 4, split="test", start=40)
    quiet = dict(workers=0, log=lambda m: None)
    options = dict(backbones=[TINY], heads=["logreg"], finetune=[TINY], train_sizes=["all"], repeats=1,
                   weights="random", finetune_options={"epochs": 1, "image_size": 64}, n_boot=100, **quiet)

    def run(root, said=None):
        done = featx.study(root / "data", out=root / "study", cache_dir=root / "cache",
                           **{**options, "log": said.append if said is not None else quiet["log"]})
        parent = root / "study" / done.records[1]["artifact"]
        child = featx.finetune(root / "data", TINY, weights=parent.parent, epochs=1, image_size=64,
                               cache_dir=root / "cache", progress=False, resume=root == moved, **quiet)
        return done, child

    before, child = run(project)
    shutil.move(str(project), str(moved))
    said = []
    after, again = run(moved, said)
    assert any("0 of 2 units computed now" in line for line in said), said
    assert after.leader == moved / before.leader.relative_to(project)  # the same model kept, found where it is now
    assert again.artifact.parent.name == child.artifact.parent.name  # the same run (resumed): the parent's bytes
    for path in [*(moved / "study" / "units").glob("*.json"), *(moved / "cache").rglob("config.json"),
                 *(moved / "study" / "models").glob("*.json")]:
        text = path.read_text()
        kept = text.replace(json.dumps(str(project))[1:-1] + "/data", "")  # where the data was: a fact, not a name
        assert str(project) not in kept, path
