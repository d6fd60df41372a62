"""The HDF5 feature cache: one row per image, readable with plain h5py.

Layout (N rows, D features):
  features  N×D float32|float16   zeros until the row is done
  done      N uint8               1 once the row's features are written
  skipped   N bytes               why the image could not be read ('' if it could)
  label     N int16               index into attrs['class_names'], -1 for an unlabelled image
  split     N int8                index into attrs['split_names'] (train, val, test, unlabelled)
  path, group, sha1               N strings; path is relative to attrs['data_root']
  size, mtime_ns                  N int64, to skip re-hashing unchanged files
  attrs['config']                 JSON: how the features were made (backbone, weights sha256, data config, ...)

Crash safety: every chunk is allocated (and zero-filled) when the file is created, so writing
rows later changes raw data only, never HDF5 metadata; a kill at any instant leaves a valid file.
Features are flushed before their `done` flags. Any change of layout (new or changed files)
builds a new file beside the old one and swaps it in with os.replace.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from .._core.atomic import atomic_path
from .._core.errors import FeatxError
from .._core.options import check_choice
from ..data.datasets import STORED_SPLITS, UNLABELLED
from .identity import FORMAT_VERSION, differences

REASON_BYTES = 200
_STRING = h5py.string_dtype("utf-8")


@dataclass
class RowTable:
    """What a store holds about each image, besides its features."""

    path: list[str]
    label: np.ndarray
    split: np.ndarray
    group: list[str]
    sha1: list[str]
    size: np.ndarray
    mtime_ns: np.ndarray

    def __len__(self) -> int:
        return len(self.path)


class FeatureStore:
    """Read a feature cache: `X, y = store.arrays("train")`, `store.paths("test")`, `store.config`.

    Only finished rows are returned, so a store can be read while extraction is still writing it.
    """

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FeatxError(f"feature cache not found: {self.path}")
        try:
            with self._open() as f:
                if "config" not in f.attrs or "features" not in f:
                    raise FeatxError(f"{self.path} is not a featx feature cache")
                self.config: dict = json.loads(f.attrs["config"])
                self.classes: list[str] = [str(c) for c in f.attrs["class_names"]]
                self.num_features: int = int(f["features"].shape[1])
                self.n_rows: int = int(f["features"].shape[0])
        except OSError as exc:
            raise FeatxError(f"cannot read feature cache {self.path}: {exc}") from None

    def _open(self):
        # HDF5's own lock would stop readers while extraction writes; the row protocol makes reading safe.
        return h5py.File(self.path, "r", locking=False)

    def _rows(self, f, split: str | None) -> np.ndarray:
        done = f["done"][:].astype(bool)
        if split is None:
            return np.flatnonzero(done)
        if split != UNLABELLED:
            check_choice("split", split)
        return np.flatnonzero(done & (f["split"][:] == STORED_SPLITS.index(split)))

    def rows(self, split: str | None = None) -> np.ndarray:
        """Indices of the finished rows of `split`, ascending: the order of `arrays` and `paths`."""
        with self._open() as f:
            return self._rows(f, split)

    def labels(self, split: str | None = None) -> np.ndarray:
        """Integer labels of the finished rows of `split`, without reading any features."""
        with self._open() as f:
            return f["label"][self._rows(f, split)].astype(np.int64)

    def iter_features(self, rows: np.ndarray, block_rows: int = 4096, rng: np.random.Generator | None = None):
        """(positions in `rows`, float32 features) block by block, for ascending row indices `rows`:
        a cache of any size is read with bounded memory. With `rng`, blocks come in random order."""
        starts = list(range(0, len(rows), block_rows))
        if rng is not None:
            starts = [starts[i] for i in rng.permutation(len(starts))]
        with self._open() as f:
            for start in starts:
                part = rows[start:start + block_rows]
                yield np.arange(start, start + len(part)), read_rows(f["features"], part)

    def arrays(self, split: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Features and integer labels of the finished rows of `split` (all splits when None)."""
        with self._open() as f:
            rows = self._rows(f, split)
            X = f["features"][rows] if len(rows) else np.empty((0, self.num_features), f["features"].dtype)
            return X, f["label"][rows].astype(np.int64)

    def _column(self, name: str, split: str | None) -> list[str]:
        with self._open() as f:
            rows = self._rows(f, split)
            return [v.decode() if isinstance(v, bytes) else v for v in f[name][rows]] if len(rows) else []

    def paths(self, split: str | None = None) -> list[str]:
        """Paths (relative to the data root) of the finished rows, in the order of `arrays`."""
        return self._column("path", split)

    def groups(self, split: str | None = None) -> list[str]:
        return self._column("group", split)

    def sha1s(self, split: str | None = None) -> list[str]:
        """sha1 of each finished row's file bytes, in the order of `arrays`."""
        return self._column("sha1", split)

    def skipped(self) -> list[tuple[str, str]]:
        """(path, reason) of every image that could not be read."""
        with self._open() as f:
            reasons = f["skipped"][:]
            rows = np.flatnonzero(reasons != b"")
            return [(f["path"][i].decode(), reasons[i].decode(errors="replace")) for i in rows]

    def row_status(self) -> tuple[np.ndarray, np.ndarray]:
        """Boolean masks over all rows: (done, skipped). Rows in neither are pending."""
        with self._open() as f:
            return f["done"][:].astype(bool), f["skipped"][:] != b""

    def counts(self) -> dict:
        """Rows done, skipped and pending, per split."""
        done, skipped = self.row_status()
        with self._open() as f:
            split = f["split"][:]
        table = {}
        for code, name in enumerate(STORED_SPLITS):
            in_split = split == code
            if in_split.any():
                table[name] = {"done": int((done & in_split).sum()), "skipped": int((skipped & in_split).sum()),
                               "pending": int((~done & ~skipped & in_split).sum())}
        return table

    @property
    def complete(self) -> bool:
        return all(c["pending"] == 0 for c in self.counts().values())

    @property
    def data_root(self) -> Path:
        """The data folder: where the cache says it lies relative to itself, when it is there (a project
        folder moved or copied with its data), else the absolute path it recorded."""
        relative = self.config.get("data_relative")
        if relative:
            moved = (self.path.parent.resolve() / relative).resolve()
            if moved.is_dir():
                return moved
        return Path(self.config["data_root"])

    def check_identity(self, identity: dict) -> None:
        """Refuse to mix: every key of `identity` must match how this cache was made."""
        differs = differences(self.config, identity)
        if differs:
            shown = "; ".join(f"{k}: cache has {_short(self.config.get(k))}, asked {_short(identity[k])}" for k in differs[:3])
            raise FeatxError(f"{self.path} was made differently ({shown}); use another cache file or delete this one")

    def features_by_sha1(self, wanted: dict[str, list[int]], skip=()) -> dict[int, np.ndarray]:
        """Finished rows whose file bytes have a wanted sha1: {caller's index: features}."""
        with self._open() as f:
            done = f["done"][:].astype(bool)
            hits = {}
            for row, digest in enumerate(f["sha1"][:]):
                targets = wanted.get(digest.decode()) if done[row] else None
                for i in targets or ():
                    if i not in skip and i not in hits:
                        hits[i] = row
            if not hits:
                return {}
            rows = sorted(set(hits.values()))
            feats = dict(zip(rows, f["features"][rows].astype(np.float32)))
        return {i: feats[row] for i, row in hits.items()}

    def row_table(self) -> RowTable:
        with self._open() as f:
            return RowTable(
                path=[p.decode() for p in f["path"][:]], label=f["label"][:], split=f["split"][:],
                group=[g.decode() for g in f["group"][:]], sha1=[s.decode() for s in f["sha1"][:]],
                size=f["size"][:], mtime_ns=f["mtime_ns"][:],
            )

    def __repr__(self) -> str:
        c = self.config
        return f"FeatureStore({str(self.path)!r}, backbone={c.get('backbone')!r}, rows={self.n_rows}, dim={self.num_features})"


def find_caches(where, wanted: dict | None = None, *, recursive: bool = True) -> list[FeatureStore]:
    """The featx caches at `where` (a cache file, or a folder searched for *.h5) whose config has
    every value of `wanted`; files that are not featx caches are passed over."""
    where = Path(where)
    if where.is_file():
        files = [where]
    elif where.is_dir():
        files = sorted(where.rglob("*.h5") if recursive else where.glob("*.h5"))
    else:
        files = []
    found = []
    for file in files:
        try:
            store = FeatureStore(file)
        except FeatxError:
            continue
        if not differences(store.config, wanted or {}):
            found.append(store)
    return found


def read_rows(features: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """float32 features of ascending `rows`: one contiguous read when they are dense, else just them."""
    if len(rows) == 0:
        return np.empty((0, features.shape[1]), np.float32)
    if rows[-1] - rows[0] < 4 * len(rows):
        block = features[rows[0]:rows[-1] + 1][rows - rows[0]]
    else:
        block = features[rows]
    return block.astype(np.float32, copy=False)


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def rows_per_chunk(num_features: int, itemsize: int) -> int:
    """Tens to hundreds of rows, about 512 KiB a chunk."""
    return int(np.clip((512 * 1024) // max(1, num_features * itemsize), 16, 256))


def create_store(path, config: dict, classes: list[str], rows: RowTable, num_features: int,
                 dtype: str = "float32", carry_over: "FeatureStore | None" = None) -> FeatureStore:
    """Write a new store (atomically) with every row pending, or carried over from `carry_over`
    where the old store holds the same file with the same bytes."""
    n = len(rows)
    dtype = np.dtype(dtype)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w", libver="earliest") as f:
            f.attrs["config"] = json.dumps(config, sort_keys=True)
            f.attrs["class_names"] = np.array(classes, dtype=_STRING)
            f.attrs["split_names"] = np.array(STORED_SPLITS, dtype=_STRING)
            f.attrs["format_version"] = FORMAT_VERSION
            chunk = rows_per_chunk(num_features, dtype.itemsize)
            _prealloc(f, "features", (n, num_features), dtype, (min(chunk, n), num_features))
            col = (min(4096, n),)
            _prealloc(f, "done", (n,), np.uint8, col)
            _prealloc(f, "skipped", (n,), f"S{REASON_BYTES}", col)
            _prealloc(f, "label", (n,), np.int16, col)[:] = rows.label
            _prealloc(f, "split", (n,), np.int8, col)[:] = rows.split
            _prealloc(f, "size", (n,), np.int64, col)[:] = rows.size
            _prealloc(f, "mtime_ns", (n,), np.int64, col)[:] = rows.mtime_ns
            for name in ("path", "group", "sha1"):
                f.create_dataset(name, data=np.array(getattr(rows, name), dtype=object), dtype=_STRING,
                                 chunks=col, maxshape=(None,))
            if carry_over is not None:
                _carry_over(f, rows, carry_over)
    return FeatureStore(path)


def _prealloc(f: h5py.File, name: str, shape, dtype, chunks) -> h5py.Dataset:
    """A chunked, resizable dataset whose chunks all exist now, zero-filled on disk."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    fill = b"" if np.dtype(dtype).kind == "S" else 0
    return f.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks, maxshape=(None,) + tuple(shape[1:]),
                            fillvalue=np.array(fill, dtype=dtype), dcpl=dcpl)


def _carry_over(f: h5py.File, rows: RowTable, old: FeatureStore) -> None:
    """Copy finished rows (and skip reasons) of files whose bytes have not changed, wherever they now lie."""
    old_rows = old.row_table()
    where = {(p, s): i for i, (p, s) in enumerate(zip(old_rows.path, old_rows.sha1)) if s}
    moved = {s: i for i, s in enumerate(old_rows.sha1) if s}  # the same bytes under another name (a file moved
    # into its class folder once labelled): features depend on the bytes alone
    pairs = [(new, where.get((p, s), moved.get(s))) for new, (p, s) in enumerate(zip(rows.path, rows.sha1))
             if (p, s) in where or s in moved]
    if not pairs:
        return
    with old._open() as src:
        old_done, old_skipped = src["done"][:], src["skipped"][:]
        for start in range(0, len(pairs), 4096):
            part = pairs[start:start + 4096]
            new_idx = np.array([a for a, _ in part])
            old_idx = np.array([b for _, b in part])
            order = np.argsort(old_idx)
            new_idx, old_idx = new_idx[order], old_idx[order]
            keep = old_done[old_idx] == 1
            if keep.any():
                f["features"][np.sort(new_idx[keep])] = src["features"][old_idx[keep]][np.argsort(new_idx[keep])]
                f["done"][np.sort(new_idx[keep])] = 1
            reasons = old_skipped[old_idx]
            has = reasons != b""
            if has.any():
                f["skipped"][np.sort(new_idx[has])] = reasons[has][np.argsort(new_idx[has])]


class StoreWriter:
    """Writes finished rows into an existing store, in place: features first, then their done flags."""

    def __init__(self, path):
        self.path = Path(path)
        self.file = h5py.File(self.path, "r+", locking=False)
        self.features, self.done, self.skipped_ = self.file["features"], self.file["done"], self.file["skipped"]

    def write(self, rows: np.ndarray, features: np.ndarray) -> None:
        """`rows` strictly increasing; features already in the store's dtype."""
        if len(rows) == 0:
            return
        self._in_order(rows, self.features, features)
        self.file.flush()
        self._in_order(rows, self.done, np.ones(len(rows), np.uint8))
        self.file.flush()

    def skip(self, rows: np.ndarray, reasons: list[str]) -> None:
        if len(rows) == 0:
            return
        encoded = np.array([r.encode("utf-8", "replace")[:REASON_BYTES] or b"unreadable" for r in reasons],
                           dtype=f"S{REASON_BYTES}")
        self._in_order(rows, self.skipped_, encoded)
        self.file.flush()

    def update_config(self, values: dict) -> None:
        """Add or replace entries of the recorded config (bookkeeping only: never the features' identity)."""
        config = json.loads(self.file.attrs["config"])
        self.file.attrs["config"] = json.dumps({**config, **values}, sort_keys=True)
        self.file.flush()

    def set_split(self, split_codes: np.ndarray) -> None:
        self.file["split"][:] = split_codes
        self.file.flush()

    @staticmethod
    def _in_order(rows: np.ndarray, dataset: h5py.Dataset, values: np.ndarray) -> None:
        rows = np.asarray(rows)
        if len(rows) > 1 and np.all(np.diff(rows) == 1):
            dataset[rows[0]:rows[-1] + 1] = values  # contiguous: one hyperslab, much faster
        else:
            dataset[rows] = values

    def close(self) -> None:
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
