import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import featx
from featx.cli import main

from conftest import TINY, make_folder, one_line_error

ARGS = ["--backbone", TINY, "--weights", "random", "--workers", "0", "--no-progress", "--device", "cpu"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("command", [[], ["extract"], ["backbones"], ["info"], ["fit"], ["shift"], ["predict"]])
def test_every_command_has_help(command):
    result = run(*command, "--help")
    assert result.exit_code == 0 and "Usage:" in result.output


def test_extract_then_info(folder, tmp_path):
    result = run("extract", "--data", folder, *ARGS, "--val-fraction", "0.34")
    assert result.exit_code == 0, result.output
    path = result.stdout.strip().splitlines()[-1]
    assert path.endswith(".h5") and os.path.exists(path)
    info = run("info", path)
    assert info.exit_code == 0 and "160x160 bicubic" in info.output and "train" in info.output
    assert "made      on cpu, fp32, decode featx-decode-1+featx-dicom-2:default, tta none" in info.output


def test_backbones_lists_sizes_and_offline_weights():
    result = run("backbones")
    assert result.exit_code == 0
    line = next(l for l in result.output.splitlines() if l.startswith("xception"))
    assert "299x299" in line and "2048" in line


def test_missing_folder(tmp_path):
    assert "data not found" in one_line_error(run("extract", "--data", tmp_path / "nope", *ARGS))


def test_no_images(tmp_path):
    (tmp_path / "d" / "A").mkdir(parents=True)
    (tmp_path / "d" / "A" / "notes.txt").write_text("x")
    assert "has no images" in one_line_error(run("extract", "--data", tmp_path / "d", *ARGS))


def test_class_folders_differ_across_splits(tmp_path):
    make_folder(tmp_path / "d", 2, split="train")
    make_folder(tmp_path / "d", 2, classes=("NORMAL", "OTHER"), split="val")
    assert "differ across splits" in one_line_error(run("extract", "--data", tmp_path / "d", *ARGS))


def test_unknown_backbone(folder):
    line = one_line_error(run("extract", "--data", folder, "--backbone", "resnet5", "--weights", "random"))
    assert "unknown backbone 'resnet5'" in line and "resnet50" in line


def test_missing_weights(folder):
    line = one_line_error(run("extract", "--data", folder, "--backbone", "densenet121"))
    assert "no ImageNet weights for 'densenet121'" in line and "FEATX_WEIGHTS_DIR" in line


def test_weights_file_that_is_not_a_state_dict(folder, tmp_path):
    bogus = tmp_path / "w.pth"
    bogus.write_bytes(b"garbage")
    line = one_line_error(run("extract", "--data", folder, "--backbone", TINY, "--weights", bogus))
    assert "is not a PyTorch or safetensors file (it starts with 'garbage')" in line
    import torch

    torch.save({"w": torch.zeros(3)}, bogus)
    bogus.write_bytes(bogus.read_bytes()[:60])  # a real torch.save file, cut short
    line = one_line_error(run("extract", "--data", folder, "--backbone", TINY, "--weights", bogus))
    assert "cannot read weights file" in line and "state_dict (.pth, .pt, .bin) or a .safetensors file is expected" in line


def test_cache_from_another_backbone(folder, tmp_path):
    out = tmp_path / "c.h5"
    assert run("extract", "--data", folder, *ARGS, "--output", out).exit_code == 0
    other = ["--backbone", "timm:test_convnext", "--weights", "random", "--workers", "0", "--no-progress"]
    assert "was made differently" in one_line_error(run("extract", "--data", folder, *other, "--output", out))


def test_bad_val_fraction(folder):
    assert "between 0 and 1" in one_line_error(run("extract", "--data", folder, *ARGS, "--val-fraction", "1.5"))


def test_second_writer_is_refused(folder, tmp_path):
    from featx._core.locks import exclusive_lock

    out = tmp_path / "c.h5"
    with exclusive_lock(out):  # as if another featx extract were writing this cache
        line = one_line_error(run("extract", "--data", folder, *ARGS, "--output", out))
    assert "is being written by featx pid" in line


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_features(tmp_path):
    """SIGKILL a real `featx extract` at several moments; the file always opens and the end result is exact."""
    root = make_folder(tmp_path / "d", 40)
    cmd = [sys.executable, "-m", "featx", "extract", "--data", str(root), *ARGS, "--batch-size", "2"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    reference = featx.extract(root, backbone=TINY, weights="random", batch_size=2, workers=0, progress=False,
                              cache_dir=tmp_path / "ref", log=lambda m: None)
    out = tmp_path / "killed.h5"
    done_at_kill = []
    for target in (0, 2, 30, 60):  # right after start, then after 2, 30 and 60 finished rows
        proc = subprocess.Popen(cmd + ["--output", str(out)], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while proc.poll() is None and time.time() < deadline:
            if target == 0 or _done_while_writing(out) >= target:
                break
            time.sleep(0.01)
        if target == 0:
            time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        if out.exists():
            done_at_kill.append(_done(out))  # h5py must open it: no half-written metadata
    final = subprocess.run(cmd + ["--output", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    with h5py.File(out, "r") as f, h5py.File(reference.path, "r") as g:
        assert f["done"][:].all()
        assert np.array_equal(f["features"][:], g["features"][:])
    assert any(0 < d < 80 for d in done_at_kill), done_at_kill  # kills landed mid-run


def _done_while_writing(path) -> int:
    """Rows done so far, read while the writer runs: HDF5 has no concurrent reader (no SWMR), so a read that
    lands mid-write may see a file still being extended; only the file left after a kill must open."""
    try:
        return _done(path) if path.exists() else -1
    except OSError:
        return -1


def _done(path) -> int:
    with h5py.File(path, "r", locking=False) as f:
        return int(f["done"][:].sum())
