"""`featx extract`: every image of a dataset through a frozen backbone into its feature cache, once.

A re-run that finds its cache finished returns it from the cache alone (features.reuse), without
importing torch; otherwise the backbone is built and the missing rows computed
(features.computing.fill_cache).
"""

from __future__ import annotations

from pathlib import Path

from .._core.console import log_line
from .._core.errors import FeatxError
from .._core.options import check_batch_size, check_options, feature_variant
from .._core.paths import default_cache_dir
from ..data.corruptions import parse_corruption
from ..data.decode_policy import check_window
from ..data.datasets import Dataset, load_dataset
from ..models.numerics import Numerics
from .reuse import finished_cache
from .store import FeatureStore


def extract(data, backbone: str = "xception", *, weights: str = "imagenet", cache_dir=None, output=None,
            batch_size: int | str | None = None, device: str = "auto", workers: int | None = None,
            dtype: str = "float32", layer: str | None = None, image_size: int | None = None, pool: str | None = None,
            layers: str | None = None, tta: str = "none", decode: str = "pil", corruption: str | None = None,
            dicom_window: str = "default", splits=None, engine: str = "auto", precision: str = "auto",
            val_fraction: float | None = None,
            group_pattern: str | None = None, seed: int = 0, progress: bool = True, log=None) -> FeatureStore:
    """Extract pooled features of `backbone` for every image of `data` (a folder, a manifest, or a loaded
    `Dataset`) and return the cache.

    Only rows not yet done are computed: new files, files whose bytes changed, and the rest
    of an interrupted run. Unreadable images are skipped, recorded in the cache and reported.
    `batch_size` defaults to 16 on a CPU (smaller batches run faster there) and 64 on a GPU;
    "auto" measures the largest that fits in 80% of free GPU memory (16 elsewhere).
    `decode`: pil, pil-draft or device (see featx.data.device_decoding). `engine` runs the model: eager
    (torch), compile (torch.compile: a one-off compile of tens of seconds; for long GPU runs), openvino or
    onnxruntime (CPU), or auto: on a CPU, for 256 images or more, the fastest of those installed whose
    features agree with eager's (features.engine_choice). Float32 features of every engine share one cache.
    `precision`: auto (float32 on a CPU, autocast on a GPU), fp32, or bf16 (a CPU with native bfloat16, or a
    GPU): a recipe of its own per engine (models.numerics).
    Under torchrun each process computes its share of the batches (see features.sharding).
    `image_size` runs the backbone at another size than its default (ViTs resample their position
    table). Token models (ViTs) pool `pool` (cls, avg, cls+avg) over the last `layers` ("last:K")
    blocks; see featx.models.tokens. `corruption` ("name:severity", featx.data.corruptions) extracts
    corrupted copies of the images into a cache of their own, as `featx robustness` does, which
    also names `splits` (e.g. ["test"]): only their images are extracted. `dicom_window` shows DICOM
    files by their own window ("default"), by min-max, or by a window "C,W" (featx.data.dicom).
    """
    check_options(dtype=dtype, tta=tta, decode=decode, device=device)
    variant = feature_variant(image_size, pool, layers)
    corrupted = parse_corruption(corruption)
    dicom_window = check_window(dicom_window)
    if corrupted and decode == "device":
        raise FeatxError("--corruption works on images decoded by Pillow: use --decode pil or pil-draft")
    batch_size = check_batch_size(batch_size)
    numerics = Numerics.for_device(device, engine, precision)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    log = log or log_line
    ds = _dataset(data, splits, dicom_window, val_fraction=val_fraction, seed=seed, group_pattern=group_pattern,
                  cache_dir=cache_dir)
    store = finished_cache(ds, backbone, weights=weights, layer=layer, variant=variant, tta=tta,
                           decode=decode, corruption=corrupted, dtype=dtype, numerics=numerics, cache_dir=cache_dir,
                           output=output,
                           dicom_window=dicom_window)
    if store is not None:
        for line in ds.notes():
            log(line)
        log(f"{store.path}: all {store.n_rows} images already cached, nothing to extract")
        return store
    from .computing import fill_cache

    return fill_cache(ds, backbone, weights=weights, cache_dir=cache_dir, output=output, batch_size=batch_size,
                      device=device, workers=workers, dtype=dtype, layer=layer, variant=variant, tta=tta, decode=decode,
                      corruption=corrupted, dicom_window=dicom_window,
                      engine=engine, precision=precision, progress=progress, log=log)


def _dataset(data, splits, dicom_window: str, **listing):
    """The images to extract: `data` listed (or the Dataset given), less the splits not asked for."""
    ds = data if isinstance(data, Dataset) else load_dataset(data, **listing)
    if splits is not None:
        missing = [s for s in splits if s not in ds.splits]
        if missing:
            raise FeatxError(f"{ds.root} has no {', '.join(missing)} split; its splits: {', '.join(ds.counts())}")
        ds = ds.subset(splits)
    if dicom_window != "default" and not ds.has_dicom:
        raise FeatxError(f"--dicom-window applies to DICOM files, and {ds.root} has none")
    return ds
