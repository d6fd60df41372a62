"""The artifact format: a model file plus a JSON sidecar that says how to trust and use it.

A head from `featx fit` is a joblib file; a fine-tune from `featx finetune` is a torch
state_dict (`model.pt`). Both get the same sidecar (`build_sidecar`): the sha256 of the model
file, checked before anything is unpickled (unpickling runs code: load only artifacts from
sources you trust), the exact backbone and preprocessing of its inputs, the classes and
decision threshold, the metrics, versions and date; and a `.predictions.npz` with each
split's per-image probabilities, which `featx compare` reads.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from .._core.atomic import atomic_path, write_text_atomic
from .._core.errors import FeatxError
from .._core.hashing import file_digest, lines_hash
from .._core.versions import package_versions

ARTIFACT_FORMAT = 1
# Modules that held classes featx pickled into heads, and where those classes live now: a pickle
# names a class by its module, so artifacts made before a move still load.
MOVED_MODULES = {"featx.streaming": "featx.heads.out_of_core"}


def build_sidecar(*, kind: str, head: str, params: dict, classes: list, threshold, threshold_rule: str,
                  features: dict, metrics: dict, train_seconds: float, predict_seconds_per_image: float,
                  packages: tuple[str, ...], **details) -> dict:
    """The sidecar of every artifact, heads and fine-tunes alike; `details` are the kind's own records
    (a head's selection, a fine-tune's history). `packages`: whose versions to record."""
    return {"kind": kind, "head": head, "params": params, **details, "classes": list(classes),
            "threshold": threshold, "threshold_rule": threshold_rule, "features": features, "metrics": metrics,
            "train_seconds": train_seconds, "predict_seconds_per_image": predict_seconds_per_image,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": package_versions(*packages)}


def sidecar_path(artifact) -> Path:
    return Path(artifact).with_suffix(".json")


def images_fingerprint(items) -> str:
    """Names an exact set of images, (relative path, sha1 of bytes) pairs, whatever their order."""
    return lines_hash((f"{p}\t{h}" for p, h in items), ordered=False)


def predictions_path(artifact) -> Path:
    return Path(artifact).with_suffix(".predictions.npz")


def save_artifact(path, estimator, info: dict, predictions: dict | None = None) -> Path:
    """A head from `featx fit`: its joblib file, its predictions, then its sidecar, each atomic.

    A kill before the sidecar leaves a joblib file whose sidecar is missing or names another
    hash, which `load` refuses: no half-written artifact is ever loadable.
    """
    import joblib

    path = Path(path)
    with atomic_path(path) as tmp:
        joblib.dump(estimator, tmp)
    return _finish(path, info, predictions)


def save_checkpoint_artifact(path, state_dict: dict, info: dict, predictions: dict | None = None) -> Path:
    """A fine-tuned model: a torch state_dict (loadable with weights_only=True) and the same sidecar."""
    import torch

    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state_dict, tmp)
    return _finish(path, info, predictions)


def _finish(path: Path, info: dict, predictions: dict | None) -> Path:
    info = {**info, "format": ARTIFACT_FORMAT, "file": path.name, "sha256": file_digest(path)}
    if predictions:
        info["predictions"] = {"file": predictions_path(path).name,
                               "sha256": _save_predictions(predictions_path(path), predictions)}
        info["splits"] = {s: {"n": len(p["y"]), "images_sha256": images_fingerprint(zip(p["path"], p["sha1"]))}
                          for s, p in predictions.items()}
    write_text_atomic(sidecar_path(path), json.dumps(info, indent=2, default=_json_default) + "\n")
    return path


def _save_predictions(path: Path, predictions: dict) -> str:
    """Per split: each image's path (relative to the data root), sha1, label and class probabilities."""
    arrays = {}
    for split, p in predictions.items():
        arrays[f"{split}__path"] = np.array(p["path"], dtype=str)
        arrays[f"{split}__sha1"] = np.array(p["sha1"], dtype=str)
        arrays[f"{split}__y"] = np.asarray(p["y"], dtype=np.int64)
        arrays[f"{split}__proba"] = np.asarray(p["proba"], dtype=np.float64)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)
    return file_digest(path)


def load_predictions(artifact, info: dict | None = None) -> dict:
    """{split: {"path", "sha1", "y", "proba"}} as saved with an artifact (checked against its sidecar)."""
    info = info or read_sidecar(artifact)
    entry = info.get("predictions")
    if not entry:
        raise FeatxError(f"{artifact} has no saved predictions (made by an older featx); run featx fit or featx finetune again")
    path = Path(artifact).with_name(entry["file"])
    if not path.is_file() or file_digest(path) != entry["sha256"]:
        raise FeatxError(f"{path} is missing or does not match its sidecar; fit or fine-tune the model again")
    out = {}
    with np.load(path, allow_pickle=False) as data:
        for key in data.files:
            split, name = key.split("__")
            out.setdefault(split, {})[name] = data[key]
    return out


def read_sidecar(path) -> dict:
    path = Path(path)
    side = sidecar_path(path)
    if not path.is_file():
        raise FeatxError(f"model artifact not found: {path}")
    if not side.is_file():
        raise FeatxError(f"{path} has no sidecar {side.name}: it was not written completely by featx; refusing to load it")
    try:
        return json.loads(side.read_text())
    except (OSError, ValueError) as exc:
        raise FeatxError(f"cannot read {side}: {exc}") from None


def verified_sidecar(path) -> dict:
    """The sidecar of an artifact whose file matches its recorded sha256 (refused otherwise)."""
    path = Path(path)
    info = read_sidecar(path)
    if info.get("format") != ARTIFACT_FORMAT:
        raise FeatxError(f"{path} has artifact format {info.get('format')}, this featx reads {ARTIFACT_FORMAT}")
    if file_digest(path) != info.get("sha256"):
        raise FeatxError(f"{path} does not match the sha256 in {sidecar_path(path).name} (tampered, replaced or "
                         f"half-written); refusing to load it")
    return info


def read_head(path) -> tuple[dict, object]:
    """(sidecar, estimator) of a head artifact, unpickled only after its sha256 is checked."""
    path = Path(path)
    info = verified_sidecar(path)
    if info.get("kind") == "finetune":
        raise FeatxError(f"{path} is a fine-tuned network, not a head")
    return info, unpickle_head(path, info)


def unpickle_head(path: Path, info: dict):
    """The estimator of a head whose sidecar `verified_sidecar` returned."""
    import joblib

    try:
        try:
            return joblib.load(path)
        except ModuleNotFoundError as exc:  # it names a class featx has moved since the head was saved
            if exc.name not in MOVED_MODULES:
                raise
            with _moved_modules():
                return joblib.load(path)
    except Exception as exc:  # a file with the right hash that still fails is a version problem
        raise FeatxError(f"cannot unpickle {path}: {type(exc).__name__}: {exc} "
                         f"(made with scikit-learn {info.get('versions', {}).get('sklearn')})") from None


@contextlib.contextmanager
def _moved_modules():
    """While unpickling: the old module names resolve to the classes' new homes."""
    added = [old for old in MOVED_MODULES if old not in sys.modules]
    for old in added:
        sys.modules[old] = importlib.import_module(MOVED_MODULES[old])
    try:
        yield
    finally:
        for old in added:
            sys.modules.pop(old, None)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
