"""`torchrun -m featx finetune`: DistributedDataParallel on gloo equals one process within float noise."""

from __future__ import annotations

import csv
import textwrap

import numpy as np
import pytest
import torch

from conftest import make_folder, single, torchrun

# GroupNorm instead of BatchNorm: no batch statistics, which DDP on CPU cannot synchronise.
# Dropout 0: masks are drawn per process. Augmentation stays on: it is seeded per image.
ARGS = ["--backbone", "timm:test_efficientnet_gn", "--weights", "random", "--epochs", "2", "--batch-size", "4",
        "--workers", "0", "--image-size", "64", "--val-fraction", "0.25", "--dropout", "0", "--lr", "1e-3",
        "--no-progress"]

# Records which ranks write checkpoints and artifacts, then runs the CLI as `-m featx` would.
RECORDER = """
    import os, sys
    import featx.finetuning.checkpoints, featx.finetuning.runner
    def recording(module, name):
        original = getattr(module, name)
        def wrapper(*args, **kwargs):
            with open(os.environ["WRITES_LOG"], "a") as f:
                f.write(f"{os.environ['RANK']} {name}\\n")
            return original(*args, **kwargs)
        setattr(module, name, wrapper)
    recording(featx.finetuning.checkpoints, "save_last")
    recording(featx.finetuning.runner, "save_checkpoint_artifact")
    from featx.cli import main
    sys.argv = ["featx", *sys.argv[1:]]
    main()
"""


def _history(out):
    return list(csv.DictReader(open(out / "history.csv")))


@pytest.fixture
def data(tmp_path):
    root = make_folder(tmp_path / "data", per_class=9)  # 18 images: 13 train (a last batch of 1), 5 val
    (root / "PNEUMONIA" / "person999_bacteria_1.jpeg").write_bytes(b"\xff\xd8 truncated")  # skipped by both
    return root


@pytest.mark.slow
def test_two_processes_train_like_one(data, tmp_path, monkeypatch):
    one = single("finetune", "--data", data, *ARGS, "--out", tmp_path / "one")
    assert one.returncode == 0, one.stderr
    log = tmp_path / "writes.log"
    monkeypatch.setenv("WRITES_LOG", str(log))
    recorder = tmp_path / "recorder.py"
    recorder.write_text(textwrap.dedent(RECORDER))
    two = torchrun(2, "finetune", "--data", data, *ARGS, "--out", tmp_path / "two", script=str(recorder))
    assert two.returncode == 0, two.stderr

    # Rank 0 alone writes and speaks.
    assert set(log.read_text().split("\n")[:-1]) == {"0 save_last", "0 save_checkpoint_artifact"}
    assert two.stderr.count("epoch 1/2:") == 1 and "x 2 processes" in two.stderr
    assert two.stdout.count("model.pt") == 1
    assert "skipped 1 unreadable images: PNEUMONIA/person999_bacteria_1.jpeg" in two.stderr

    # The same training: per-epoch losses, the weights, and the validation predictions.
    a, b = _history(tmp_path / "one"), _history(tmp_path / "two")
    for key in ("train_loss", "val_loss", "val_accuracy"):
        assert np.allclose([float(r[key]) for r in a], [float(r[key]) for r in b], rtol=1e-4, atol=1e-5), key
    wa = torch.load(tmp_path / "one" / "model.pt", weights_only=True)
    wb = torch.load(tmp_path / "two" / "model.pt", weights_only=True)
    assert wa.keys() == wb.keys()
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-4
    pa = np.load(tmp_path / "one" / "model.predictions.npz", allow_pickle=False)
    pb = np.load(tmp_path / "two" / "model.predictions.npz", allow_pickle=False)
    assert list(pa.keys()) == list(pb.keys())
    for key in pa.keys():
        if pa[key].dtype.kind == "f":
            assert np.allclose(pa[key], pb[key], atol=1e-5), key
        else:
            assert np.array_equal(pa[key], pb[key]), key
