"""Running a frozen backbone over images: into a dataset's feature cache, resumably (`fill_cache`,
extract's full way), or in memory for any files (`compute_features`, `run_on_images`), with the
same loader, decoding and frozen forward.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .._core import distributed
from .._core.console import progress_bar, silent
from .._core.errors import FeatxError
from .._core.locks import exclusive_lock
from .._core.options import check_batch_size, check_options
from .._core.paths import file_safe
from .._core.runtime import (default_batch_size, default_workers, join_ranks, precision_for, resolve_device,
                             speaking)
from .._core.versions import package_versions
from ..data.datasets import Dataset
from ..data.decode_policy import DecodePolicy
from ..data.device_decoding import DeviceDecoder
from ..data.loading import ImageFiles, image_loader
from ..data.transforms import EvalTransform
from ..models.backbones import Backbone, create_backbone
from ..models.engines import frozen_forward
from ..models.frozen import FrozenForward
from ..models.numerics import Numerics
from . import sharding
from .engine_choice import chosen_forward
from .identity import FeatureRecipe, identity_hash
from .planning import cache_folder, prepare_store, schedule, skip_known_problems
from .reuse import extraction_request, remember_request
from .store import FeatureStore, RowTable, StoreWriter


def fill_cache(ds: Dataset, backbone: str, *, weights: str, cache_dir: Path, output, batch_size, device: str,
               workers, dtype: str, layer, variant: dict, tta: str, decode: str, engine: str, precision: str,
               progress: bool, log, corruption=None, dicom_window: str = "default") -> FeatureStore:
    """extract's full way: build the backbone, open (or make) the cache by the features' identity,
    and compute the rows not done yet (this rank's share of them under torchrun)."""
    rank, n_ranks, device = join_ranks(device)
    log, progress = speaking(rank, log, progress)
    torch_device = resolve_device(device)
    numerics = Numerics.asked(torch_device.type, engine, precision, precision_for(torch_device))
    bb = create_backbone(backbone, weights, layer=layer, **variant)
    policy = DecodePolicy.for_run(decode, torch_device, dicom_window=dicom_window, corruption=corruption)
    identity, config = _recipe(ds, bb, torch_device, tta=tta, dtype=dtype, policy=policy, numerics=numerics)
    request = extraction_request(backbone, weights=weights, device_kind=torch_device.type, layer=layer,
                                 variant=variant, tta=tta, policy=policy, dtype=dtype, numerics=numerics)
    path = Path(output) if output else \
        cache_folder(cache_dir, ds, corruption) / f"{file_safe(bb.spec.name)}-{config['config_hash']}.h5"
    config["data_relative"] = os.path.relpath(ds.root, path.parent.resolve())  # found again in a moved project
    with exclusive_lock(path) if rank == 0 else contextlib.nullcontext():
        store = _open_cache(path, ds, identity, config, bb.num_features, dtype, rank, request, log)
        for line in ds.notes():  # after the files are hashed: copies within a split are known then
            log(line)
        done, skipped = store.row_status()
        if (done | skipped).all():
            log(f"{path}: all {store.n_rows} images already cached, nothing to extract")
            return store
        job = _Job(path, ds, bb, torch_device, numerics, tta, policy, dtype, workers, progress, log, Path(cache_dir),
                   config["config_hash"])
        done_now, skipped_now, seconds = _extract_missing(job, store, done, skipped, batch_size, rank, n_ranks)
    _log_outcome(log, path, ds, done_now, skipped_now, seconds)
    return FeatureStore(path)


def _recipe(ds: Dataset, bb: Backbone, device: torch.device, *, tta, dtype, policy: DecodePolicy,
            numerics: Numerics) -> tuple[dict, dict]:
    """(identity, config) of the cache: what must match to reuse it (the features' recipe, precision and
    dtype), and everything recorded in it (where the data and weights are, for people and freshness)."""
    identity = FeatureRecipe.of(bb.identity(), tta=tta, decode=policy).cache_identity(
        precision=numerics.identity(), dtype=dtype)
    versions = package_versions("torch", "timm")
    config = {**identity, "config_hash": identity_hash(identity), "compute": numerics.recipe(),
              **bb.weights.record(), "backbone_options": bb.options(), "data_root": str(ds.root), "dataset_key": ds.key,
              "device": str(device), "group_pattern": ds.group_pattern, "data_source": ds.source,
              "patients": ds.patients(),
              **({"group_source": ds.group_source} if ds.group_source else {}),
              **{f"{name}_version": versions[name] for name in ("featx", "torch", "timm")}}
    return identity, config


def _open_cache(path: Path, ds: Dataset, identity: dict, config: dict, num_features: int, dtype: str, rank: int,
                request: dict | None, log) -> FeatureStore:
    """Rank 0 creates or updates the cache, merges shards an interrupted run left and records the
    request it answers; all ranks then read it (no rank reads while rank 0 writes)."""
    if rank == 0:
        store = prepare_store(path, ds, identity, config, num_features, dtype, log)
        if sharding.merge_shards(path):
            log(f"{path}: merged the finished rows of an interrupted sharded run")
        skip_known_problems(path, store, ds)
        if request is not None:
            remember_request(path, store, request)
    distributed.barrier()  # every rank plans from the same prepared cache
    return FeatureStore(path)


@dataclass
class _Job:
    """What one extraction computes and how."""

    path: Path
    ds: Dataset
    bb: Backbone
    device: torch.device
    numerics: Numerics  # as asked: engine auto is chosen when the rows to do are known
    tta: str
    policy: DecodePolicy
    dtype: str
    workers: int | None
    progress: bool
    log: Callable[[str], None]
    cache_dir: Path    # where engine auto remembers its races
    recipe_hash: str


def _extract_missing(job: _Job, store: FeatureStore, done: np.ndarray, skipped: np.ndarray, batch_size,
                     rank: int, n_ranks: int):
    """Compute the rows neither `done` nor `skipped` (this rank's share of them);
    (rows done, (path, reason) skipped, seconds)."""
    batch_size = _batch_size(job, batch_size)
    if n_ranks > 1:  # every rank must cut the same blocks, and run the same engine
        batch_size = min(distributed.gather(batch_size))
    todo, batches = schedule(done, skipped, batch_size)
    workers = default_workers(job.device) if job.workers is None else job.workers
    rows = store.row_table()
    forward, numerics = _forward(job, rows.path, batches, batch_size, len(todo), n_ranks)
    job.log(f"extracting {len(todo)} of {store.n_rows} images with {job.bb.spec.name} ({job.bb.weights_source}) "
            f"on {job.device}, batch {batch_size}, {workers} workers, decode {job.policy.mode}"
            + (f", DICOM window {job.policy.dicom_window}" if job.ds.has_dicom else "")
            + (f", corrupted by {job.policy.corruption[0]} at severity {job.policy.corruption[1]}"
               if job.policy.corruption else "")
            + f", engine {numerics.describe()}" + (f", {n_ranks} ranks" if n_ranks > 1 else "") + f" -> {job.path}")
    engines = {"engines": sorted({*store.config.get("engines", ()), numerics.engine})}  # which wrote rows
    if n_ranks == 1:
        _record(job.path, engines)
    started = time.perf_counter()
    done_before = int(done.sum())  # the merged count minus this tells what the ranks did
    target, pending = job.path, set(todo.tolist())
    if n_ranks > 1:  # this rank's blocks, into its own shard file
        target, rows, batches, pending = sharding.take_share(job.path, rows, batches, pending, rank, n_ranks,
                                                             job.bb.num_features, job.dtype)
    try:
        done_now, skipped_now = _write_rows(job, forward, target, rows, batches, pending, workers)
    except OSError as exc:  # e.g. the disk filled up: rows already flagged done are intact
        raise FeatxError(f"cannot write to {target}: {exc.strerror or exc}; everything finished so far is kept, "
                         "free space (or fix the disk) and re-run the same command to resume") from None
    if n_ranks > 1:
        done_now, skipped_now = sharding.gather_shares(job.path, rank, todo, done_before, job.ds.problems,
                                                       after_merge=lambda: _record(job.path, engines))
    return done_now, skipped_now, time.perf_counter() - started


def _record(path: Path, values: dict) -> None:
    with StoreWriter(path) as writer:
        writer.update_config(values)


def _batch_size(job: _Job, batch_size) -> int:
    return batch_size_for(batch_size, job.bb.model, job.bb.data_config, job.device, job.numerics, job.tta, job.log)


def batch_size_for(batch_size, model, data_config: dict, device: torch.device, numerics: Numerics, tta: str,
                   log) -> int:
    """The batch size asked for: a number, None (the device's default) or "auto" (on CUDA, the largest that fits)."""
    if batch_size == "auto":
        if device.type != "cuda":
            log(f"--batch-size auto measures GPU memory; on {device.type} it means the default, "
                f"{default_batch_size(device)}")
            return default_batch_size(device)
        chosen = FrozenForward(model, data_config, device, numerics.autocast(), tta).fill_batch_size()
        log(f"--batch-size auto: {chosen} fits in 80% of the free GPU memory")
        return chosen
    return batch_size or default_batch_size(device)


def _forward(job: _Job, paths: list[str], batches: list, batch_size: int, n_images: int, n_ranks: int):
    """(the forward that computes this run, its numerics): engine auto chosen here (eager under torchrun)."""
    numerics = job.numerics
    if n_ranks > 1 and numerics.engine == "auto":
        numerics = Numerics(numerics.device, "eager", numerics.precision)

    def probe():
        first = ImageFiles(job.ds.root, paths, EvalTransform(job.bb.data_config), policy=job.policy)
        images = next(iter(image_loader(first, batches[:1], 0, job.device))).images if batches else None
        return images if isinstance(images, torch.Tensor) else None

    return chosen_forward(job.bb.model, job.bb.data_config, job.device, numerics, tta=job.tta,
                          batch_size=batch_size, n_images=n_images, probe=probe, recipe_hash=job.recipe_hash,
                          cache_dir=job.cache_dir, log=job.log)


def _write_rows(job: _Job, forward: FrozenForward, target: Path, rows: RowTable, batches, pending: set[int],
                workers: int) -> tuple[int, list]:
    """Compute `batches` and write each finished row into `target` (features, then done flags)."""
    done_now, skipped_now = 0, []
    with progress_bar(len(pending), job.progress, unit="img") as bar, StoreWriter(target) as writer:
        for batch_rows, feats, problems, read_sha1 in _forward_batches(forward, job.bb.data_config, job.ds.root,
                                                                       rows.path, batches, workers, job.policy):
            changed = [r for r, h in read_sha1 if h and rows.sha1[r] and h != rows.sha1[r]]
            problems += [(r, "file changed while featx was reading it; re-run to extract it") for r in changed]
            bad = {r for r, _ in problems}
            problems = sorted((r, why) for r, why in problems if r in pending)
            if problems:
                writer.skip(np.array([r for r, _ in problems]), [why for _, why in problems])
                skipped_now += [(rows.path[r], why) for r, why in problems]
            if feats is not None:
                keep = [i for i, r in enumerate(batch_rows) if r in pending and r not in bad]
                writer.write(np.array([batch_rows[i] for i in keep]), feats[keep].astype(job.dtype))
                done_now += len(keep)
            bar.update(sum(1 for r, _ in read_sha1 if r in pending))
    return done_now, skipped_now


def _log_outcome(log, path: Path, ds: Dataset, done_now: int, skipped_now: list, seconds: float) -> None:
    log(f"extracted {done_now} images in {seconds:.1f} s ({done_now / max(seconds, 1e-9):.1f} images/s)")
    skipped = list(ds.problems.items()) + skipped_now
    if skipped:
        log(f"skipped {len(skipped)} unreadable images (recorded in the cache's 'skipped'):")
        for rel, reason in skipped[:10]:
            log(f"  {rel}: {reason}")
        if len(skipped) > 10:
            log(f"  ... and {len(skipped) - 10} more: FeatureStore({str(path)!r}).skipped()")


def _forward_batches(forward: FrozenForward, data_config: dict, root: Path, paths: list[str], batches, workers,
                     policy: DecodePolicy):
    """Yield (rows, outputs or None, unreadable (row, reason) pairs, (row, sha1 of bytes read) pairs)."""
    decoder = DeviceDecoder(data_config, forward.device) if policy.mode == "device" else None
    dataset = ImageFiles(root, paths, EvalTransform(data_config), policy=policy)
    for batch_rows, images, problems, read_sha1 in image_loader(dataset, batches, workers, forward.device):
        feats = None
        if images is not None and decoder is not None:
            good, images, bad = decoder(list(images))
            problems = problems + [(batch_rows[i], why) for i, why in bad]
            batch_rows = [batch_rows[i] for i in good]
        if images is not None:
            feats = forward(images.to(forward.device, non_blocking=True))
        yield batch_rows, feats, problems, read_sha1


def run_on_images(model: torch.nn.Module, data_config: dict, width: int, paths, *, device: str = "auto",
                  batch_size: int | str | None = None, workers: int | None = None, tta: str = "none",
                  policy: DecodePolicy | None = None, root=None, compute: dict | None = None,
                  progress: bool = False) -> tuple[np.ndarray, list[str | None], list[str]]:
    """A frozen `model`'s `width` outputs for arbitrary image files, in memory, as `extract` computes them.

    Returns (outputs with a NaN row per unreadable image, the reason or None per image, the sha1
    of each file's bytes). `policy` (default: pil, the default DICOM window): how files become pixels;
    its mode "device" decodes on `device`. With `root`, `paths` are relative to it, as in a cache: a
    corruption draws its randomness from the relative path, so a network and a cache see the same pixels.
    `compute`: the recorded "compute" (Numerics.recipe) of features to reproduce (a head's training features):
    a CPU's bfloat16 by its engine where this machine runs it (`reproducing`), else float32 (autocast on a GPU).
    """
    check_options(tta=tta, device=device)
    batch_size = check_batch_size(batch_size)
    torch_device = resolve_device(device)
    policy = policy or DecodePolicy()
    if policy.mode == "device":
        policy = DecodePolicy.for_run("device", torch_device, dicom_window=policy.dicom_window,
                                      corruption=policy.corruption)
    numbers = reproducing(torch_device, compute)
    batch_size = batch_size_for(batch_size, model, data_config, torch_device, numbers, tta, silent)
    forward = frozen_forward(model, data_config, torch_device, numbers, tta, batch_size)
    workers = (0 if len(paths) <= batch_size else default_workers(torch_device)) if workers is None else workers
    if root is None:
        root, paths = Path("/"), [str(Path(p).expanduser().absolute()) for p in paths]
    out = np.full((len(paths), width), np.nan, np.float32)
    reasons: list[str | None] = [None] * len(paths)
    sha1 = [""] * len(paths)
    batches = [list(range(i, min(i + batch_size, len(paths)))) for i in range(0, len(paths), batch_size)]
    with progress_bar(len(paths), progress, unit="img") as bar:
        for batch_rows, feats, problems, read_sha1 in _forward_batches(forward, data_config, Path(root), paths,
                                                                       batches, workers, policy):
            for r, why in problems:
                reasons[r] = why
            for r, h in read_sha1:
                sha1[r] = h
            if feats is not None:
                out[batch_rows] = feats
            bar.update(len(read_sha1))
    return out, reasons, sha1


def reproducing(device: torch.device, recipe: dict | None) -> Numerics:
    """The numerics that compute features as a cache whose numerics `recipe` records holds them, on `device`: a
    CPU's bfloat16 by its engine where this machine has both, else float32 on a CPU and autocast on a GPU."""
    wanted = Numerics.options(recipe)
    if wanted["precision"] != "auto" and device.type == "cpu":
        try:
            return Numerics.asked("cpu", wanted["engine"], wanted["precision"])
        except FeatxError:  # no bfloat16 here, or the engine not installed
            pass
    return Numerics.asked(device.type, "eager", "auto", precision_for(device))


def compute_features(bb: Backbone, paths, **options) -> tuple[np.ndarray, list[str | None], list[str]]:
    """Features of arbitrary image files with backbone `bb`, in memory, exactly as `extract` would compute
    them (options as run_on_images: device, batch_size, workers, tta, policy, progress)."""
    return run_on_images(bb.model, bb.data_config, bb.num_features, paths, **options)
