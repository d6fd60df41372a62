"""Whether a cache still describes its images: none added, deleted or changed since it was made, no
image twice (data.leakage), and each in the split that the stored split gives it.

`featx fit` and `featx shift` check this before training on a cache, so a stale cache is refused with
the command that updates it, instead of being trained on without a word.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from .._core.errors import FeatxError
from ..data.datasets import STORED_SPLITS, UNLABELLED, Dataset
from ..data.leakage import check_copies
from ..data.splits import SPLIT_FILE, read_split_file, stored_splits
from .planning import row_table
from .store import FeatureStore, RowTable


def check_fresh(store: FeatureStore, ds: Dataset | None, update: str) -> None:
    """Refuse `store` when its images changed, or its split differs from the stored one. `ds`: the
    dataset as listed now (fit --backbone --data), or None to check the cache's own files on disk
    (fit --features; a cache whose whole data folder is elsewhere, as in a project copied without its
    images, is taken as it is). `update`: the extract command that brings the cache up to date."""
    held = store.row_table()
    listed = ds is not None
    if ds is None:
        ds = _dataset_of(store, held)
        if ds is None:  # the images are not here: the cache's own record still tells copies apart
            check_copies(held.path, held.label, [STORED_SPLITS[c] for c in held.split], held.sha1, store.classes,
                         str(store.path))
            return
    now = row_table(ds, held)
    changes = _changes(held, now, ds.labels)
    if changes:
        raise FeatxError(f"{store.path} is out of date: {changes} since it was made; run `{update}` to update it "
                         "(unchanged images keep their features)")
    cached = [STORED_SPLITS[c] for c in held.split]
    split_now = dict(zip(ds.paths, ds.splits))  # by path: a manifest may list the same images in another order
    expected = [split_now[p] for p in held.path] if listed else _stored(store, held, cached)
    moved = [i for i, (a, b) in enumerate(zip(cached, expected)) if a != b]
    if moved:
        i = moved[0]
        raise FeatxError(f"{store.path}: {len(moved)} images are not in the split the stored validation split gives "
                         f"them (e.g. {held.path[i]}: {cached[i]} in the cache, {expected[i]} in split.json), as when "
                         f"two runs cut the split at once; run `{update}` to update the cache")


def newly_labelled(store: FeatureStore, ds: Dataset) -> int:
    """How many images got a label since the cache was made, when that is every change: their bytes were cached
    without a label, and are listed now with one (under the same path or, moved into a class folder, another).
    0 when anything else changed (featx fit then refuses the cache as out of date)."""
    held = store.row_table()
    now = row_table(ds, held)
    waiting = STORED_SPLITS.index(UNLABELLED)
    before = defaultdict(list)  # bytes -> the cached rows holding them (copies share their bytes)
    for p, h, label, c in zip(held.path, held.sha1, held.label, held.split):
        before[h].append((p, int(label), c))
    labelled = 0
    for p, h, label in zip(now.path, now.sha1, now.label):
        rows = before.get(h)
        if not rows:
            return 0
        same = next((r for r in rows if r[:2] == (p, int(label))), None)
        if same is None and (label < 0 or all(c != waiting for _, _, c in rows)):
            return 0
        rows.remove(same or next(r for r in rows if r[2] == waiting))
        labelled += same is None
    return 0 if any(c != waiting for rows in before.values() for _, _, c in rows) else labelled


def _dataset_of(store: FeatureStore, held: RowTable) -> Dataset | None:
    """The cache's rows as a dataset at its recorded root, or None when that folder is gone."""
    root = store.data_root
    if not root.is_dir():
        return None
    return Dataset(root, store.path.parent.name, list(store.classes), list(held.path), held.label.astype(np.int64),
                   [STORED_SPLITS[c] for c in held.split], list(held.group))


def _stored(store: FeatureStore, held: RowTable, cached: list[str]) -> list[str]:
    """Each row's split under the split.json beside the cache (the cache's own splits where there is none)."""
    stored = read_split_file(store.path.parent / SPLIT_FILE)
    return cached if stored is None else stored_splits(cached, list(held.group), stored)


def _changes(held: RowTable, now: RowTable, labels) -> str:
    """What differs between the cache's rows and the files now, in words ("" when nothing does)."""
    index = {p: i for i, p in enumerate(held.path)}
    present = set(now.path)
    added = [p for p in now.path if p not in index]
    gone = [p for p in held.path if p not in present]
    deleted, changed, relabelled = [], [], []
    for j, p in enumerate(now.path):
        i = index.get(p)
        if i is None:
            continue
        if now.size[j] < 0 and held.size[i] >= 0:
            deleted.append(p)
        elif now.sha1[j] != held.sha1[i] and held.sha1[i]:
            changed.append(p)
        elif int(labels[j]) != int(held.label[i]) or now.group[j] != held.group[i]:
            relabelled.append(p)
    parts = [(added, "added"), (gone + deleted, "deleted"), (changed, "changed"),
             (relabelled, "relabelled or regrouped")]
    said = [f"{len(paths)} images {word}" for paths, word in parts if paths]
    if not said:
        return ""
    example = next(paths[0] for paths, _ in parts if paths)
    return ", ".join(said) + f" (e.g. {example})"
