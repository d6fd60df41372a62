"""Commands that only read cached features or saved predictions start without importing torch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import featx

from conftest import three_way, toy_features, write_store

# Runs one CLI command in a fresh interpreter, then says whether torch was imported.
SCRIPT = """
import sys
from click.testing import CliRunner
from featx.cli import main
result = CliRunner().invoke(main, sys.argv[1:])
assert result.exit_code == 0, result.output
print("torch imported:", "torch" in sys.modules)
"""


@pytest.fixture
def models(tmp_path):
    X, y = toy_features(90)
    recorded = {"weights_source": "random init (seed 0)", "dtype": "float32", "precision": "fp32", "device": "cpu",
                "data_config": {"input_size": [3, 32, 32], "interpolation": "bicubic", "crop_pct": 0.875,
                                "mean": [0.5] * 3, "std": [0.5] * 3}}
    store = write_store(tmp_path / "toy.h5", X, y, three_way(90), config=recorded)
    featx.fit(store, head="logreg", models_dir=tmp_path / "cache" / "models", log=lambda m: None)
    return store.path


def torch_imported(*args) -> bool:
    done = subprocess.run([sys.executable, "-c", SCRIPT, *map(str, args)], capture_output=True, text=True,
                          env=os.environ.copy(), timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1] == "torch imported: True"


@pytest.mark.parametrize("command", ["fit", "info", "compare", "report"])
def test_reading_commands_import_no_torch(models, tmp_path, command):
    args = {"fit": ["fit", "--features", models, "--head", "logreg"],
            "info": ["info", models],
            "compare": ["compare", "--split", "test", "--no-report"],
            "report": ["compare", "--split", "test", "--heatmaps", "0", "--out", tmp_path / "report"]}[command]
    assert not torch_imported(*args)


def test_the_check_sees_torch_when_a_command_needs_it():
    assert torch_imported("backbones")


@pytest.mark.slow
def test_a_finished_extraction_is_reused_without_torch(folder, tmp_path):
    """The re-run decides from the cache alone; a changed image, or other weights, take the full way."""
    from conftest import TINY, xray_like, save

    args = ["extract", "--data", folder, "--backbone", TINY, "--weights", "random", "--device", "cpu"]
    assert torch_imported(*args)  # first run: computes
    assert not torch_imported(*args)  # re-run: from the cache alone
    weights = tmp_path / "w.pth"
    import torch

    torch.save(featx.create_backbone(TINY, "random").model.state_dict(), weights)
    assert torch_imported(*args[:-4], "--weights", weights, "--device", "cpu")  # the same weights from a file:
    assert not torch_imported(*args[:-4], "--weights", weights, "--device", "cpu")  # found by identity, then remembered
    save(folder / "NORMAL" / "IM-1000-0001.jpeg", xray_like(99), quality=90)
    assert torch_imported(*args)  # a changed image is recomputed
    assert len(list((tmp_path / "cache").rglob("*.h5"))) == 1  # one cache served all of these
