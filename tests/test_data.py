import json
from collections import defaultdict
from pathlib import Path

import pytest

from featx import FeatxError, load_dataset
from featx.data.datasets import DEFAULT_GROUP_PATTERN, group_of

from conftest import make_folder, save, xray_like


@pytest.mark.parametrize("name, group", [
    ("person123_bacteria_456.jpeg", "person123"),
    ("person1_virus_7.jpeg", "person1"),
    ("IM-0115-0001.jpeg", "IM-0115"),
    ("NORMAL2-IM-0381-0001.jpeg", "NORMAL2-IM-0381"),
    ("IM-0652-0001-0002.jpeg", "IM-0652"),
    ("scan_17.png", "NORMAL/scan_17.png"),  # no match: its own group
])
def test_default_groups_recognise_kermany_names(name, group):
    import re

    assert group_of(f"NORMAL/{name}", re.compile(DEFAULT_GROUP_PATTERN)) == group


def test_class_folders(folder):
    ds = load_dataset(folder)
    assert ds.classes == ["NORMAL", "PNEUMONIA"]
    assert ds.counts() == {"train": {"NORMAL": 6, "PNEUMONIA": 6}}


def test_split_folders(split_folder):
    ds = load_dataset(split_folder)
    assert set(ds.counts()) == {"train", "val", "test"}
    assert all(p.split("/")[0] in ("train", "val", "test") for p in ds.paths)


def test_extensions_in_any_case_and_other_files_ignored(tmp_path):
    root = make_folder(tmp_path / "d", 2)
    save(root / "NORMAL" / "UPPER.PNG", xray_like(9))
    (root / "NORMAL" / "readme.txt").write_text("hi")
    ds = load_dataset(root)
    assert "NORMAL/UPPER.PNG" in ds.paths and "NORMAL/readme.txt" in ds.ignored


def test_manifest(tmp_path, folder):
    rows = ["path,label,split,group"]
    for cls, label in (("NORMAL", "healthy"), ("PNEUMONIA", "sick")):
        for i, p in enumerate(sorted((folder / cls).iterdir())):
            rows.append(f"data/{cls}/{p.name},{label},{'val' if i < 2 else 'train'},{label}{i // 2}")
    manifest = tmp_path / "labels.csv"
    manifest.write_text("\n".join(rows) + "\n")
    ds = load_dataset(manifest)
    assert ds.classes == ["healthy", "sick"]
    assert ds.counts() == {"train": {"healthy": 4, "sick": 4}, "val": {"healthy": 2, "sick": 2}}
    assert ds.groups[:3] == ["healthy0", "healthy0", "healthy1"]
    assert ds.absolute(ds.paths[0]).is_file()


def test_manifest_errors(tmp_path, folder):
    bad = tmp_path / "bad.csv"
    bad.write_text("file,class\nx.jpg,a\n")
    with pytest.raises(FeatxError, match="needs a header with 'path' and 'label'"):
        load_dataset(bad)
    bad.write_text("path,label\ndata/NORMAL/nope.jpeg,a\n")
    with pytest.raises(FeatxError, match="1 listed files do not exist"):
        load_dataset(bad)


def test_validation_split_keeps_patients_together_and_is_reused(tmp_path):
    root = make_folder(tmp_path / "d", 20)
    ds = load_dataset(root, val_fraction=0.25, seed=3)
    sides = defaultdict(set)
    for group, split in zip(ds.groups, ds.splits):
        sides[group].add(split)
    assert all(len(s) == 1 for s in sides.values())
    assert 0 < ds.splits.count("val") < len(ds)
    again = load_dataset(root)  # no --val-fraction: the stored split is reused
    assert again.splits == ds.splits
    stored = json.loads(next((tmp_path / "cache").glob("*/split.json")).read_text())
    assert stored["val_fraction"] == 0.25 and stored["seed"] == 3
    with pytest.raises(FeatxError, match="was cut with val-fraction 0.25"):
        load_dataset(root, val_fraction=0.5)


def test_new_patients_after_the_cut_do_not_move_old_ones(tmp_path):
    root = make_folder(tmp_path / "d", 20)
    first = load_dataset(root, val_fraction=0.25)
    before = dict(zip(first.paths, first.splits))
    make_folder(root, 10, start=100)  # new patients arrive
    later = load_dataset(root)
    assert all(before[p] == s for p, s in zip(later.paths, later.splits) if p in before)


@pytest.mark.parametrize("setup, message", [
    (lambda r: None, "data not found"),
    (lambda r: r.mkdir(), "no class folders"),
    (lambda r: (r / "A").mkdir(parents=True), "has no images"),
])
def test_bad_layouts(tmp_path, setup, message):
    root = tmp_path / "bad"
    setup(root)
    with pytest.raises(FeatxError, match=message):
        load_dataset(root)


def test_class_folders_must_agree_across_splits(tmp_path):
    root = tmp_path / "d"
    make_folder(root, 2, split="train")
    make_folder(root, 2, classes=("NORMAL",), split="val")
    with pytest.raises(FeatxError, match="class folders differ across splits: val/ lacks PNEUMONIA"):
        load_dataset(root)


def test_data_one_level_too_high_is_refused_with_a_hint(tmp_path):
    make_folder(tmp_path / "examples" / "chest_xray", 2)
    (tmp_path / "examples" / "chest_xray" / "CITATION.md").write_text("not an image")
    with pytest.raises(FeatxError, match=r"one class folder, chest_xray/.*use --data .*examples/chest_xray"):
        load_dataset(tmp_path / "examples")


def test_a_custom_group_pattern_groups_as_asked(tmp_path):
    """Hospital names (`<patient>__<study>.png`): the regex's first group is the patient, and a
    validation split keeps each patient whole."""
    root = tmp_path / "hospital"
    for p in range(12):
        for study in range(3):
            cls = "PNEUMONIA" if p % 2 else "NORMAL"
            save(root / cls / f"P{p:03d}__S{study}.png", xray_like(3 * p + study, size=(8, 8)))
    ds = load_dataset(root, group_pattern=r"^(P\d+)__", val_fraction=0.25, cache_dir=tmp_path / "c")
    assert sorted(set(ds.groups)) == [f"P{p:03d}" for p in range(12)]
    assert all(g == Path(p).name.split("__")[0] for p, g in zip(ds.paths, ds.groups))
    sides = {}
    for g, s in zip(ds.groups, ds.splits):
        sides.setdefault(g, set()).add(s)
    assert all(len(s) == 1 for s in sides.values()) and sum(s == {"val"} for s in sides.values()) == 3
    # Without the pattern, every file would be its own group (the default regex does not match).
    assert len(set(load_dataset(root, cache_dir=tmp_path / "d").groups)) == 36
