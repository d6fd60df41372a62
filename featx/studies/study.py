"""`featx study`, heads so far (#25): frozen backbones x heads x label budgets x repeats in one command.

Each backbone's features are extracted once (extract reuses its cache). Every fit unit, one head on one
budget of one repeat (featx.studies.label_curves), is saved as it finishes under `out/units/`, named by
what it is made of: the cache's identity, the images' bytes, the head, n, the repeat, the seed, the
evaluation split and the threshold rule. A killed study resumes, a re-run computes nothing, and adding a
size or a head computes only that. The plan is printed before any work; `dry_run` stops there.

The evaluation split is `test` when the data has one, else the validation split cut once from train
(`val_fraction`), which then leaves the pool; no choice of any unit sees it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .._core.atomic import write_csv_atomic, write_text_atomic
from .._core.console import log_line
from .._core.errors import FeatxError
from .._core.hashing import record_hash
from .._core.paths import default_cache_dir
from ..artifacts.format import images_fingerprint
from ..data.datasets import load_dataset
from ..features.extraction import extract
from ..features.lookup import dataset_caches
from ..heads.specs import head_names
from ..models.registry import get_spec
from ..data.budgets import label_budgets
from .label_curves import COLUMNS, Curve, Pool

DEFAULT_SIZES = (25, 50, 100, 250, 500, 1000, "all")


def study(data, *, backbones=("efficientnet_lite0",), heads=("logreg",), train_sizes=DEFAULT_SIZES, repeats: int = 3,
          eval_split: str | None = None, val_fraction: float | None = None, out="featx-study", weights="imagenet",
          seed: int = 0, threshold=0.5, n_boot: int = 1000, cache_dir=None, dry_run: bool = False,
          workers=None, log=None) -> list[dict]:
    """Every (backbone + head, n, repeat) record (label_curves.COLUMNS), also written to `out/study.csv`."""
    log = log or log_line
    backbones, heads = _checked(backbones, heads)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    ds = load_dataset(data, val_fraction=val_fraction, cache_dir=cache_dir)
    evaluate_on = _evaluation_split(ds, eval_split)
    pool = [i for i, s in enumerate(ds.splits) if s == "train"]
    label_budgets(ds.labels[pool], [ds.groups[i] for i in pool], train_sizes, repeats=repeats, seed=seed,
                  classes=ds.classes)  # every size checked before any work
    units_dir = Path(out) / "units"
    _say_plan(ds, backbones, heads, train_sizes, repeats, evaluate_on, cache_dir, weights, log)
    if dry_run:
        return []
    records, computed, started = [], 0, time.perf_counter()
    for backbone in backbones:
        store = extract(data, backbone, weights=weights, val_fraction=val_fraction, cache_dir=cache_dir,
                        workers=workers, progress=False, log=log)
        images = images_fingerprint((p, h) for split in ("train", evaluate_on)
                                    for p, h in zip(store.paths(split), store.sha1s(split)))
        pool = Pool(store, "train", evaluate_on)  # read once for every head
        for head in heads:
            curve = Curve(pool, head, threshold=threshold, seed=seed, n_boot=n_boot)
            for budget in curve.budgets(train_sizes, repeats):
                key = record_hash({"features": store.config["config_hash"], "images": images, "head": curve.name,
                                   "n": budget.n, "repeat": budget.repeat, "seed": seed, "eval": evaluate_on,
                                   "threshold": str(threshold), "n_boot": n_boot}, 16)
                record, fresh = _unit(units_dir / f"{key}.json", curve, budget)
                records.append(record)
                computed += fresh
    log(f"study: {computed} of {len(records)} fits computed now ({time.perf_counter() - started:.1f} s), "
        f"the others read from {units_dir}")
    write_csv_atomic(Path(out) / "study.csv", [{k: _cell(r[k]) for k in COLUMNS} for r in records])
    return records


def _checked(backbones, heads) -> tuple[list[str], list[str]]:
    """Names as lists, each known (one line naming the first unknown one)."""
    backbones = [b.strip() for b in (backbones.split(",") if isinstance(backbones, str) else backbones) if b.strip()]
    heads = [h.strip() for h in (heads.split(",") if isinstance(heads, str) else heads) if h.strip()]
    if not backbones or not heads:
        raise FeatxError("a study needs at least one backbone and one head")
    for backbone in backbones:
        get_spec(backbone, check_timm=False)
    return backbones, [name for head in heads for name in head_names(head)]


def _evaluation_split(ds, asked: str | None) -> str:
    present = set(ds.splits)
    chosen = asked or ("test" if "test" in present else "val")
    if chosen == "train":
        raise FeatxError("--eval-split train: the evaluation split must be one no budget is drawn from (test or val)")
    if chosen not in present:
        hint = "" if asked else "; cut one from train with --val-fraction 0.2"
        raise FeatxError(f"{ds.root} has no {chosen} split to evaluate on{hint}")
    return chosen


def _say_plan(ds, backbones, heads, sizes, repeats, evaluate_on, cache_dir, weights, log) -> None:
    pool = sum(s == "train" for s in ds.splits)
    extracted = [b for b in backbones if any(s.complete for s in
                                             dataset_caches(ds, b, weights, dict.fromkeys(("image_size", "pool",
                                                                                          "layers")), cache_dir))]
    n_sizes = len(set(sizes))
    log(f"plan: {len(backbones)} extractions ({len(extracted)} cached: {', '.join(extracted) or 'none'}); "
        f"{len(backbones)} backbones x {len(heads)} heads x {n_sizes} sizes x {repeats} repeats = "
        f"{len(backbones) * len(heads) * n_sizes * repeats} fits on budgets of the {pool} train images, "
        f"each evaluated on the {sum(s == evaluate_on for s in ds.splits)} {evaluate_on} images")


def _unit(path: Path, curve: Curve, budget) -> tuple[dict, bool]:
    """A unit's record: read back when a previous run saved it, else fitted now and saved atomically."""
    if path.is_file():
        return json.loads(path.read_text()), False
    record = curve.fit(budget)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(record, default=float) + "\n")
    return json.loads(path.read_text()), True


def _cell(value):
    return json.dumps(value, sort_keys=True) if isinstance(value, dict) else value
