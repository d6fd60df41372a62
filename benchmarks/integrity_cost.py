"""What featx's checks against silent wrong answers cost, next to the work they guard, in one run.

On a real image folder and one of its feature caches (made by `featx extract --val-fraction ...`):
  (a) listing the dataset (load_dataset, the split reused): every command pays it
  (b) hashing every image's bytes, as a first --val-fraction cut now does to keep copies together
      (timed twice: the second read comes from the page cache, as on a re-run)
  (c) the copy check itself (data.leakage.check_copies), given the sha1s
  (d) check_fresh: a cache against its images (stat every file, hash the changed ones, copies, split),
      which `featx fit` runs before training
  (e) `featx.fit(..., head="logreg")` on that cache, the work (d) guards (its own check included)
  (f) featx.load of the head: the sidecar's digest and the model's bytes checked once

    python benchmarks/integrity_cost.py --data ../shared/data/chest_xray --cache cache [--backbone efficientnet_lite0]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import featx
from featx.data.files import sha1_of_files
from featx.data.leakage import check_copies
from featx.features.freshness import check_fresh
from featx.features.store import find_caches


def timed(fn, repeat: int = 3) -> tuple[float, object]:
    """The fastest of `repeat` runs (seconds) and the last result: this machine is noisy."""
    best, out = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - started)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--cache", required=True, help="The cache folder extract wrote to.")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    args = parser.parse_args()

    listing, ds = timed(lambda: featx.load_dataset(args.data, cache_dir=args.cache))
    files = [ds.absolute(p) for p in ds.paths]
    cold = timed(lambda: sha1_of_files(files), repeat=1)[0]
    warm, sha1s = timed(lambda: sha1_of_files(files))
    copies = timed(lambda: check_copies(ds.paths, ds.labels, ds.splits, sha1s, ds.classes, "data"))[0]
    [store] = find_caches(Path(args.cache) / ds.key, {"backbone": args.backbone}, recursive=False)
    fresh = timed(lambda: check_fresh(store, ds, "featx extract ..."))[0]
    with tempfile.TemporaryDirectory() as models:
        fit, results = timed(lambda: featx.fit(store, head="logreg", models_dir=models, log=lambda m: None))
        loading = timed(lambda: featx.load(results[0].artifact))[0]
    n = len(ds)
    print(f"{n} images ({args.data}), cache {store.path.name}")
    print(f"(a) listing the dataset           {listing:7.3f} s")
    print(f"(b) hashing every image           {cold:7.3f} s first read, {warm:.3f} s again "
          f"({warm / listing:.1f}x the listing)")
    print(f"(c) the copy check, given sha1s   {copies:7.3f} s")
    print(f"(d) check_fresh (cache vs images) {fresh:7.3f} s")
    print(f"(e) featx.fit --head logreg       {fit:7.3f} s   -> (d) is {fresh / fit:.1%} of it")
    print(f"(f) featx.load of that head       {loading:7.3f} s")


if __name__ == "__main__":
    main()
