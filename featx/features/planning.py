"""Planning an extraction: which rows a cache holds, which files changed, which rows are left to compute."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._core.errors import FeatxError
from ..data.datasets import SPLITS, STORED_SPLITS, Dataset
from ..data.files import file_contents
from ..data.leakage import check_copies
from .store import FeatureStore, RowTable, StoreWriter, create_store


def cache_folder(cache_dir: Path, ds: Dataset, corruption=None) -> Path:
    """Where a dataset's caches live. Corrupted copies (featx robustness) go apart, by split, so that
    `fit --backbone` never mistakes them for the clean features and one split's run keeps another's."""
    folder = Path(cache_dir) / ds.key
    if corruption:
        folder = folder / "corrupted" / "+".join(s for s in SPLITS if s in set(ds.splits))
    return folder


def prepare_store(path: Path, ds: Dataset, identity: dict, config: dict, num_features: int, dtype: str,
                  log) -> FeatureStore:
    """Open the store if it matches the dataset; otherwise build it, keeping every reusable row."""
    old = FeatureStore(path) if path.exists() else None
    if old is not None:
        old.check_identity(identity)
        if old.classes != ds.classes and not set(old.classes) <= set(ds.classes):
            raise FeatxError(f"{path} has classes {old.classes}, the data has {ds.classes}; "
                             "use another cache file or delete this one")
    held = old.row_table() if old is not None else None
    rows = row_table(ds, held)
    if held is not None:
        if same_files(held, rows) and old.classes == ds.classes:
            if not np.array_equal(held.split, rows.split):
                with StoreWriter(path) as writer:
                    writer.set_split(rows.split)
            return old
        log(f"{path}: the data changed; rebuilding the cache and keeping the rows of unchanged files")
    return create_store(path, config, ds.classes, rows, num_features, dtype, carry_over=old)


def same_files(held: RowTable, now: RowTable) -> bool:
    """Whether a cache's rows are these files, in this order, with the same bytes, groups and labels."""
    return (held.path == now.path and held.sha1 == now.sha1 and held.group == now.group
            and np.array_equal(held.label, now.label))


def row_table(ds: Dataset, held: RowTable | None) -> RowTable:
    """Stat every file; hash the bytes only of files that are new or whose size or mtime changed (never
    a FIFO or device: ds.problems). The same image in two splits or with two labels is refused, and
    copies within a split are noted on `ds` (data.leakage)."""
    known = dict(ds.content)
    if held is not None:
        known.update({p: (s, m, h) for p, s, m, h in zip(held.path, held.size, held.mtime_ns, held.sha1)})
    size, mtime, sha1 = file_contents(ds.root, ds.paths, known, skip=ds.problems)
    ds.copies_note = check_copies(ds.paths, ds.labels, ds.splits, sha1, ds.classes, str(ds.root))
    return RowTable(path=list(ds.paths), label=ds.labels.astype(np.int16),
                    split=np.array([STORED_SPLITS.index(s) for s in ds.splits], np.int8), group=list(ds.groups),
                    sha1=sha1, size=size, mtime_ns=mtime)


def skip_known_problems(path: Path, store: FeatureStore, ds: Dataset) -> None:
    """Record rows that cannot be read whatever happens (e.g. undecodable names) as skipped."""
    if not ds.problems:
        return
    done, skipped = store.row_status()
    table = store.row_table()
    index = {p: i for i, p in enumerate(table.path)}
    rows = sorted(index[p] for p in ds.problems if p in index and not done[index[p]] and not skipped[index[p]])
    if rows:
        with StoreWriter(path) as writer:
            writer.skip(np.array(rows), [ds.problems[table.path[r]] for r in rows])


def schedule(done: np.ndarray, skipped: np.ndarray, batch_size: int) -> tuple[np.ndarray, list[list[int]]]:
    """Rows to compute, given the cache's row status, grouped in fixed blocks of `batch_size` consecutive rows.

    A block with any pending row is recomputed whole (less its skipped rows), so a resumed run
    feeds the model exactly the batches an uninterrupted run would have: identical features.
    """
    pending = ~done & ~skipped
    batches = []
    for start in range(0, len(done), batch_size):
        block = slice(start, start + batch_size)
        if pending[block].any():
            batches.append([start + i for i in np.flatnonzero(~skipped[block])])
    return np.flatnonzero(pending), batches
