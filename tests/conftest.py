"""Small generated image sets and a tiny random-init backbone: no network, no ../shared."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

# An empty Hugging Face cache for the whole session, set before huggingface_hub is imported (it reads
# these once): whether weights are "missing" must not depend on what this machine downloaded before.
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="featx-tests-hf-")
os.environ["HF_HUB_CACHE"] = os.path.join(os.environ["HF_HOME"], "hub")
os.environ.pop("HUGGINGFACE_HUB_CACHE", None)
# One thread per test process (set before numpy or torch is loaded): `-n 2` on two cores runs two processes,
# and two threads in each fight over the cores (the suite took 1.3x as long).
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _threads in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_threads, "1")

import numpy as np
import pytest
from hypothesis import settings
from PIL import Image

import featx
from featx.data.datasets import SPLITS
from featx.features.store import RowTable, StoreWriter, create_store

# A tiny timm model (about 0.1 M parameters, 160 px input): fast enough for every test.
TINY = "timm:test_efficientnet"


# Property tests draw the same examples on every machine and run: a failure is reproducible.
settings.register_profile("featx", derandomize=True, print_blob=True)
settings.load_profile("featx")


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Each test gets its own cache folder and no weights folder or hub access from the environment."""
    monkeypatch.setenv("FEATX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("FEATX_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def xray_like(seed: int, size=(64, 48), bright: bool = False) -> np.ndarray:
    """A grayscale picture with some structure; `bright` shifts it so two classes differ."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size[1], 0:size[0]]
    base = 96 + 60 * np.sin(x / (5 + seed % 7)) * np.cos(y / 9) + rng.normal(0, 12, (size[1], size[0]))
    return np.clip(base + (50 if bright else 0), 0, 255).astype(np.uint8)


def save(path: Path, array: np.ndarray, mode: str | None = None, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path, **kwargs)
    return path


def make_folder(root: Path, per_class: int = 6, classes=("NORMAL", "PNEUMONIA"), split: str | None = None,
                start: int = 0) -> Path:
    """root[/split]/<class>/*.jpeg with Kermany-style names (two images per patient)."""
    base = root / split if split else root
    for c, name in enumerate(classes):
        for i in range(start, start + per_class):
            patient = f"person{100 * c + i // 2}_bacteria_{i}" if c else f"IM-{1000 + i // 2:04d}-{i % 2 + 1:04d}"
            save(base / name / f"{patient}.jpeg", xray_like(i + 50 * c, bright=bool(c)), quality=90)
    return root


@pytest.fixture
def folder(tmp_path) -> Path:
    return make_folder(tmp_path / "data")


@pytest.fixture
def split_folder(tmp_path) -> Path:
    root = tmp_path / "splits"
    make_folder(root, 6, split="train")
    make_folder(root, 2, split="val", start=20)
    make_folder(root, 2, split="test", start=40)
    return root


@pytest.fixture
def mixed_folder(tmp_path) -> Path:
    """Every mode featx must read, plus unreadable files that must be skipped and reported."""
    root = make_folder(tmp_path / "mixed", 4)
    normal = root / "NORMAL"
    save(normal / "gray.png", xray_like(1))
    sixteen = (xray_like(2).astype(np.uint16) * 16)  # 12-bit data in a 16-bit file
    Image.fromarray(sixteen).save(normal / "sixteen.png")
    rgba = np.dstack([np.stack([xray_like(3)] * 3, -1), np.full((48, 64), 200, np.uint8)])
    save(normal / "rgba.png", rgba, mode="RGBA")
    Image.fromarray(xray_like(4)).convert("RGB").convert("P").save(normal / "palette.bmp")
    Image.fromarray(np.stack([xray_like(5)] * 3, -1)).convert("CMYK").save(normal / "cmyk.JPG")
    save(normal / "tiff16.tif", sixteen)
    good = (normal / "IM-1000-0001.jpeg").read_bytes()
    (normal / "truncated.jpeg").write_bytes(good[: len(good) // 2])
    (normal / "empty.jpg").write_bytes(b"")
    (normal / "notes.jpg").write_text("this is a text file, not an image\n")
    return root


def one_line_error(result) -> str:
    """The CLI's contract for bad input: non-zero exit, one line, no traceback."""
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    lines = [l for l in result.output.splitlines() if l.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: "), result.output
    return lines[0]


# --- feature caches from given arrays, for heads and comparisons ------------------------------

CONFIG = {"backbone": "toy", "timm_model": "toy", "numerics": "timm", "weights_sha256": "0" * 64,
          "data_config": {"input_size": [3, 32, 32]}, "layer": "pooled", "tta": "none", "decode": "featx-decode-1",
          "data_root": "/nowhere", "config_hash": "toy0000000"}


def toy_features(n=120, d=8, classes=2, seed=0, signal=1.5):
    """Gaussian blobs: class c is shifted by `signal` along feature c."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    X = rng.normal(size=(n, d)).astype(np.float32)
    X[np.arange(n), y] += signal
    return X, y


def write_store(path, X, y, split, classes=("NORMAL", "PNEUMONIA"), config=None, salt: int = 0):
    """A feature cache as extract would leave it, from given arrays (split: names per row).

    `salt` changes the recorded file bytes (sha1), as if the images were different files."""
    n = len(y)
    rows = RowTable(path=[f"{classes[c]}/img{i}.png" for i, c in enumerate(y)], label=np.asarray(y, np.int16),
                    split=np.array([SPLITS.index(s) for s in split], np.int8),
                    group=[f"patient{i // 2}" for i in range(n)], sha1=[f"{i + salt * 10**6:040x}" for i in range(n)],
                    size=np.ones(n, np.int64), mtime_ns=np.ones(n, np.int64))
    create_store(path, {**CONFIG, **(config or {})}, list(classes), rows, X.shape[1])
    with StoreWriter(path) as writer:
        writer.write(np.arange(n), X)
    return featx.FeatureStore(path)


def three_way(n=150):
    """Each row's split, a third each, not aligned with the classes."""
    return np.random.default_rng(7).permutation(np.array(["train", "val", "test"] * (n // 3)))


def final_error(result) -> str:
    """For failures after a run has started (and logged progress): the last line is the one error."""
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error: "), result.output
    return last


def _one_thread_env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread everywhere: the same kernels, the same bits


def torchrun(nproc: int, *args, script: str | None = None):
    """`torchrun --standalone --nproc_per_node N -m featx ARGS` (or a wrapper SCRIPT), one thread a process."""
    entry = ["-m", "featx"] if script is None else [script]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           *entry, *map(str, args)]
    return subprocess.run(cmd, env=_one_thread_env(), capture_output=True, text=True, timeout=300)


def single(*args):
    """`python -m featx ARGS` in a fresh process with one thread, to compare with `torchrun`."""
    return subprocess.run([sys.executable, "-m", "featx", *map(str, args)], env=_one_thread_env(),
                          capture_output=True, text=True, timeout=300)
