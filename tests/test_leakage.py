"""The same image twice (issue 23, item 1): in two splits, with two labels, or as copies within a split.

By path in a manifest, by content (byte-identical files) in any layout; a validation split cut by featx
keeps copies on one side, as it keeps patients.
"""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

import featx
from featx.cli import main

from conftest import TINY, make_folder, one_line_error, save, xray_like

QUIET = dict(weights="random", workers=0, progress=False)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _manifest(tmp_path, folder, extra: list[str]) -> str:
    rows = ["path,label,split"]
    for cls in ("NORMAL", "PNEUMONIA"):
        rows += [f"data/{cls}/{p.name},{cls},train" for p in sorted((folder / cls).iterdir())]
    path = tmp_path / "labels.csv"
    path.write_text("\n".join(rows + extra) + "\n")
    return path


def test_a_manifest_listing_train_images_again_as_test_is_refused_with_the_count(tmp_path, folder):
    names = sorted(p.name for p in (folder / "NORMAL").iterdir())[:3]
    leak = _manifest(tmp_path, folder, [f"data/NORMAL/{n},NORMAL,test" for n in names])
    line = one_line_error(run("extract", "--data", leak, "--backbone", TINY, "--weights", "random"))
    assert "3 images are listed in two splits" in line and "train and test" in line
    assert "evaluated on images it was trained on" in line
    with pytest.raises(featx.FeatxError, match="listed in two splits"):
        featx.load_dataset(leak)


def test_one_image_with_two_labels_is_refused(tmp_path, folder):
    name = sorted(p.name for p in (folder / "NORMAL").iterdir())[0]
    relabelled = _manifest(tmp_path, folder, [f"data/NORMAL/{name},PNEUMONIA,train"])
    with pytest.raises(featx.FeatxError, match="1 images are listed with two labels .*NORMAL and PNEUMONIA"):
        featx.load_dataset(relabelled)


def test_repeated_rows_are_kept_once_and_said(tmp_path, folder):
    names = sorted(p.name for p in (folder / "NORMAL").iterdir())[:2]
    repeated = _manifest(tmp_path, folder, [f"data/NORMAL/{n},NORMAL,train" for n in names])
    ds = featx.load_dataset(repeated)
    assert len(ds.paths) == len(set(ds.paths)) == 12
    messages = []
    featx.extract(repeated, TINY, **QUIET, log=messages.append)
    assert any("2 repeated rows (the same path, label and split) are kept once" in m for m in messages)


def test_byte_identical_files_across_splits_or_labels_are_refused_in_folders(tmp_path, split_folder):
    test_image = next((split_folder / "test" / "NORMAL").iterdir())
    shutil.copy(next((split_folder / "train" / "NORMAL").iterdir()), test_image.with_name("renamed.jpeg"))
    line = one_line_error(run("extract", "--data", split_folder, "--backbone", TINY, "--weights", "random",
                              "--workers", "0"))
    assert "1 images have byte-identical copies in another split" in line and "train and test" in line
    (test_image.with_name("renamed.jpeg")).unlink()

    shutil.copy(next((split_folder / "train" / "NORMAL").iterdir()), split_folder / "train" / "PNEUMONIA" / "x.jpeg")
    with pytest.raises(featx.FeatxError, match="1 images have byte-identical copies under another label"):
        featx.extract(split_folder, TINY, **QUIET, log=lambda m: None)


def test_copies_within_a_split_are_reported_and_kept(tmp_path, folder):
    original = sorted((folder / "NORMAL").iterdir())[0]
    shutil.copy(original, folder / "NORMAL" / "copy-of-first.jpeg")
    messages = []
    store = featx.extract(folder, TINY, **QUIET, log=messages.append)
    assert "NORMAL/copy-of-first.jpeg" in store.paths()
    said = [m for m in messages if "byte-identical copies within one split: 1" in m]
    assert len(said) == 1 and "copy-of-first.jpeg" in said[0]


def test_a_validation_cut_keeps_copies_with_the_patients_they_link(tmp_path):
    """Twelve pairs of patients share one image each (a copy under the other patient's name): every pair
    must land on one side. Cut independently, some pair would straddle the cut at every seed tried."""
    root = tmp_path / "copies"
    for patient in range(48):
        cls = "PNEUMONIA" if patient % 2 else "NORMAL"
        for k in range(2):
            save(root / cls / f"person{patient}_x_{k}.png", xray_like(100 * patient + k, size=(8, 8)))
    pairs = [(p, p + 24) for p in range(12)]
    for a, b in pairs:
        cls = "PNEUMONIA" if a % 2 else "NORMAL"
        shutil.copy(root / cls / f"person{a}_x_0.png", root / cls / f"person{b}_x_9.png")
    for seed in range(3):
        ds = featx.load_dataset(root, val_fraction=0.3, seed=seed, cache_dir=tmp_path / f"c{seed}")
        side = dict(zip(ds.groups, ds.splits))
        assert all(side[f"person{a}"] == side[f"person{b}"] for a, b in pairs), seed
        assert abs(ds.splits.count("val") / len(ds) - 0.3) < 0.08


def test_one_patient_in_two_given_splits_is_said_once_with_the_count(tmp_path):
    """Kermany's folders reuse patient numbers across train and test: said, not refused."""
    root = make_folder(tmp_path / "kermany-like", 4, split="train")
    for k, name in enumerate(("person100_bacteria_0.jpeg", "person101_bacteria_2.jpeg")):  # train's numbers
        save(root / "test" / "PNEUMONIA" / name, xray_like(900 + k, bright=True), quality=90)
    save(root / "test" / "NORMAL" / "IM-2000-0001.jpeg", xray_like(950), quality=90)
    messages = []
    store = featx.extract(root, TINY, **QUIET, log=messages.append)
    said = [m for m in messages if "patient groups have images in two of the given splits" in m]
    assert len(said) == 1 and said[0].startswith("2 patient groups"), messages
    assert len(store.paths("test")) == 3
