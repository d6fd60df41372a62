"""A cache that no longer describes its images is refused, with the command that updates it (issue 23,
items 4, 6 and 15): two first extractions at once, images deleted or changed since, a custom --cache."""

from __future__ import annotations

import shlex
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import featx
from featx.cli import main

from conftest import TINY, make_folder, one_line_error, save, three_way, toy_features, write_store, xray_like

QUIET = dict(weights="random", workers=0, progress=False, log=lambda m: None)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _suggested(line: str) -> list[str]:
    """The command a message suggests between backticks, as arguments for the CLI runner."""
    command = shlex.split(line.split("`")[1])
    assert command[:2] == ["featx", "extract"], line
    return command[1:]


def test_a_second_first_cut_waits_for_the_first_then_refuses_other_options(tmp_path):
    """Two first runs with different --val-fraction at once: the split is cut under a lock, so the later
    one reuses or refuses the stored cut instead of overwriting split.json under the first run's cache."""
    data = make_folder(tmp_path / "data", 8)
    cache = tmp_path / "cache"
    slow_cut = textwrap.dedent(f"""
        import sys, time
        import featx.data.splits as splits
        cut = splits._cut_groups
        def slow(*args, **kwargs):
            print("cutting", flush=True)
            time.sleep(3)
            return cut(*args, **kwargs)
        splits._cut_groups = slow
        import featx
        featx.load_dataset({str(data)!r}, val_fraction=0.25, cache_dir={str(cache)!r})
    """)
    first = subprocess.Popen([sys.executable, "-c", slow_cut], stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "cutting"
        with pytest.raises(featx.FeatxError, match="was cut with val-fraction 0.25"):
            featx.load_dataset(data, val_fraction=0.5, cache_dir=cache)
    finally:
        assert first.wait(timeout=60) == 0
    assert featx.load_dataset(data, val_fraction=0.25, cache_dir=cache).split_note.startswith("validation split reused")


def test_fit_refuses_a_cache_whose_split_is_not_the_stored_one(tmp_path):
    data = make_folder(tmp_path / "data", 8)
    cache = tmp_path / "my-cache"
    store = featx.extract(data, TINY, val_fraction=0.25, cache_dir=cache, **QUIET)
    (store.path.parent / "split.json").unlink()  # as if another run had cut it again meanwhile
    featx.load_dataset(data, val_fraction=0.5, seed=3, cache_dir=cache)
    line = one_line_error(run("fit", "--backbone", TINY, "--weights", "random", "--data", data, "--cache", cache))
    assert "not in the split the stored validation split gives them" in line
    assert "not in the split" in one_line_error(run("fit", "--features", store.path))
    updated = run(*_suggested(line), "--no-progress", "--workers", "0")  # the command it suggests, as given
    assert updated.exit_code == 0, updated.output
    fitted = run("fit", "--backbone", TINY, "--weights", "random", "--data", data, "--cache", cache)
    assert fitted.exit_code == 0, fitted.output
    assert featx.load_dataset(data, cache_dir=cache).counts()["val"] == {"NORMAL": 4, "PNEUMONIA": 4}


def test_fit_features_refuses_a_cache_whose_images_were_deleted_or_changed(tmp_path):
    data = make_folder(tmp_path / "data", 8)
    cache = tmp_path / "elsewhere"
    store = featx.extract(data, TINY, val_fraction=0.25, cache_dir=cache, **QUIET)
    names = sorted((data / "NORMAL").iterdir())
    names[0].unlink()
    save(names[1], xray_like(777), quality=90)  # new bytes under an old name
    line = one_line_error(run("fit", "--features", store.path))
    assert "out of date: 1 images deleted, 1 images changed" in line
    command = _suggested(line)
    assert ["--output", str(store.path)] == command[-2:] and ["--cache", str(cache)] == command[-4:-2]
    assert "--weights" in command and "random" in command  # every option that made the cache
    updated = run(*command, "--no-progress", "--workers", "0")
    assert updated.exit_code == 0, updated.output
    assert run("fit", "--features", store.path).exit_code == 0
    assert len(featx.FeatureStore(store.path).paths()) == 15


def test_fit_with_data_sees_changed_bytes_not_only_changed_names(tmp_path):
    data = make_folder(tmp_path / "data", 6)
    cache = tmp_path / "c"
    featx.extract(data, TINY, cache_dir=cache, **QUIET)
    save(sorted((data / "PNEUMONIA").iterdir())[0], xray_like(555, bright=True), quality=90)
    line = one_line_error(run("fit", "--backbone", TINY, "--weights", "random", "--data", data, "--cache", cache))
    assert "1 images changed" in line and f"--cache {cache}" in line


def test_a_refit_on_changed_images_is_saved_beside_the_earlier_model(tmp_path):
    """Issue 23, item 5: a model's name includes the images it learned from, so a re-fit after the data
    changed does not replace the earlier model, whose metrics may already be in a comparison."""
    data = make_folder(tmp_path / "data", 8)
    store = featx.extract(data, TINY, val_fraction=0.25, **QUIET)
    [first] = featx.fit(store, head="logreg", log=lambda m: None)
    [again] = featx.fit(store, head="logreg", log=lambda m: None)
    assert again.artifact == first.artifact  # the same images: the same model, the same name
    save(data / "PNEUMONIA" / "person900_virus_1.jpeg", xray_like(321, bright=True), quality=90)
    store = featx.extract(data, TINY, **QUIET)
    [changed] = featx.fit(store, head="logreg", log=lambda m: None)
    assert changed.artifact != first.artifact
    assert featx.load(first.artifact).info["metrics"] == first.metrics


def test_a_leaky_cache_is_refused_even_without_its_images(tmp_path):
    """A cache made before featx checked for copies, fitted from its file alone: its recorded sha1s tell."""
    X, y = toy_features(60)
    store = write_store(tmp_path / "old.h5", X, y, three_way(60))
    with h5py.File(store.path, "r+") as f:  # row 0's file again as a test image
        test_row = int(np.flatnonzero((f["split"][:] == 2) & (f["label"][:] == f["label"][0]))[0])
        f["sha1"][test_row] = f["sha1"][0]
        f["split"][0] = 0
    line = one_line_error(run("fit", "--features", store.path, "--models", tmp_path / "m"))
    assert "1 images have byte-identical copies in another split" in line


def test_a_fine_tune_on_changed_images_never_resumes_the_old_run(tmp_path):
    data = make_folder(tmp_path / "data", 6)
    quick = dict(weights="random", workers=0, progress=False, log=lambda m: None, epochs=1, image_size=64,
                 batch_size=4, val_fraction=0.34)
    first = featx.finetune(data, TINY, **quick)
    save(sorted((data / "NORMAL").iterdir())[0], xray_like(4321), quality=90)  # same names, other bytes
    again = featx.finetune(data, TINY, **quick)
    assert again.artifact.parent != first.artifact.parent and featx.load(first.artifact).info["metrics"]


def test_a_manifest_listing_the_same_images_in_another_order_is_not_stale(tmp_path, folder):
    rows = [f"data/{c}/{p.name},{c}" for c in ("NORMAL", "PNEUMONIA") for p in sorted((folder / c).iterdir())]
    manifest = tmp_path / "labels.csv"
    manifest.write_text("path,label\n" + "\n".join(rows) + "\n")
    featx.extract(manifest, TINY, val_fraction=0.34, **QUIET)
    manifest.write_text("path,label\n" + "\n".join(reversed(rows)) + "\n")
    [result] = featx.fit(data=manifest, backbone=TINY, weights="random", head="logreg", log=lambda m: None)
    assert result.metrics["val"]["n"] == 4
