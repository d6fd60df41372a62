"""What `featx study` costs beyond its units' own work: a heads-only study vs the same fits run directly.

On one dataset whose features are cached, measured in one run, side by side (the fastest of --attempts):
  (a) the fits alone: for each head, `Curve.fit` on every budget the study draws (selection by
      patient-grouped CV, threshold, bootstrap interval on the evaluation split), in one process
  (b) `featx.study` of the same heads, sizes and repeats into an empty folder: the listing, the plan, the
      extraction check, the units saved (with their evaluation predictions), study.csv and study.toml
  (c) the same study again, every unit done: what a gather costs
The ratio (b) / (a) is the overhead (the issue asks <= 1.05); (b) alone is the answer to "how long do
heads-only curves take on this CPU".

    python benchmarks/study_overhead.py --data ../shared/data/chest_xray --val-fraction 0.2 \\
        [--backbone efficientnet_lite0] [--heads logreg,lightgbm] [--sizes 25,50,100,250,500,1000,all] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import featx
from featx.data.budgets import Budget
from featx.studies.label_curves import Curve, Pool
from featx.studies.spec import StudySpec
from featx.studies.study import Plan


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--val-fraction", type=float, default=None)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--heads", default="logreg,lightgbm")
    parser.add_argument("--sizes", default="25,50,100,250,500,1000,all")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache", default="cache")
    parser.add_argument("--attempts", type=int, default=2, help="Each measurement this many times, the fastest kept.")
    args = parser.parse_args()
    spec = StudySpec(data=args.data, backbones=[args.backbone], heads=args.heads, train_sizes=args.sizes.split(","),
                     repeats=args.repeats, val_fraction=args.val_fraction)
    quiet = lambda m: None  # noqa: E731
    store = featx.extract(args.data, args.backbone, val_fraction=args.val_fraction, cache_dir=args.cache,
                          progress=False, log=quiet)  # extracted once, outside both timings
    plan = Plan(spec, Path(args.cache), Path(tempfile.mkdtemp()), None)
    index = {p: i for i, p in enumerate(store.paths("train"))}
    budgets = [Budget(b.n, b.repeat, [index[plan.ds.paths[i]] for i in plan.pool[b.rows]]) for b in plan.budgets]

    def direct():
        pool = Pool(store, "train", plan.evaluate_on)
        for head in spec.heads:
            curve = Curve(pool, head, threshold=spec.threshold, seed=spec.seed, n_boot=spec.n_boot)
            for budget in budgets:
                curve.fit(budget)

    def studied(out):
        featx.study(spec=spec, out=out, cache_dir=args.cache, log=quiet)

    times = {"direct": [], "study": [], "gather": []}
    for attempt in range(args.attempts):
        out = Path(tempfile.mkdtemp()) / "study"
        times["direct"].append(_timed(direct))
        times["study"].append(_timed(lambda: studied(out)))
        times["gather"].append(_timed(lambda: studied(out)))
        shutil.rmtree(out.parent)
    a, b, c = (min(times[k]) for k in ("direct", "study", "gather"))
    fits = len(budgets) * len(spec.heads)
    print(f"{args.backbone} x {', '.join(spec.heads)}: {fits} fits ({len(plan.budgets)} budgets), "
          f"{len(plan.pool)} pool / {len(plan.eval_rows)} {plan.evaluate_on} images")
    print(f"(a) fits alone          {a:8.1f} s")
    print(f"(b) featx.study         {b:8.1f} s   {b / a:.3f}x of (a): overhead {b - a:+.1f} s")
    print(f"(c) study, all done     {c:8.1f} s   (gather only)")


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
