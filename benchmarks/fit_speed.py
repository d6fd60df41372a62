"""How long `featx fit` takes, selection included, on features the size of the X-ray training set.

5,216 x 2,048 float32 features (Xception on the Kermany train set), written to a real feature
cache, with a validation split cut by patient as `--val-fraction 0.2` does (4,173 / 1,043).
Random features with a weak linear signal: timing is what is measured here, not accuracy.

Measured in one run, side by side:
  (a) the baseline every notebook has: LogisticRegression(C=1) fitted once on train, no selection
  (b) featx.fit --head logreg: 7 values of C chosen on validation, threshold, metrics, artifact
  (c) featx.fit --head all: six heads, each with its grid
  (d) the `featx fit --head logreg` command in a fresh process (start-up included)
Also, with --cv: (e) featx.fit --head logreg without a validation split (5-fold group CV).

    python benchmarks/fit_speed.py [--rows 5216] [--dim 2048] [--cv]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

import featx
from featx.data.datasets import SPLITS
from featx.features.store import RowTable, StoreWriter, create_store


def make_cache(path: Path, n: int, d: int, with_val: bool, seed: int = 0) -> featx.FeatureStore:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    y = ((X @ rng.standard_normal(d)) * 0.05 + rng.standard_normal(n) > 0.6).astype(np.int16)  # about 3:1
    groups = [f"person{i // 2}" for i in range(n)]
    val = (np.arange(n) // 2) % 5 == 0 if with_val else np.zeros(n, bool)  # a fifth of the patients
    rows = RowTable(path=[f"{'PNEUMONIA' if c else 'NORMAL'}/{i}.jpeg" for i, c in enumerate(y)], label=y,
                    split=np.where(val, SPLITS.index("val"), SPLITS.index("train")).astype(np.int8), group=groups,
                    sha1=[f"{i:040x}" for i in range(n)], size=np.ones(n, np.int64), mtime_ns=np.ones(n, np.int64))
    config = {"backbone": "xception", "timm_model": "legacy_xception.tf_in1k", "numerics": "keras",
              "weights_sha256": "benchmark", "data_config": {}, "layer": "pooled", "tta": "none",
              "decode": "featx-decode-1", "data_root": "/benchmark", "config_hash": "bench00000"}
    create_store(path, config, ["NORMAL", "PNEUMONIA"], rows, d)
    with StoreWriter(path) as writer:
        writer.write(np.arange(n), X)
    return featx.FeatureStore(path)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5216)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--cv", action="store_true", help="also time selection by group k-fold (no val split)")
    args = parser.parse_args()
    quiet = {"log": lambda message: None}

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = make_cache(tmp / "xception-bench.h5", args.rows, args.dim, with_val=True)
        X, y = store.arrays("train")
        print(f"features {args.rows} x {args.dim} float32; train {len(y)}, val {len(store.arrays('val')[1])}; "
              f"{featx.__version__}, 2-core timings are noisy: compare within this run")

        def baseline():
            Xs = StandardScaler().fit_transform(X)
            return LogisticRegression(max_iter=2000, tol=1e-3).fit(Xs, y)

        t_a, _ = timed(baseline)
        t_b, _ = timed(lambda: featx.fit(store, head="logreg", threshold="youden", models_dir=tmp / "m", **quiet))
        t_c, results = timed(lambda: featx.fit(store, head="all", threshold="youden", models_dir=tmp / "m", **quiet))
        cmd = [sys.executable, "-m", "featx", "fit", "--features", str(store.path), "--head", "logreg",
               "--models", str(tmp / "cli")]
        t_d, proc = timed(lambda: subprocess.run(cmd, capture_output=True, text=True))
        if proc.returncode:
            sys.exit(proc.stderr)

        print(f"(a) LogisticRegression(C=1) once, no selection  {t_a:6.1f} s")
        print(f"(b) featx.fit --head logreg (7 C, threshold)    {t_b:6.1f} s   b/a = {t_b / t_a:.2f}   target < 5 s")
        print(f"(c) featx.fit --head all                        {t_c:6.1f} s   target < 60 s")
        for r in results:
            print(f"      {r.head:<9} {r.train_seconds:6.1f} s selecting   chose {r.params}")
        print(f"(d) `featx fit --head logreg`, fresh process    {t_d:6.1f} s")
        if args.cv:
            cv_store = make_cache(tmp / "xception-cv.h5", args.rows, args.dim, with_val=False)
            t_e, _ = timed(lambda: featx.fit(cv_store, head="logreg", models_dir=tmp / "m", **quiet))
            print(f"(e) featx.fit --head logreg, 5-fold group CV    {t_e:6.1f} s   ({len(cv_store.arrays('train')[1])} train)")


if __name__ == "__main__":
    main()
