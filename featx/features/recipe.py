"""The `featx extract` options that make a cache's features again, read back from its recorded config,
and the command line that says them: what a message suggests, and what `featx robustness` re-extracts
with. Torch-free, so `featx fit` can say it."""

from __future__ import annotations

import inspect
import shlex
from pathlib import Path

from .._core.paths import default_cache_dir
from ..data.decode_policy import DecodePolicy
from ..models.numerics import Numerics
from ..models.weight_files import recorded_kind
from .extraction import extract

# The options that make a cache's features, at extract's own defaults (its signature is their one
# declaration): an option is named on a command line only where it differs.
RECIPE_OPTIONS = ("weights", "layer", "image_size", "pool", "layers", "tta", "decode", "dicom_window", "dtype", "engine",
                  "precision")
DEFAULTS = {name: p.default for name, p in inspect.signature(extract).parameters.items() if name in RECIPE_OPTIONS}


def extraction_options(config: dict, weights: str = "auto") -> dict:
    """The extract arguments (backbone, weights, layer, image_size, pool, layers, tta, decode, dicom_window,
    dtype, and the engine and precision of a reduced-precision CPU cache) that make the features `config` records. `weights` "auto": the recorded file or folder if it is
    still there, else imagenet. pool and layers are named only where the cache's identity names them
    (token models pooled otherwise than their own way): a CNN is never asked for a pool."""
    if weights == "auto":
        kind, recorded = recorded_kind(config), Path(config.get("weights_source") or "")
        if kind == "random":
            weights = "random"
        elif kind in ("file", "folder") and recorded.is_absolute() and recorded.exists():
            weights = str(recorded)
        else:
            weights = "imagenet"
    policy = DecodePolicy.parse(config.get("decode"))
    options = config.get("backbone_options") or {}
    own_pooling = config.get("pool") is None
    return {"backbone": config["backbone"], "weights": weights,
            "layer": None if config.get("layer") in (None, "pooled") else config["layer"],
            "image_size": options.get("image_size"),
            "pool": None if own_pooling else options.get("pool"), "layers": None if own_pooling else options.get("layers"),
            "tta": config.get("tta", "none"), "decode": policy.mode, "dicom_window": policy.dicom_window,
            "dtype": config.get("dtype", "float32"), **Numerics.options(config.get("compute"))}


def extract_command(data, options: dict, *, cache_dir=None, output=None, **given) -> str:
    """`featx extract --data DATA --backbone B ...` naming every option of `options` (and `given`) that
    differs from extract's defaults, and the cache folder when it is not the default one."""
    words = ["featx", "extract", "--data", str(data), "--backbone", options["backbone"]]
    for name, value in {**options, **given}.items():
        if name != "backbone" and value is not None and value != DEFAULTS.get(name):
            words += [f"--{name.replace('_', '-')}", str(value)]
    if cache_dir is not None and Path(cache_dir).resolve() != default_cache_dir().resolve():
        words += ["--cache", str(cache_dir)]
    if output is not None:
        words += ["--output", str(output)]
    return shlex.join(words)
