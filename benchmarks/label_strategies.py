"""Which images to label first: each selection strategy's learning curve against random draws, on cached
frozen features, with the study's own pieces (featx.labelling.strategies.nested_selection picks the images,
studies.label_curves.Curve chooses and fits the head on them alone and scores it on the evaluation split).

The baseline, random, is the study's own budgets (data.budgets: whole patients, stratified by class). Every
other strategy sees no label before it has chosen an image; labels it asked for to reach two patients of
each class are counted in n_images. Per strategy and size: mean ROC-AUC and balanced accuracy over the
repeats with a 95% t-interval over them; then "labels saved" as the study's verdict says it.

    python benchmarks/label_strategies.py CACHE.h5 [CACHE.h5 ...] [--sizes 10,20,40,80,160,320] [--repeats 5]
        [--strategies random,typiclust,probcover,coreset,margin,badge] [--eval val] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from featx.data.budgets import Budget, label_budgets
from featx.features.store import FeatureStore
from featx.heads.selection import select_head
from featx.labelling.strategies import nested_selection
from featx.studies.label_curves import Curve, Pool
from featx.studies.strategy_gains import labels_saved, strategy_summary


def curve(pool: Pool, strategy: str, sizes: list[int], repeats: int) -> list[dict]:
    backbone = pool.store.config["backbone"]
    head = Curve(pool, "logreg", threshold=0.5, seed=0, n_boot=200)
    rows = []
    for repeat in range(repeats):
        started = time.perf_counter()
        if strategy == "random":
            chosen = {b.n: b.rows for b in label_budgets(pool.y, pool.groups, sizes, repeats=repeat + 1)
                      if b.repeat == repeat}
        else:
            fit = lambda r: select_head("logreg", pool.X[r], pool.y[r], pool.groups[r], seed=0).estimator.predict_proba(pool.X)  # noqa: E731
            chosen = nested_selection(strategy, pool.X, pool.y, pool.groups, sizes, fit_proba=fit, seed=repeat)
        choosing = time.perf_counter() - started
        for n in sizes:
            record = head.fit(Budget(n, repeat, np.sort(chosen[n])))
            rows.append({"method": f"{backbone} + logreg", "strategy": strategy, "n": n, "n_images": int(len(chosen[n])),
                         "repeat": repeat, "roc_auc": record["roc_auc"], "balanced_accuracy":
                         record["balanced_accuracy"], "choose_seconds": choosing})
        print(f"{backbone} {strategy} repeat {repeat}: chosen in {choosing:.1f} s; ROC-AUC "
              + " ".join(f"{r['roc_auc']:.3f}" for r in rows[-len(sizes):]), flush=True)
    return rows


def plot(rows: list[dict], target: Path) -> None:
    """Mean ROC-AUC against the labels seen (log scale), one panel per backbone, one line per strategy,
    with the repeats' 95% intervals as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from featx.studies.strategy_gains import over_repeats

    methods = sorted({r["method"] for r in rows})
    fig, axes = plt.subplots(1, len(methods), figsize=(6 * len(methods), 4.5), squeeze=False)
    for ax, method in zip(axes[0], methods):
        for strategy in dict.fromkeys(r["strategy"] for r in rows):
            cells = [[r for r in rows if r["method"] == method and r["strategy"] == strategy and r["n"] == n]
                     for n in sorted({r["n"] for r in rows})]
            cells = [c for c in cells if c]
            if not cells:
                continue
            x = [np.mean([r["n_images"] for r in c]) for c in cells]
            stats = [over_repeats([r["roc_auc"] for r in c]) for c in cells]
            mean = np.array([s[0] for s in stats])
            err = np.array([[m - (s[1] if s[1] is not None else m), (s[2] if s[2] is not None else m) - m]
                            for m, s in zip(mean, stats)]).T
            ax.errorbar(x, mean, yerr=err, marker="o", capsize=3, label=strategy,
                        linewidth=2.5 if strategy == "random" else 1.2, color="black" if strategy == "random" else None)
        ax.set_xscale("log")
        ax.set_xlabel("labels seen (mean over repeats)")
        ax.set_ylabel("ROC-AUC on the evaluation split")
        ax.set_title(method)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(target, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("caches", nargs="+")
    parser.add_argument("--sizes", default="10,20,40,80,160,320")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--strategies", default="random,typiclust,probcover,coreset,margin,badge")
    parser.add_argument("--eval", default="val")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--plot", nargs="*", default=None, help="Only draw the curves of these saved JSON results.")
    args = parser.parse_args()
    if args.plot is not None:
        rows = [r for f in args.plot for r in json.loads(Path(f).read_text())]
        plot(rows, Path(args.out) / "label_strategies.png")
        for line in strategy_summary(rows) + labels_saved(rows):
            print(line)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in args.caches:
        pool = Pool(FeatureStore(path), "train", args.eval)
        print(f"{path}: pool {len(pool.y)} train images, evaluated on {len(pool.y_eval)} {args.eval} images")
        for strategy in args.strategies.split(","):
            rows += curve(pool, strategy, sizes, args.repeats)
            (out / "label_strategies.json").write_text(json.dumps(rows, indent=0))
    for line in strategy_summary(rows) + labels_saved(rows):
        print(line)


if __name__ == "__main__":
    main()
