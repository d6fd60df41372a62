"""The stored validation split: cut once from train by patient group, then reused by every command.

It lives in `<cache>/<dataset>/split.json`. Functions here work on a `data.datasets.Dataset`
(its paths, labels, splits and groups), which they take as an argument rather than import.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from .._core.atomic import write_text_atomic
from .._core.errors import FeatxError


def split_file(cache_dir: Path, ds) -> Path:
    return Path(cache_dir) / ds.key / "split.json"


def read_split(cache_dir: Path, ds) -> dict | None:
    path = split_file(cache_dir, ds)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FeatxError(f"cannot read the stored split {path}: {exc}; delete it to cut a new one") from None


def reuse_split(ds, stored: dict, val_fraction, seed, group_pattern, path: Path) -> None:
    """Every later command sees the same validation split, whatever it is asked."""
    asked = {"val_fraction": val_fraction, "seed": seed if val_fraction is not None else None,
             "group_pattern": group_pattern}
    differs = [k for k, v in asked.items() if v is not None and v != stored[k]]
    if differs:
        raise FeatxError(
            f"this dataset's validation split ({path}) was cut with "
            + ", ".join(f"{k.replace('_', '-')} {stored[k]!r}" for k in differs)
            + "; pass the same values, or delete that file to cut a new split"
        )
    _assign(ds, set(stored["val_groups"]), set(stored["train_groups"]), stored["val_fraction"], stored["seed"])
    ds.split_note = f"validation split reused from {path}"


def cut_split(ds, fraction: float, seed: int, path: Path) -> None:
    if not 0 < fraction < 1:
        raise FeatxError(f"--val-fraction must be between 0 and 1, got {fraction}")
    train_groups = {g for g, s in zip(ds.groups, ds.splits) if s == "train"}
    val_groups = _cut_groups(ds, fraction, seed)
    _assign(ds, val_groups, train_groups - val_groups, fraction, seed)
    record = {"val_fraction": fraction, "seed": seed, "group_pattern": ds.group_pattern, "data": str(ds.root),
              "val_groups": sorted(val_groups), "train_groups": sorted(train_groups - val_groups)}
    write_text_atomic(path, json.dumps(record, indent=1))
    ds.split_note = f"validation split cut by group and stored in {path}"


def _cut_groups(ds, fraction: float, seed: int) -> set[str]:
    """Stratified and group-aware: scikit-learn's StratifiedGroupKFold, one fold kept as validation."""
    from sklearn.model_selection import StratifiedGroupKFold

    train = [i for i, s in enumerate(ds.splits) if s == "train"]
    groups = [ds.groups[i] for i in train]
    n_splits = max(2, round(1 / fraction))
    if len(set(groups)) < n_splits:
        raise FeatxError(
            f"cannot cut a {fraction:.0%} validation split by group: train has only {len(set(groups))} groups"
        )
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    _, val_idx = next(folds.split(np.zeros(len(train)), ds.labels[train], groups))
    return {groups[i] for i in val_idx}


def _assign(ds, val_groups: set[str], train_groups: set[str], fraction: float, seed: int) -> None:
    """Known groups keep their side; a group first seen after the cut goes by a seeded hash of its name."""
    for i, (split, group) in enumerate(zip(ds.splits, ds.groups)):
        if split != "train":
            continue
        if group in val_groups:
            ds.splits[i] = "val"
        elif group not in train_groups:
            digest = hashlib.sha1(f"{seed}:{group}".encode()).digest()
            if int.from_bytes(digest[:8], "big") / 2**64 < fraction:
                ds.splits[i] = "val"
