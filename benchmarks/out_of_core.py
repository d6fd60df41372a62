"""Out-of-core heads against in-memory heads: time, peak memory, and how close the models are.

Each variant runs `featx.fit` in its own process and reports that process's peak resident
memory (VmHWM); a process that only imports featx, scikit-learn and LightGBM gives the floor.
Side by side, in one run:
  (a) logreg in memory (scikit-learn lbfgs)        (b) logreg --out-of-core --solver lbfgs
  (c) logreg --out-of-core --solver sgd
  (d) lightgbm in memory (LGBMClassifier)          (e) lightgbm --out-of-core (lightgbm.Sequence)
For (b, c) against (a) and (e) against (d): the chosen hyperparameters, validation ROC-AUC and
accuracy, and the largest difference in a validation probability.

    python benchmarks/out_of_core.py --features cache/<dataset>/<backbone>-<hash>.h5
    python benchmarks/out_of_core.py --rows 60000 --dim 1024    # a generated cache of that size
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHILD = r"""
import json, re, sys, time
import featx.heads.fitting, sklearn, lightgbm
def peak_mib():  # this process's own high-water mark (ru_maxrss would carry the parent's over exec)
    return int(re.search(r"VmHWM:\s+(\d+) kB", open("/proc/self/status").read()).group(1)) / 1024
args = json.loads(sys.argv[1])
if args.pop("imports_only", False):
    print(json.dumps({"peak": peak_mib()})); sys.exit()
started = time.perf_counter()
r = featx.heads.fitting.fit(args.pop("features"), log=lambda m: None, **args)[0]
print(json.dumps({"seconds": time.perf_counter() - started, "params": r.params, "artifact": str(r.artifact),
                  "auc": r.metrics["val"]["roc_auc"], "accuracy": r.metrics["val"]["accuracy"], "peak": peak_mib()}))
"""


def run(args: dict) -> tuple[dict, float]:
    """featx.fit(**args) in a fresh process: its result and its peak resident memory in MiB."""
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], stdout=subprocess.PIPE, text=True)
    if proc.returncode:
        raise SystemExit(f"variant {args} failed")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result, result["peak"]


def val_proba(artifact: str) -> np.ndarray:
    return np.load(Path(artifact).with_suffix(".predictions.npz"))["val__proba"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", help="A feature cache with a validation split.")
    parser.add_argument("--rows", type=int, default=60000, help="Rows of the generated cache (without --features).")
    parser.add_argument("--dim", type=int, default=1024, help="Feature width of the generated cache.")
    parser.add_argument("--heads", default="logreg,lightgbm", help="Which heads' variants to run.")
    opts = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="featx-ooc-"))
    if opts.features:
        features = opts.features
    else:
        sys.path.insert(0, str(Path(__file__).parent))
        from fit_speed import make_cache

        features = str(make_cache(tmp / "generated.h5", opts.rows, opts.dim, with_val=True).path)
    import featx

    store = featx.FeatureStore(features)
    size = store.n_rows * store.num_features * 4 / 2**20
    print(f"{features}: {store.n_rows} x {store.num_features} float32 = {size:.0f} MiB of features")
    _, floor = run({"imports_only": True})
    print(f"floor (imports only): {floor:.0f} MiB peak\n")
    variants = [("a", "logreg in memory", {"head": "logreg"}),
                ("b", "logreg out of core, lbfgs", {"head": "logreg", "out_of_core": True, "solver": "lbfgs"}),
                ("c", "logreg out of core, sgd", {"head": "logreg", "out_of_core": True, "solver": "sgd"}),
                ("d", "lightgbm in memory", {"head": "lightgbm"}),
                ("e", "lightgbm out of core", {"head": "lightgbm", "out_of_core": True})]
    results = {}
    print(f"{'':<3}{'variant':<28}{'seconds':>8}{'peak MiB':>10}{'above floor':>12}{'val AUC':>9}{'val acc':>9}"
          f"{'max |dp|':>10}  chosen")
    for key, name, args in [v for v in variants if v[2]["head"] in opts.heads.split(",")]:
        result, peak = run({"features": features, "models_dir": str(tmp / "models"), **args})
        results[key] = result
        reference = {"b": "a", "c": "a", "e": "d"}.get(key)
        dp = "" if reference is None else \
            f"{np.abs(val_proba(result['artifact']) - val_proba(results[reference]['artifact'])).max():10.4f}"
        print(f"({key}) {name:<26}{result['seconds']:8.1f}{peak:10.0f}{peak - floor:12.0f}{result['auc']:9.4f}"
              f"{result['accuracy']:9.4f}{dp:>10}  {result['params']}", flush=True)


if __name__ == "__main__":
    main()
