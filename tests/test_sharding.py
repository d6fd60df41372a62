"""`torchrun -m featx extract`: ranks take disjoint blocks, write shards, and end in one ordinary cache."""

from __future__ import annotations

import textwrap

import h5py
import numpy as np
import pytest

from conftest import TINY, make_folder, single, torchrun

ARGS = ["--backbone", TINY, "--weights", "random", "--batch-size", "4", "--workers", "0", "--no-progress"]


def _arrays(path):
    with h5py.File(path, "r") as f:
        return f["features"][:], f["done"][:], f["path"][:]


@pytest.fixture
def data(tmp_path):
    root = make_folder(tmp_path / "data", 11)  # 22 images: blocks of 4 do not divide evenly
    (root / "NORMAL" / "broken.jpeg").write_bytes(b"\xff\xd8 nope")
    return root


@pytest.mark.slow
def test_two_processes_equal_one(data, tmp_path):
    one = single("extract", "--data", data, *ARGS, "--output", tmp_path / "one.h5")
    assert one.returncode == 0, one.stderr
    two = torchrun(2, "extract", "--data", data, *ARGS, "--output", tmp_path / "two.h5")
    assert two.returncode == 0, two.stderr
    a, b = _arrays(tmp_path / "one.h5"), _arrays(tmp_path / "two.h5")
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and list(a[2]) == list(b[2])
    assert a[1].sum() == 22 and not list(tmp_path.glob("two.h5.shard*"))
    assert two.stdout.count("two.h5") == 1  # rank 0 speaks for all
    assert "1 unreadable" in two.stderr and "broken.jpeg" in two.stderr


@pytest.mark.slow
def test_a_killed_rank_resumes_from_its_shard(data, tmp_path):
    reference = single("extract", "--data", data, *ARGS, "--output", tmp_path / "ref.h5")
    assert reference.returncode == 0, reference.stderr
    killer = tmp_path / "kill_rank1.py"
    killer.write_text(textwrap.dedent("""
        import os, signal, sys
        import featx.features.store as store
        original, calls = store.StoreWriter.write, [0]
        def write(self, rows, features):
            original(self, rows, features)
            calls[0] += 1
            if os.environ["RANK"] == "1" and calls[0] == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        store.StoreWriter.write = write
        from featx.cli import main
        sys.argv = ["featx", *sys.argv[1:]]
        main()
    """))
    out = tmp_path / "cut.h5"
    killed = torchrun(2, "extract", "--data", data, *ARGS, "--output", out, script=str(killer))
    assert killed.returncode != 0
    assert list(tmp_path.glob("cut.h5.shard*"))  # work in flight is kept in shards
    resumed = single("extract", "--data", data, *ARGS, "--output", out)  # any world size may resume
    assert resumed.returncode == 0, resumed.stderr
    assert "merged the finished rows" in resumed.stderr
    a, b = _arrays(tmp_path / "ref.h5"), _arrays(out)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not list(tmp_path.glob("cut.h5.shard*"))
