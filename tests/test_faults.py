"""Faults: kills at chosen moments, a full disk (extract, fit, a re-fit's sidecar, fine-tuning's checkpoints, and a
run refused before it starts when they cannot fit), concurrent runs, a corpus of bad files (a FIFO among them),
fuzzed bytes.

Kills are real SIGKILLs of a real `featx` process. The moment is chosen by a few lines that wrap
one featx function in that process (see `_killed_at`), so no test hook lives in featx itself.
"""

from __future__ import annotations

import errno
import io
import os
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import featx
from featx.cli import main
from featx.data.images import ImageError, load_image

from conftest import TINY, final_error, make_folder, one_line_error, three_way, toy_features, write_store, xray_like

QUIET = dict(weights="random", workers=0, progress=False, log=lambda m: None)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _killed_at(target: str, name: str, after: int, args: list, *, before: bool = False) -> int:
    """Run `featx ARGS` in a subprocess that SIGKILLs itself inside the `after`-th call of target.name.

    target is a module ("featx.features.store") or a class in one ("featx.features.store:StoreWriter").
    before=False: kill once the call has done its work (e.g. features written, flags not yet);
    before=True: kill as the call starts. Returns the exit code (-9 when the kill happened).
    """
    script = textwrap.dedent(f"""
        import functools, importlib, inspect, os, signal, sys
        module, _, cls = {target!r}.partition(":")
        owner = importlib.import_module(module)
        owner = getattr(owner, cls) if cls else owner
        static = isinstance(inspect.getattr_static(owner, {name!r}), staticmethod)
        original = getattr(owner, {name!r})
        calls = [0]
        @functools.wraps(original)
        def wrapped(*a, **k):
            calls[0] += 1
            if calls[0] == {after} and {before}:
                os.kill(os.getpid(), signal.SIGKILL)
            out = original(*a, **k)
            if calls[0] == {after}:
                os.kill(os.getpid(), signal.SIGKILL)
            return out
        setattr(owner, {name!r}, staticmethod(wrapped) if static else wrapped)
        from featx.cli import main
        sys.argv = ["featx", *{[str(a) for a in args]!r}]
        main()
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    return done.returncode


# --- kills ------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_extract_killed_while_writing_resumes_bit_for_bit(tmp_path):
    root = make_folder(tmp_path / "d", 12)
    reference = featx.extract(root, TINY, batch_size=4, cache_dir=tmp_path / "ref", **QUIET)
    out = tmp_path / "x.h5"
    args = ["extract", "--data", root, "--backbone", TINY, "--weights", "random", "--workers", "0",
            "--batch-size", "4", "--no-progress", "--output", out]
    # 1. while the new file is being laid out; 2. after a batch's features, before its done flags;
    # 3. as the third batch starts writing.
    assert _killed_at("featx.features.store", "_prealloc", 3, args) == -9
    assert not out.exists()  # the half-made file never took the cache's name
    assert _killed_at("featx.features.store:StoreWriter", "_in_order", 3, args) == -9
    with h5py.File(out, "r") as f:
        assert f["done"][:].sum() == 4  # batch 2's features are written, its flags are not: not done
    assert _killed_at("featx.features.store:StoreWriter", "write", 3, args, before=True) == -9
    final = run(*args)
    assert final.exit_code == 0, final.output
    with h5py.File(out, "r") as f, h5py.File(reference.path, "r") as g:
        assert f["done"][:].all() and np.array_equal(f["features"][:], g["features"][:])


@pytest.mark.slow
def test_finetune_killed_mid_epoch_and_mid_checkpoint_resumes_to_the_same_model(tmp_path):
    root = make_folder(tmp_path / "d", 8)
    base = ["finetune", "--data", root, "--backbone", TINY, "--weights", "random", "--workers", "0",
            "--no-progress", "--image-size", "64", "--batch-size", "4", "--epochs", "3", "--val-fraction", "0.25",
            "--cache", tmp_path / "cache"]
    whole = run(*base, "--out", tmp_path / "whole")
    assert whole.exit_code == 0, whole.output
    cut = [*base, "--out", tmp_path / "cut"]
    # Mid-epoch: 12 train images in batches of 4 make 3 steps an epoch; step 5 is inside epoch 2.
    assert _killed_at("torch.nn.utils", "clip_grad_norm_", 5, cut) == -9
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["state"]["epoch"] == 1
    # During a checkpoint save: the file is written under its temporary name, not yet renamed.
    assert _killed_at("torch", "save", 1, [*cut, "--resume"]) == -9
    for checkpoint in ("best_weights.pt", "last.pt"):
        assert torch.load(tmp_path / "cut" / checkpoint, weights_only=True)  # both still load
    resumed = run(*cut, "--resume")
    assert resumed.exit_code == 0, resumed.output
    a = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fit_killed_before_its_sidecar_leaves_nothing_loadable(tmp_path):
    X, y = toy_features(90)
    store = write_store(tmp_path / "toy.h5", X, y, three_way(90))
    args = ["fit", "--features", store.path, "--models", tmp_path / "m"]
    assert _killed_at("featx.artifacts.format", "write_text_atomic", 1, args, before=True) == -9
    assert not list((tmp_path / "m").glob("*.skops"))  # the new model waits as *.pending until its sidecar
    [pending] = (tmp_path / "m").glob("*.skops.pending")
    artifact = pending.with_name(pending.name.removesuffix(".pending"))
    with pytest.raises(featx.FeatxError, match="no sidecar"):
        featx.load(artifact)
    assert run(*args).exit_code == 0
    assert featx.load(artifact).predict_proba(X[:2]).shape == (2, 2)


def test_a_refit_killed_or_out_of_space_at_its_sidecar_keeps_a_loadable_model(tmp_path, monkeypatch):
    """Issue 23, item 5: the model file and its sidecar are replaced together or not at all."""
    X, y = toy_features(90)
    store = write_store(tmp_path / "toy.h5", X, y, three_way(90))
    args = ["fit", "--features", store.path, "--models", tmp_path / "m"]
    assert run(*args).exit_code == 0
    [artifact] = (tmp_path / "m").glob("*.skops")
    before = featx.load(artifact).predict_proba(X[:5])
    write_store(store.path, X[::-1].copy(), y, three_way(90))  # other features of the same images: the same name
    # A re-fit whose sidecar cannot be written: the previous model still loads, unchanged.
    from pathlib import Path

    monkeypatch.setattr(Path, "write_text", _no_space)  # the sidecar is the one text file fit writes
    assert "no space left" in final_error(run(*args)).lower()
    monkeypatch.undo()
    assert np.array_equal(featx.load(artifact).predict_proba(X[:5]), before)
    # Killed once the new sidecar is committed, before the new model takes its name: it loads, as the new one.
    assert _killed_at("featx.artifacts.format", "_settle", 1, args, before=True) == -9
    pending = tmp_path / "m" / (artifact.name + ".pending")
    assert pending.exists()
    after = featx.load(artifact).predict_proba(X[:5])
    assert not pending.exists() and not np.allclose(after, before)
    assert run(*args).exit_code == 0 and np.array_equal(featx.load(artifact).predict_proba(X[:5]), after)


# --- a full disk -------------------------------------------------------------------------------------------

def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_while_extracting_is_one_line_and_resumable(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "d", 6)
    args = ["extract", "--data", root, "--backbone", TINY, "--weights", "random", "--workers", "0", "--no-progress",
            "--output", tmp_path / "x.h5", "--batch-size", "4"]
    import featx.features.store

    original = featx.features.store.StoreWriter.write
    calls = []

    def fills_up(self, rows, features):
        calls.append(1)
        if len(calls) == 2:
            _no_space()
        return original(self, rows, features)

    monkeypatch.setattr(featx.features.store.StoreWriter, "write", fills_up)
    line = final_error(run(*args))
    assert "No space left on device" in line and "re-run" in line
    with h5py.File(tmp_path / "x.h5", "r") as f:
        assert f["done"][:].sum() == 4  # the first batch is kept
    monkeypatch.setattr(featx.features.store.StoreWriter, "write", original)
    assert run(*args).exit_code == 0


def test_full_disk_while_creating_a_cache_or_saving_a_model(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "d", 6)
    import featx.features.store

    monkeypatch.setattr(featx.features.store, "_prealloc", _no_space)
    line = one_line_error(run("extract", "--data", root, "--backbone", TINY, "--weights", "random", "--workers", "0",
                              "--no-progress"))
    assert "no space left" in line.lower()
    monkeypatch.undo()

    X, y = toy_features(90)
    store = write_store(tmp_path / "toy.h5", X, y, three_way(90))
    [first] = featx.fit(store, head="logreg", models_dir=tmp_path / "m")
    monkeypatch.setattr(featx.artifacts.portable, "dump", _no_space)
    assert "no space left" in final_error(run("fit", "--features", store.path, "--models", tmp_path / "m")).lower()
    assert featx.load(first.artifact).predict_proba(X[:1]).shape == (1, 2)  # the earlier model is untouched


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full, a device that is always full")
def test_full_disk_while_fine_tuning_is_one_line_and_resumable(tmp_path):
    """Issue 23, item 8: the checkpoint after an epoch is written into /dev/full, a real ENOSPC."""
    root = make_folder(tmp_path / "d", 6)
    out = tmp_path / "run"
    args = ["finetune", "--data", root, "--backbone", TINY, "--weights", "random", "--workers", "0", "--no-progress",
            "--image-size", "64", "--batch-size", "4", "--epochs", "2", "--val-fraction", "0.34", "--out", out]
    out.mkdir()
    full = out / f"best_weights.pt.tmp-{os.getpid()}"  # the temporary name atomic writes give in this process
    full.symlink_to("/dev/full")
    line = final_error(run(*args))
    assert "no space left on the device writing" in line and "best_weights.pt" in line
    assert not full.exists() and not (out / "model.pt").exists()
    assert run(*args).exit_code == 0  # a new start once there is space


def test_a_fine_tune_that_cannot_fit_its_checkpoints_is_refused_before_training(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 10**4))  # 10 kB
    root = make_folder(tmp_path / "d", 6)
    result = run("finetune", "--data", root, "--backbone", TINY, "--weights", "random", "--workers", "0",
                 "--no-progress", "--image-size", "64", "--epochs", "1", "--val-fraction", "0.34", "--out", tmp_path / "r")
    line = one_line_error(result)
    assert "no space left on the device for this run's checkpoints" in line and "MiB needed" in line
    assert "epoch 1" not in result.output


def test_a_fifo_named_like_an_image_is_skipped_not_waited_on(tmp_path):
    """Issue 23, item 9: reading a FIFO blocks forever; it is listed with its reason instead."""
    root = make_folder(tmp_path / "d", 3)
    os.mkfifo(root / "NORMAL" / "pipe.jpg")
    done = subprocess.run([sys.executable, "-m", "featx", "extract", "--data", str(root), "--backbone", TINY,
                           "--weights", "random", "--workers", "0", "--no-progress", "--cache", str(tmp_path / "c")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "NORMAL/pipe.jpg: not a regular file: a FIFO (named pipe)" in done.stderr
    [cache] = (tmp_path / "c").rglob("*.h5")
    assert dict(featx.FeatureStore(cache).skipped()) == {"NORMAL/pipe.jpg": "not a regular file: a FIFO (named pipe)"}
    with pytest.raises(featx.FeatxError, match="a FIFO"):
        featx.load(_toy_head(tmp_path)).predict_proba([root / "NORMAL" / "pipe.jpg"])


def _toy_head(tmp_path):
    """A logreg head on the tiny random backbone's features, fitted from generated images."""
    store = featx.extract(make_folder(tmp_path / "toy", 8), TINY, val_fraction=0.25, **QUIET)
    return featx.fit(store, head="logreg", models_dir=tmp_path / "m", log=lambda m: None)[0].artifact


# --- concurrency -------------------------------------------------------------------------------------------

def test_fit_during_extraction_sees_only_finished_rows(tmp_path):
    X, y = toy_features(90)
    store = write_store(tmp_path / "toy.h5", X, y, three_way(90))
    with h5py.File(store.path, "r+") as f:  # as if extraction were still writing the last 30 rows
        f["done"][60:] = 0
        f["features"][60:] = np.nan
    messages = []
    [result] = featx.fit(store, head="logreg", models_dir=tmp_path / "m", log=messages.append)
    assert any("still being extracted (30 images pending)" in m for m in messages)
    assert sum(m["n"] for m in result.metrics.values()) == 60


# --- a corpus of bad files -----------------------------------------------------------------------------------

@pytest.fixture
def corpus(tmp_path):
    root = make_folder(tmp_path / "corpus", 3)
    normal = root / "NORMAL"
    rng = np.random.default_rng(0)
    png = io.BytesIO()
    Image.fromarray(xray_like(1)).save(png, format="PNG")
    jpeg = (root / "NORMAL" / "IM-1000-0001.jpeg").read_bytes()
    (normal / "zero.jpg").write_bytes(b"")
    (normal / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    bad_crc = bytearray(png.getvalue())
    bad_crc[40] ^= 0xFF
    (normal / "bad_crc.png").write_bytes(bytes(bad_crc))
    Image.fromarray((rng.random((30, 40)) * 65535).astype(np.uint16)).save(normal / "sixteen.tif")
    Image.fromarray(np.stack([xray_like(2)] * 3, -1)).convert("CMYK").save(normal / "cmyk.jpg")
    Image.new("L", (1, 1), 128).save(normal / "one_pixel.png")
    frames = [Image.fromarray(xray_like(i)).convert("P") for i in range(3)]
    frames[0].save(normal / "animated.gif", save_all=True, append_images=frames[1:])
    Image.new("1", (10_000, 10_000)).save(normal / "bomb.png")  # 1e8 pixels, above PIL's limit
    (normal / "folder.jpg").mkdir()
    os.symlink("loop.jpg", normal / "loop.jpg")
    with open(os.path.join(os.fsencode(normal), b"caf\xe9.png"), "wb") as handle:
        handle.write(png.getvalue())
    (normal / "notes.txt").write_text("not an image\n")
    return root


def test_every_bad_file_is_read_or_skipped_with_its_reason(corpus, tmp_path, monkeypatch):
    import featx.features.planning

    original = featx.features.planning.row_table

    def then_delete(ds, held):  # a file deleted between listing and reading
        table = original(ds, held)
        (corpus / "PNEUMONIA" / "person100_bacteria_0.jpeg").unlink(missing_ok=True)
        return table

    monkeypatch.setattr(featx.features.planning, "row_table", then_delete)
    messages = []
    store = featx.extract(corpus, TINY, **{**QUIET, "log": messages.append})
    skipped = dict(store.skipped())
    expected = {"NORMAL/zero.jpg": "empty", "NORMAL/truncated.jpg": "truncated", "NORMAL/bad_crc.png": "corrupt",
                "NORMAL/bomb.png": "decompression bomb", "NORMAL/loop.jpg": "symbolic links",
                "NORMAL/caf\\xe9.png": "not valid UTF-8", "PNEUMONIA/person100_bacteria_0.jpeg": "No such file"}
    assert set(skipped) == set(expected)
    for path, words in expected.items():
        assert words in skipped[path], (path, skipped[path])
    read = set(store.paths())
    assert {"NORMAL/sixteen.tif", "NORMAL/cmyk.jpg", "NORMAL/one_pixel.png", "NORMAL/animated.gif"} <= read
    assert len(read) + len(skipped) == store.n_rows
    text = "\n".join(messages)
    assert "skipped 7 unreadable images" in text and "ignored 1 files that are not images" in text


# --- fuzzing the decoder -------------------------------------------------------------------------------------

SIGNATURES = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"II*\x00", b"MM\x00*", b"BM", b"RIFF"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prefix=st.sampled_from(SIGNATURES), body=st.binary(max_size=512))
def test_random_bytes_raise_only_image_error(prefix, body):
    try:
        img = load_image(io.BytesIO(prefix + body))
    except ImageError:
        return
    assert img.mode in ("L", "RGB")


@settings(max_examples=60, deadline=None)
@given(mode=st.sampled_from(["1", "L", "P", "RGB", "RGBA", "LA", "CMYK", "I;16", "I", "F"]),
       width=st.integers(1, 40), height=st.integers(1, 40), fmt=st.sampled_from(["PNG", "TIFF", "WEBP", "BMP"]),
       seed=st.integers(0, 2**16))
def test_any_mode_and_size_decodes_to_l_or_rgb(mode, width, height, fmt, seed):
    rng = np.random.default_rng(seed)
    img = Image.fromarray((rng.random((height, width)) * 255).astype(np.uint8)).convert(mode)
    buffer = io.BytesIO()
    try:
        img.save(buffer, format=fmt)
    except (OSError, ValueError, KeyError):
        return  # this format cannot hold this mode: nothing to decode
    buffer.seek(0)
    try:
        out = load_image(buffer)
    except ImageError:
        return  # documented: unreadable images are reported, not crashed on
    assert out.mode in ("L", "RGB") and out.size == (width, height)
