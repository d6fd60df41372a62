"""Sharded extraction under torchrun: `torchrun --nproc_per_node N -m featx extract ...`.

The schedule is the single-process one: fixed blocks of `batch_size` consecutive rows. Rank r
takes blocks r, r + N, r + 2N, ...: disjoint, deterministic, nothing duplicated or padded,
and each block is the very batch one process would run, so the features are the same. Each
rank writes its own shard file (`<cache>.h5.shard<r>`, resumable like the cache itself);
rank 0 merges the shards into the one cache, which then reads exactly like a single-process
cache. A shard left by a killed run is merged at the start of the next run, whatever its
world size, so finished rows are never recomputed.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from .._core import distributed
from .._core.atomic import atomic_path
from .._core.hashing import lines_hash
from .store import REASON_BYTES, FeatureStore, RowTable, StoreWriter, rows_per_chunk


def shard_path(path: Path, rank: int) -> Path:
    return path.with_name(f"{path.name}.shard{rank}")


def rows_digest(rows: RowTable) -> str:
    """Names the cache's row layout, so a shard is only merged into the layout it was made for."""
    return lines_hash(f"{p}\t{h}" for p, h in zip(rows.path, rows.sha1))


def create_shard(path: Path, main_rows: list[int], num_features: int, dtype: str, digest: str) -> Path:
    """An empty shard for `main_rows` of the cache at `path`: the cache's layout, in miniature."""
    n = len(main_rows)
    dtype = np.dtype(dtype)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w", libver="earliest") as f:
            f.attrs["rows_digest"] = digest
            chunk = (max(1, min(rows_per_chunk(num_features, dtype.itemsize), n)), num_features)
            f.create_dataset("features", (n, num_features), dtype, chunks=chunk, fillvalue=0)
            f.create_dataset("done", (n,), np.uint8, fillvalue=0)
            f.create_dataset("skipped", (n,), f"S{REASON_BYTES}", fillvalue=b"")
            f.create_dataset("main_row", data=np.asarray(main_rows, np.int64))
            f["features"][...] = 0  # allocate now: later writes touch data only
    return path


def merge_shards(path: Path) -> int:
    """Copy every shard's finished and skipped rows into the cache, then delete the shard.

    Safe to interrupt: the cache gets features before done flags, and a shard is deleted only
    after its rows are in. Shards made for another row layout are discarded. Returns rows merged.
    """
    store = FeatureStore(path)
    digest = rows_digest(store.row_table())
    merged = 0
    for shard in sorted(path.parent.glob(f"{path.name}.shard*")):
        if not shard.name[len(path.name) + 6:].isdigit():
            continue  # a lock or temporary file beside a shard
        try:
            with h5py.File(shard, "r", locking=False) as f:
                if f.attrs.get("rows_digest") != digest:  # the data changed since: its rows mean nothing now
                    rows = None
                else:
                    rows, done, skipped = f["main_row"][:], f["done"][:].astype(bool), f["skipped"][:]
                    features = f["features"][np.flatnonzero(done)] if done.any() else None
        except OSError:
            rows = None  # unreadable: nothing finished can be trusted from it
        if rows is not None:
            with StoreWriter(path) as writer:
                if features is not None:
                    order = np.argsort(rows[done])
                    writer.write(rows[done][order], features[order])
                has = skipped != b""
                if has.any():
                    order = np.argsort(rows[has])
                    writer.skip(rows[has][order], [r.decode(errors="replace") for r in skipped[has][order]])
            merged += int(done.sum())
        shard.unlink(missing_ok=True)
    return merged


def take_share(path: Path, rows: RowTable, batches: list[list[int]], pending: set[int], rank: int, size: int,
               num_features: int, dtype: str):
    """This rank's blocks (rank, rank + size, ...: round-robin, so ranks finish together), renumbered
    into its own new shard file: (shard path, its row table, its batches, its pending rows)."""
    batches = batches[rank::size]
    mine = [r for batch in batches for r in batch]
    local = {r: i for i, r in enumerate(mine)}
    shard = create_shard(shard_path(path, rank), mine, num_features, dtype, rows_digest(rows))
    return (shard, _sub_table(rows, mine), [[local[r] for r in batch] for batch in batches],
            {local[r] for r in mine if r in pending})


def gather_shares(path: Path, rank: int, todo, done_before: int, known_problems: dict,
                  after_merge=lambda: None) -> tuple[int, list]:
    """After every rank has written its shard: rank 0 merges them (then calls `after_merge`, alone with the
    file), and all ranks read the outcome, (rows done by this run, (path, reason) of the rows it skipped)."""
    distributed.barrier()
    if rank == 0:
        merge_shards(path)
        after_merge()
    distributed.barrier()
    merged = FeatureStore(path)
    done_now = int(merged.row_status()[0].sum()) - done_before
    all_paths = merged.row_table().path
    todo_paths = {all_paths[i] for i in todo}
    return done_now, [(p, why) for p, why in merged.skipped() if p in todo_paths and p not in known_problems]


def _sub_table(rows: RowTable, main_rows: list[int]) -> RowTable:
    idx = np.asarray(main_rows, np.int64)
    return RowTable(path=[rows.path[i] for i in idx], label=rows.label[idx], split=rows.split[idx],
                    group=[rows.group[i] for i in idx], sha1=[rows.sha1[i] for i in idx], size=rows.size[idx],
                    mtime_ns=rows.mtime_ns[idx])
