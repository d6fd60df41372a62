"""The stored validation split: cut once from train by patient group, then reused by every command.

It lives in `<cache>/<dataset>/split.json`. Functions here work on a `data.datasets.Dataset`
(its paths, labels, splits and groups), which they take as an argument rather than import.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from .._core.atomic import write_text_atomic
from .._core.errors import FeatxError
from .files import file_contents
from .leakage import EMPTY_SHA1


SPLIT_FILE = "split.json"


def split_file(cache_dir: Path, ds) -> Path:
    return Path(cache_dir) / ds.key / SPLIT_FILE


def read_split(cache_dir: Path, ds) -> dict | None:
    return read_split_file(split_file(cache_dir, ds))


def read_split_file(path: Path) -> dict | None:
    """The stored split at `path`, or None where there is none."""
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
    ds.split_note = f"validation split reused from {path} ({_share(ds, stored['val_fraction'])})"


def cut_split(ds, fraction: float, seed: int, path: Path | None) -> None:
    """Cut `fraction` of train into validation by whole patient groups, byte-identical copies kept
    on one side with the groups they link; stored at `path` (None: not stored)."""
    if not 0 < fraction < 1:
        raise FeatxError(f"--val-fraction must be between 0 and 1, got {fraction}")
    train_groups = {g for g, s in zip(ds.groups, ds.splits) if s == "train"}
    val_groups = _cut_groups(ds, fraction, seed, _train_contents(ds))
    _assign(ds, val_groups, train_groups - val_groups, fraction, seed)
    if path is None:  # a dry run: the split is shown, not fixed
        ds.split_note = f"validation split cut by patient group ({_share(ds, fraction)}), not stored (a dry run)"
        return
    record = {"val_fraction": fraction, "seed": seed, "group_pattern": ds.group_pattern, "data": str(ds.root),
              "val_groups": sorted(val_groups), "train_groups": sorted(train_groups - val_groups)}
    write_text_atomic(path, json.dumps(record, indent=1))
    ds.split_note = f"validation split cut by patient group ({_share(ds, fraction)}), stored in {path}"


def _train_contents(ds) -> dict[int, str]:
    """sha1 of each train image's bytes, by row; kept in `ds.content` with the file's size and mtime, so
    that extraction does not hash them again."""
    rows = [i for i, s in enumerate(ds.splits) if s == "train"]
    paths = [ds.paths[i] for i in rows]
    size, mtime, sha1 = file_contents(ds.root, paths, ds.content, skip=ds.problems)
    ds.content.update({p: (int(a), int(b), h) for p, a, b, h in zip(paths, size, mtime, sha1) if h})
    return dict(zip(rows, sha1))


def _share(ds, fraction: float) -> str:
    """The achieved share of the images cut from train, next to the one asked for."""
    n_val = sum(s == "val" for s in ds.splits)
    n = n_val + sum(s == "train" for s in ds.splits)
    return f"{n_val} of {n} train images, {n_val / max(n, 1):.1%}; asked {fraction:.1%}"


def _cut_groups(ds, fraction: float, seed: int, digests: dict[int, str]) -> set[str]:
    """Whole patient groups for validation, as close as groups allow to `fraction` of each class.

    Groups that byte-identical files link (`digests`: sha1 by train row) move together, as one unit.
    A seeded local search: units in a seeded random order, each moved to (or back from) validation
    when that brings the per-class counts and the total closer to their targets, pass after pass until
    nothing moves. Every class ends within about one group of `fraction` of its images (scikit-learn's
    StratifiedGroupKFold can only cut 1/k, e.g. 0.35 for 0.3).
    """
    train = [i for i, s in enumerate(ds.splits) if s == "train"]
    names = sorted({ds.groups[i] for i in train})
    if len(names) < 2:
        raise FeatxError(f"cannot cut a {fraction:.0%} validation split by group: train has only "
                         f"{len(names)} patient group; add images, or give a validation folder")
    units = _linked_groups(ds, names, digests)
    if len(units) < 2:
        raise FeatxError(f"cannot cut a {fraction:.0%} validation split by group: byte-identical copies link "
                         f"all {len(names)} patient groups of train into one; remove the copies")
    index = {g: k for k, g in enumerate(names)}
    per_group = _class_counts(ds, train, names)
    counts = np.array([per_group[[index[g] for g in unit]].sum(0) for unit in units])
    target = fraction * counts.sum(0)

    def cost(taken):
        return float(((taken - target) ** 2).sum() + (taken.sum() - target.sum()) ** 2)

    order = np.random.default_rng(seed).permutation(len(units))  # not largest first: val would hold the
    # patients with most images, a non-random sample that `featx shift` sees (domain AUC 0.57 on Kermany)
    taken, chosen = np.zeros(counts.shape[1]), np.zeros(len(units), bool)
    for _ in range(20):
        moved = False
        for g in order:
            step = -counts[g] if chosen[g] else counts[g]
            if cost(taken + step) < cost(taken):
                taken, chosen[g], moved = taken + step, not chosen[g], True
        if not moved:
            break
    if not chosen.any() or chosen.all():  # both sides need a group
        chosen[order[-1]] = not chosen[order[-1]]
    return {g for u in np.flatnonzero(chosen) for g in units[u]}


def _linked_groups(ds, names: list[str], digests: dict[int, str]) -> list[list[str]]:
    """The groups as units: each group alone, except groups holding byte-identical files, joined.
    Units are sorted by their first group, so without copies they are `names`, in order."""
    parent = {g: g for g in names}

    def root(g: str) -> str:
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    first_group: dict[str, str] = {}
    for row, digest in digests.items():
        if not digest or digest == EMPTY_SHA1:
            continue
        group = ds.groups[row]
        if digest in first_group:
            a, b = root(first_group[digest]), root(group)
            if a != b:
                parent[max(a, b)] = min(a, b)
        else:
            first_group[digest] = group
    members = defaultdict(list)
    for g in names:
        members[root(g)].append(g)
    return sorted(members.values(), key=lambda unit: unit[0])


def _class_counts(ds, rows: list[int], names: list[str]) -> np.ndarray:
    """Images per (group, class) among `rows`."""
    index = {g: k for k, g in enumerate(names)}
    counts = np.zeros((len(names), int(np.max(ds.labels)) + 1))
    for i in rows:
        counts[index[ds.groups[i]], ds.labels[i]] += 1
    return counts


def _assign(ds, val_groups: set[str], train_groups: set[str], fraction: float, seed: int) -> None:
    """Known groups keep their side; a group first seen after the cut goes by a seeded hash of its name."""
    for i, (split, group) in enumerate(zip(ds.splits, ds.groups)):
        if split == "train" and _in_val(group, val_groups, train_groups, fraction, seed):
            ds.splits[i] = "val"


def _in_val(group: str, val_groups: set[str], train_groups: set[str], fraction: float, seed: int) -> bool:
    if group in val_groups or group in train_groups:
        return group in val_groups
    digest = hashlib.sha1(f"{seed}:{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def stored_splits(splits: list[str], groups: list[str], stored: dict) -> list[str]:
    """The split of each row under a stored cut, for rows whose split is train or val (a cut exists only
    where the data has no val split of its own, so both were train before it); test rows keep theirs."""
    val, train = set(stored["val_groups"]), set(stored["train_groups"])
    return [s if s not in ("train", "val") else
            "val" if _in_val(g, val, train, stored["val_fraction"], stored["seed"]) else "train"
            for s, g in zip(splits, groups)]
