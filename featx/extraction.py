"""Run a frozen backbone over every image of a dataset into its feature cache, resumably."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import decoding, distributed, sharding
from .backbones import Backbone, create_backbone
from .data import SPLITS, Dataset, default_cache_dir, file_safe, load_dataset
from .console import log_line
from .errors import FeatxError
from .imaging import EvalTransform, ImageError, load_image
from .inference import FrozenForward
from .lock import exclusive_lock
from .store import FORMAT_VERSION, FeatureStore, RowTable, StoreWriter, create_store

DTYPES = ("float32", "float16")
TTA_MODES = ("none", "hflip")


def extract(
    data,
    backbone: str = "xception",
    *,
    weights: str = "imagenet",
    cache_dir=None,
    output=None,
    batch_size: int | str | None = None,
    device: str = "auto",
    workers: int | None = None,
    dtype: str = "float32",
    layer: str | None = None,
    tta: str = "none",
    decode: str = "pil",
    compile: bool = False,
    val_fraction: float | None = None,
    group_pattern: str | None = None,
    seed: int = 0,
    progress: bool = True,
    log=None,
) -> FeatureStore:
    """Extract pooled features of `backbone` for every image of `data` and return the cache.

    Only rows not yet done are computed: new files, files whose bytes changed, and the rest
    of an interrupted run. Unreadable images are skipped, recorded in the cache and reported.
    `batch_size` defaults to 16 on a CPU (smaller batches run faster there) and 64 on a GPU;
    "auto" measures the largest that fits in 80% of free GPU memory (16 elsewhere).
    `decode`: pil, pil-draft or device (see featx.decoding). `compile`: run the model through
    torch.compile (a one-off compile of tens of seconds; pays off on long GPU runs).
    """
    log = log or log_line
    if dtype not in DTYPES:
        raise FeatxError(f"--dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    if tta not in TTA_MODES:
        raise FeatxError(f"--tta must be one of {', '.join(TTA_MODES)}, not {tta!r}")
    batch_size = check_batch_size(batch_size)
    decoding.check_mode(decode)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    ds = load_dataset(data, val_fraction=val_fraction, group_pattern=group_pattern, seed=seed, cache_dir=cache_dir)
    rank, n_ranks, local_rank = distributed.world()
    if n_ranks > 1:  # under torchrun: one GPU per rank, logs and progress from rank 0 only
        distributed.init()
        if device in ("auto", "cuda") and torch.cuda.is_available():
            device = f"cuda:{local_rank}"
        if rank:
            log, progress = (lambda message: None), False
    torch_device = resolve_device(device)
    bb = create_backbone(backbone, weights, layer=layer)
    precision = _precision(torch_device)
    identity = {
        "format_version": FORMAT_VERSION,
        "data_root": str(ds.root),
        **bb.identity(),
        "precision": precision,
        "tta": tta,
        "dtype": dtype,
        "decode": decoding.decode_policy(decode, torch_device),
    }
    config_hash = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
    path = Path(output) if output else cache_dir / ds.key / f"{file_safe(bb.spec.name)}-{config_hash}.h5"
    config = {**identity, "config_hash": config_hash, "weights_source": bb.weights_source,
              "device": str(torch_device), "compile": compile, "group_pattern": ds.group_pattern, **_versions()}

    if ds.ignored:
        log(f"ignored {len(ds.ignored)} files that are not images by their extension ({_extensions()}), "
            f"e.g. {', '.join(ds.ignored[:3])}")
    with exclusive_lock(path) if rank == 0 else contextlib.nullcontext():
        if rank == 0:
            store = _prepare_store(path, ds, bb, identity, config, dtype, log)
            if sharding.merge_shards(path):
                log(f"{path}: merged the finished rows of an interrupted sharded run")
            _skip_known_problems(path, store, ds)
        distributed.barrier()  # every rank plans from the same prepared cache
        store = FeatureStore(path)
        done, skipped = store.row_status()
        if (done | skipped).all():
            log(f"{path}: all {store.n_rows} images already cached, nothing to extract")
            return store
        forward = FrozenForward(bb, torch_device, precision, tta)
        batch_size = _batch_size(forward, batch_size, log)
        if n_ranks > 1:  # every rank must cut the same blocks
            batch_size = min(distributed.gather(batch_size))
        if compile:
            forward.compile(batch_size)
        todo, batches = _schedule(path, batch_size)
        n_workers = default_workers(torch_device) if workers is None else workers
        log(f"extracting {len(todo)} of {store.n_rows} images with {bb.spec.name} ({bb.weights_source}) "
            f"on {torch_device}, batch {batch_size}, {n_workers} workers, decode {decode}"
            + (", compiled" if compile else "") + (f", {n_ranks} ranks" if n_ranks > 1 else "") + f" -> {path}")
        started = time.perf_counter()
        done_before = int(done.sum())
        rows, target, pending = store.row_table(), path, set(todo.tolist())
        if n_ranks > 1:  # this rank's blocks, into its own shard file
            batches = sharding.my_batches(batches, rank, n_ranks)
            mine = [r for batch in batches for r in batch]
            local = {r: i for i, r in enumerate(mine)}
            target = sharding.create_shard(sharding.shard_path(path, rank), mine, bb.num_features, dtype,
                                           sharding.rows_digest(rows))
            batches = [[local[r] for r in batch] for batch in batches]
            pending = {local[r] for r in mine if r in pending}
            rows = sharding.sub_table(rows, mine)
        try:
            done_now, skipped_now = _run(target, ds, bb, forward, rows, batches, pending, dtype, n_workers,
                                         progress, decode)
        except OSError as exc:  # e.g. the disk filled up: rows already flagged done are intact
            raise FeatxError(f"cannot write to {target}: {exc.strerror or exc}; everything finished so far is kept, "
                             "free space (or fix the disk) and re-run the same command to resume") from None
        if n_ranks > 1:
            distributed.barrier()
            if rank == 0:
                sharding.merge_shards(path)
            distributed.barrier()
            merged = FeatureStore(path)
            done_now = int(merged.row_status()[0].sum()) - done_before
            all_paths = merged.row_table().path
            todo_paths = {all_paths[i] for i in todo}
            skipped_now = [(p, why) for p, why in merged.skipped() if p in todo_paths and p not in ds.problems]
        seconds = time.perf_counter() - started
    log(f"extracted {done_now} images in {seconds:.1f} s ({done_now / max(seconds, 1e-9):.1f} images/s)")
    skipped_now = [(p, why) for p, why in ds.problems.items()] + skipped_now
    if skipped_now:
        log(f"skipped {len(skipped_now)} unreadable images (recorded in the cache's 'skipped'):")
        for rel, reason in skipped_now[:10]:
            log(f"  {rel}: {reason}")
        if len(skipped_now) > 10:
            log(f"  ... and {len(skipped_now) - 10} more: FeatureStore({str(path)!r}).skipped()")
    return FeatureStore(path)


def _extensions() -> str:
    from .data import IMAGE_EXTENSIONS

    return " ".join(sorted(IMAGE_EXTENSIONS))


def _skip_known_problems(path: Path, store: FeatureStore, ds: Dataset) -> None:
    """Record rows that cannot be read whatever happens (e.g. undecodable names) as skipped."""
    if not ds.problems:
        return
    done, skipped = store.row_status()
    index = {p: i for i, p in enumerate(store.row_table().path)}
    rows = sorted(index[p] for p in ds.problems if p in index and not done[index[p]] and not skipped[index[p]])
    if rows:
        table = store.row_table()
        with StoreWriter(path) as writer:
            writer.skip(np.array(rows), [ds.problems[table.path[r]] for r in rows])


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA, then Apple's MPS, then the CPU."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device not in ("cpu", "cuda", "mps") and not device.startswith("cuda:"):
        raise FeatxError(f"--device must be auto, cpu, cuda or mps, not {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FeatxError("--device cuda asked for, but PyTorch sees no CUDA GPU")
    if device == "mps" and not torch.backends.mps.is_available():
        raise FeatxError("--device mps asked for, but this PyTorch build has no MPS")
    return torch.device(device)


def default_batch_size(device: torch.device) -> int:
    """On CPUs small batches are faster (activations stay in cache): lite0 41 img/s at 16, 33 at 32."""
    return 64 if device.type == "cuda" else 16


def check_batch_size(batch_size):
    """None, "auto" or a positive int (click and callers may pass digits as a string)."""
    if batch_size is None or batch_size == "auto":
        return batch_size
    try:
        value = int(batch_size)
    except (TypeError, ValueError):
        value = 0
    if value < 1 or str(value) != str(batch_size).strip():
        raise FeatxError(f"--batch-size must be a whole number of at least 1, or auto; got {batch_size!r}")
    return value


def _batch_size(forward: FrozenForward, batch_size, log) -> int:
    if batch_size == "auto":
        if forward.device.type != "cuda":
            log(f"--batch-size auto measures GPU memory; on {forward.device.type} it means the default, "
                f"{default_batch_size(forward.device)}")
            return default_batch_size(forward.device)
        chosen = forward.fill_batch_size()
        log(f"--batch-size auto: {chosen} fits in 80% of the free GPU memory")
        return chosen
    return batch_size or default_batch_size(forward.device)


def default_workers(device: torch.device) -> int:
    """Decoding processes: on a CPU they compete with the model for cores, so keep them few."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if device.type == "cpu":
        return 1 if cores >= 2 else 0
    return min(8, max(1, cores - 1))


def _precision(device: torch.device) -> str:
    """AMP on CUDA (bf16 where supported); fp32 elsewhere. Part of the cache identity."""
    if device.type == "cuda":
        return "amp-bf16" if torch.cuda.is_bf16_supported() else "amp-fp16"
    return "fp32"


def _versions() -> dict:
    import timm

    from . import __version__

    return {"featx_version": __version__, "torch_version": torch.__version__, "timm_version": timm.__version__}


# --- planning: which rows exist, which are done ----------------------------------------------

def _prepare_store(path: Path, ds: Dataset, bb: Backbone, identity: dict, config: dict, dtype: str, log) -> FeatureStore:
    """Open the store if it matches the dataset; otherwise build it, keeping every reusable row."""
    old = FeatureStore(path) if path.exists() else None
    if old is not None:
        old.check_identity(identity)
        if old.classes != ds.classes:
            raise FeatxError(f"{path} has classes {old.classes}, the data has {ds.classes}; "
                             "use another cache file or delete this one")
    held = old.row_table() if old is not None else None
    rows = _row_table(ds, held)
    if held is not None:
        same_files = held.path == rows.path and held.sha1 == rows.sha1 and held.group == rows.group
        if same_files and np.array_equal(held.label, rows.label):
            if not np.array_equal(held.split, rows.split):
                with StoreWriter(path) as writer:
                    writer.set_split(rows.split)
            return old
        log(f"{path}: the data changed; rebuilding the cache and keeping the rows of unchanged files")
    return create_store(path, config, ds.classes, rows, bb.num_features, dtype, carry_over=old)


def _row_table(ds: Dataset, held: RowTable | None) -> RowTable:
    """Stat every file; hash the bytes only of files that are new or whose size or mtime changed."""
    known = {}
    if held is not None:
        known = {p: (s, m, h) for p, s, m, h in zip(held.path, held.size, held.mtime_ns, held.sha1)}
    n = len(ds)
    size, mtime = np.full(n, -1, np.int64), np.full(n, -1, np.int64)
    sha1 = [""] * n
    to_hash = []
    for i, rel in enumerate(ds.paths):
        try:
            st = os.stat(ds.absolute(rel))
        except OSError:
            continue  # gone since listing: the row will be skipped with the reason when read
        size[i], mtime[i] = st.st_size, st.st_mtime_ns
        prev = known.get(rel)
        if prev is not None and prev[0] == st.st_size and prev[1] == st.st_mtime_ns and prev[2]:
            sha1[i] = prev[2]
        else:
            to_hash.append(i)
    with ThreadPoolExecutor(max_workers=8) as pool:  # hashlib releases the GIL; helps on network disks
        for i, digest in zip(to_hash, pool.map(lambda i: sha1_file(ds.absolute(ds.paths[i])), to_hash)):
            sha1[i] = digest
    return RowTable(path=list(ds.paths), label=ds.labels.astype(np.int16),
                    split=np.array([SPLITS.index(s) for s in ds.splits], np.int8), group=list(ds.groups),
                    sha1=sha1, size=size, mtime_ns=mtime)


def sha1_file(path: Path) -> str:
    digest = hashlib.sha1()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return ""
    return digest.hexdigest()


def _schedule(path: Path, batch_size: int) -> tuple[np.ndarray, list[list[int]]]:
    """Rows to compute, grouped in fixed blocks of `batch_size` consecutive rows.

    A block with any pending row is recomputed whole (less its skipped rows), so a resumed run
    feeds the model exactly the batches an uninterrupted run would have: identical features.
    """
    done, skipped = FeatureStore(path).row_status()
    pending = ~done & ~skipped
    batches = []
    for start in range(0, len(done), batch_size):
        block = slice(start, start + batch_size)
        if pending[block].any():
            batches.append([start + i for i in np.flatnonzero(~skipped[block])])
    return np.flatnonzero(pending), batches


# --- the extraction loop ---------------------------------------------------------------------

class _ImageRows(torch.utils.data.Dataset):
    """Row index -> (row, image or None, sha1 of the bytes read, reason if unreadable).

    The image is the transformed uint8 3×H×W tensor, or in decode mode "device" what
    decoding.read_for_device returns (a JPEG's bytes, or a full-size decoded tensor).
    """

    def __init__(self, root: Path, paths: list[str], transform: EvalTransform, decode: str = "pil"):
        self.root, self.paths, self.transform, self.decode = root, paths, transform, decode
        self.draft_side = transform.resize_side if decode == "pil-draft" else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, row: int):
        path = self.root / self.paths[row]
        try:
            raw = path.read_bytes()
        except IsADirectoryError:
            return row, None, "", "is a folder, not an image"
        except OSError as exc:
            return row, None, "", f"cannot read file: {exc.strerror or exc}"
        sha1 = hashlib.sha1(raw).hexdigest()
        if not raw:
            return row, None, sha1, "empty file (0 bytes)"
        try:
            if self.decode == "device":
                return row, decoding.read_for_device(raw), sha1, None
            return row, self.transform(load_image(io.BytesIO(raw), self.draft_side)), sha1, None
        except ImageError as exc:
            return row, None, sha1, str(exc)


def _collate(items):
    """Images stacked into one batch, or left as a list when they are not yet the same size (device decode)."""
    rows = [r for r, img, _, _ in items if img is not None]
    images = [img for _, img, _, _ in items if img is not None]
    if images and all(img.shape == images[0].shape and img.dim() == 3 for img in images):
        images = torch.stack(images)
    problems = [(r, reason) for r, img, _, reason in items if img is None]
    read_sha1 = [(r, sha1) for r, _, sha1, _ in items]
    return rows, (images if rows else None), problems, read_sha1


def _batches(forward: FrozenForward, data_config: dict, root: Path, paths: list[str], batches, workers, decode):
    """Yield (rows, features or None, unreadable (row, reason) pairs, (row, sha1 of bytes read) pairs)."""
    device = forward.device
    decoder = decoding.DeviceDecoder(data_config, device) if decode == "device" else None
    loader = torch.utils.data.DataLoader(
        _ImageRows(root, paths, EvalTransform(data_config), decode),
        batch_sampler=batches, num_workers=workers, collate_fn=_collate,
        pin_memory=device.type == "cuda", persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
    )
    for batch_rows, images, problems, read_sha1 in loader:
        feats = None
        if images is not None and decoder is not None:
            good, images, bad = decoder(list(images))
            problems = problems + [(batch_rows[i], why) for i, why in bad]
            batch_rows = [batch_rows[i] for i in good]
        if images is not None:
            feats = forward(images.to(device, non_blocking=True))
        yield batch_rows, feats, problems, read_sha1


def _run(path, ds, bb, forward, rows: RowTable, batches, pending: set[int], dtype, workers, progress, decode):
    done_now, skipped_now = 0, []
    bar = tqdm(total=len(pending), unit="img", disable=None if progress else True, dynamic_ncols=True, file=sys.stderr)
    try:
        with StoreWriter(path) as writer:
            for batch_rows, feats, problems, read_sha1 in _batches(forward, bb.data_config, ds.root, rows.path,
                                                                   batches, workers, decode):
                changed = [r for r, h in read_sha1 if h and rows.sha1[r] and h != rows.sha1[r]]
                problems += [(r, "file changed while featx was reading it; re-run to extract it") for r in changed]
                bad = {r for r, _ in problems}
                problems = sorted((r, why) for r, why in problems if r in pending)
                if problems:
                    writer.skip(np.array([r for r, _ in problems]), [why for _, why in problems])
                    skipped_now += [(rows.path[r], why) for r, why in problems]
                if feats is not None:
                    keep = [i for i, r in enumerate(batch_rows) if r in pending and r not in bad]
                    writer.write(np.array([batch_rows[i] for i in keep]), feats[keep].astype(dtype))
                    done_now += len(keep)
                bar.update(sum(1 for r, _ in read_sha1 if r in pending))
    finally:
        bar.close()
    return done_now, skipped_now


def compute_features(bb: Backbone, paths, *, device: str = "auto", batch_size: int | None = None,
                     workers: int | None = None, tta: str = "none", decode: str = "pil",
                     progress: bool = False) -> tuple[np.ndarray, list[str | None], list[str]]:
    """Features of arbitrary image files, in memory, exactly as `extract` would compute them.

    Returns (features with a NaN row per unreadable image, the reason or None per image,
    the sha1 of each file's bytes).
    """
    torch_device = resolve_device(device)
    batch_size = check_batch_size(batch_size)
    forward = FrozenForward(bb, torch_device, _precision(torch_device), tta)
    batch_size = _batch_size(forward, batch_size, lambda message: None)
    workers = (0 if len(paths) <= batch_size else default_workers(torch_device)) if workers is None else workers
    paths = [str(Path(p).expanduser().absolute()) for p in paths]
    out = np.full((len(paths), bb.num_features), np.nan, np.float32)
    reasons: list[str | None] = [None] * len(paths)
    sha1 = [""] * len(paths)
    batches = [list(range(i, min(i + batch_size, len(paths)))) for i in range(0, len(paths), batch_size)]
    bar = tqdm(total=len(paths), unit="img", disable=None if progress else True, dynamic_ncols=True, file=sys.stderr)
    with bar:
        for batch_rows, feats, problems, read_sha1 in _batches(forward, bb.data_config, Path("/"), paths, batches,
                                                               workers, decode):
            for r, why in problems:
                reasons[r] = why
            for r, h in read_sha1:
                sha1[r] = h
            if feats is not None:
                out[batch_rows] = feats
            bar.update(len(read_sha1))
    return out, reasons, sha1
