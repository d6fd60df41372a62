"""Extraction on a CPU: 2 processes x 1 thread (torchrun) against 1 process x 2 threads.

Both are the `featx extract` command on the same images, each into a fresh cache, run one
after the other in this one run; wall time includes start-up, model build and the shard merge.
  (a) python -m featx extract ...                                   OMP_NUM_THREADS=2
  (b) torchrun --standalone --nproc_per_node 2 -m featx extract ... OMP_NUM_THREADS=1
Reported: images/s of each, b/a, and how far the two caches' features are apart (different
thread counts may sum in a different order; the same thread count gives identical bits, which
tests/test_sharding.py checks).

    FEATX_WEIGHTS_DIR=../shared/weights python benchmarks/torchrun_extract.py \\
        --data ../shared/data/chest_xray_fullres/train --backbone efficientnet_lite0
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from extract_speed import subset  # noqa: E402


def timed_run(cmd: list[str], threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stderr[-2000:]}")
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--limit", type=int, default=None, help="about this many images, evenly spread")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="featx-torchrun-"))
    n = subset(args.data, args.limit, tmp / "data")
    common = ["extract", "--data", str(tmp / "data"), "--backbone", args.backbone, "--batch-size",
              str(args.batch_size), "--workers", "0", "--no-progress", "--cache", str(tmp / "cache")]
    one = timed_run([sys.executable, "-m", "featx", *common, "--output", str(tmp / "one.h5")], threads=2)
    two = timed_run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                     "-m", "featx", *common, "--output", str(tmp / "two.h5")], threads=1)
    with h5py.File(tmp / "one.h5") as a, h5py.File(tmp / "two.h5") as b:
        fa, fb = a["features"][:], b["features"][:]
        done = a["done"][:].astype(bool) & b["done"][:].astype(bool)
    cosine = (fa * fb).sum(1)[done] / (np.linalg.norm(fa, axis=1) * np.linalg.norm(fb, axis=1))[done]
    print(f"{n} images from {args.data}, {args.backbone}, batch {args.batch_size}, no decode workers")
    print(f"(a) 1 process x 2 threads   {one:7.1f} s  {n / one:6.1f} img/s")
    print(f"(b) 2 processes x 1 thread  {two:7.1f} s  {n / two:6.1f} img/s")
    print(f"b/a = {one / two:.2f}; features: max |diff| {np.abs(fa - fb)[done].max():.2e}, "
          f"cosine min {cosine.min():.6f}")


if __name__ == "__main__":
    main()
