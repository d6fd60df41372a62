"""The artifact format: a model file plus a JSON sidecar that says how to trust and use it.

A head from `featx fit` is a skops file (`*.skops`: loading it runs no code from it, see
artifacts.portable); a fine-tune from `featx finetune` is a torch state_dict (`model.pt`, read with
weights_only=True). Heads saved before format 3 are joblib pickles, which run code when loaded:
they load only when the caller says it trusts them (`trust_pickle=True`), and `convert_artifact`
rewrites one as a skops file once. Every artifact gets the same sidecar (`build_sidecar`): the
sha256 of the model file, checked before it is read, the exact backbone and preprocessing of its
inputs, the classes and decision threshold, the metrics, versions and date; and a
`.predictions.npz` with each split's per-image probabilities, which `featx compare` reads.

Integrity: the sidecar carries a digest of its own content (`sidecar_sha256`, format 2), so an
edited class list, threshold or recipe is refused like a replaced model file. A model is read
once, its bytes checked and then used (never checked, then read again). A model, its predictions
and its sidecar are replaced together or not at all: the new model and predictions are written
beside the old ones as `*.pending`, the sidecar's atomic replacement commits them, and the pending
files then take their names. Whoever finds a committed sidecar with its files still pending (a
kill in between) completes the move.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from .._core.atomic import atomic_path, write_text_atomic
from .._core.errors import FeatxError
from .._core.hashing import file_digest, images_fingerprint, record_hash
from .._core.versions import package_versions
from . import portable
from .sidecar import Sidecar

ARTIFACT_FORMAT = 3  # 3: heads in skops files; 2: the sidecar's own digest; 1 has none (both still read)
READ_FORMATS = (1, 2, 3)
SIDECAR_DIGEST = "sidecar_sha256"
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


def predictions_path(artifact) -> Path:
    return Path(artifact).with_suffix(".predictions.npz")


def save_artifact(path, estimator, info: dict, predictions: dict | None = None) -> Path:
    """A head from `featx fit`: its skops file, its predictions and its sidecar, replaced together.

    A kill or a full disk before the sidecar is committed leaves the previous artifact as it was (or
    none); after, the new one. No half-written artifact is ever loadable.
    """
    path = Path(path)
    with atomic_path(pending_path(path)) as tmp:
        portable.dump(estimator, tmp)
    return _finish(path, {**info, "serialization": "skops"}, predictions)


def save_checkpoint_artifact(path, state_dict: dict, info: dict, predictions: dict | None = None) -> Path:
    """A fine-tuned model: a torch state_dict (loadable with weights_only=True) and the same sidecar."""
    path = Path(path)
    with atomic_path(pending_path(path)) as tmp:
        save_torch(state_dict, tmp)
    return _finish(path, {**info, "serialization": "torch"}, predictions)


def save_version(path, raw: bytes, info: dict, predictions: dict | None = None) -> Path:
    """A new version of a model whose file is unchanged (`raw`, the verified bytes of the one it comes from) and
    whose sidecar says more (featx calibrate): written and committed like any artifact."""
    path = Path(path)
    with atomic_path(pending_path(path)) as tmp:
        Path(tmp).write_bytes(raw)
    return _finish(path, info, predictions)


def save_torch(obj, path) -> None:
    """torch.save through a Python file object, so that a full disk raises OSError (ENOSPC), which
    atomic_path turns into featx's one line, not the RuntimeError of torch's own zip writer."""
    import torch

    with open(path, "wb") as handle:
        torch.save(obj, handle)


def pending_path(path) -> Path:
    """Where a new version of a model file (or its predictions) waits until its sidecar commits it."""
    return Path(path).with_name(Path(path).name + ".pending")


def _finish(path: Path, info: dict, predictions: dict | None) -> Path:
    """Write the predictions (pending), commit the sidecar, then move the pending files into place."""
    info = {**info, "format": ARTIFACT_FORMAT, "file": path.name, "sha256": file_digest(pending_path(path))}
    if predictions:
        info["predictions"] = {"file": predictions_path(path).name,
                               "sha256": _save_predictions(pending_path(predictions_path(path)), predictions)}
        info["splits"] = {s: {"n": len(p["y"]), "images_sha256": images_fingerprint(zip(p["path"], p["sha1"]))}
                          for s, p in predictions.items()}
    info = json.loads(json.dumps(info, default=_json_default))  # plain JSON values: the digest is of what is read back
    info[SIDECAR_DIGEST] = sidecar_digest(info)
    write_text_atomic(sidecar_path(path), json.dumps(info, indent=2) + "\n")  # the commit
    _settle(path, info)
    return path


def sidecar_digest(info: dict) -> str:
    """The digest of everything a sidecar says but the digest itself."""
    return record_hash({k: v for k, v in info.items() if k != SIDECAR_DIGEST})


def _settle(path: Path, info: dict) -> None:
    """Give committed pending files their names: the model file, then its predictions."""
    files = [path]
    if info.get("predictions"):
        files.append(path.with_name(info["predictions"]["file"]))
    for final in files:
        pending = pending_path(final)
        if pending.exists():
            os.replace(pending, final)


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
    info = info or checked_sidecar(artifact)
    entry = info.get("predictions")
    if not entry:
        raise FeatxError(f"{artifact} has no saved predictions (made by an older featx); run featx fit or featx finetune again")
    path = Path(artifact).with_name(entry["file"])
    raw = verified_bytes(path, entry["sha256"])
    if raw is None:
        raise FeatxError(f"{path} is missing or does not match its sidecar; fit or fine-tune the model again")
    out = {}
    with np.load(io.BytesIO(raw), allow_pickle=False) as data:
        for key in data.files:
            split, name = key.split("__")
            out.setdefault(split, {})[name] = data[key]
    return out


def verified_bytes(path: Path, sha256: str) -> bytes | None:
    """The bytes of `path` if their sha256 is the one recorded, read once (what is checked is what is
    used); a committed version still pending is moved into place first. None if neither matches."""
    for attempt in (path, pending_path(path)):
        try:
            raw = attempt.read_bytes()
        except OSError:
            continue
        if hashlib.sha256(raw).hexdigest() == sha256:
            if attempt != path:
                with contextlib.suppress(OSError):
                    os.replace(attempt, path)
            return raw
    return None


def read_sidecar(path) -> dict:
    """An artifact's sidecar as written, unchecked (`checked_sidecar` checks it)."""
    path = Path(path)
    side = sidecar_path(path)
    if not path.is_file() and not pending_path(path).is_file():
        raise FeatxError(f"model artifact not found: {path}")
    if not side.is_file():
        raise FeatxError(f"{path} has no sidecar {side.name}: it was not written completely by featx; refusing to load it")
    try:
        return json.loads(side.read_text())
    except (OSError, ValueError) as exc:
        raise FeatxError(f"cannot read {side}: {exc}") from None


def checked_sidecar(path, info: dict | None = None) -> dict:
    """The sidecar of `path` (or `info`, read before), refused when it was edited since featx wrote it:
    its classes, threshold and recipe decide what the model answers."""
    info = read_sidecar(path) if info is None else info
    if info.get("format") not in READ_FORMATS:
        raise FeatxError(f"{path} has artifact format {info.get('format')}, this featx reads "
                         f"{', '.join(map(str, READ_FORMATS))}")
    if info["format"] >= 2 and info.get(SIDECAR_DIGEST) != sidecar_digest(info):
        raise FeatxError(f"{sidecar_path(path)} was edited or damaged since featx wrote it (its classes, threshold or "
                         "recipe may no longer be the model's); refusing to use it: fit or fine-tune the model again")
    if info["format"] < ARTIFACT_FORMAT and (info.get("serialization") == "skops" or
                                             Path(path).suffix == portable.SUFFIX):
        raise FeatxError(f"{sidecar_path(path)} says artifact format {info['format']}, which never described a skops "
                         "file (skops heads came with format 3): the sidecar was edited; fit the model again")
    for name in (info.get("file"), (info.get("predictions") or {}).get("file")):
        if name is not None and (not isinstance(name, str) or not _plain_name(name)):
            raise FeatxError(f"{sidecar_path(path)} names the file {name!r}: a sidecar names only plain files in its "
                             "own folder; refusing it")
    return info


def _plain_name(name: str) -> bool:
    """A file name with no folder in it (no separator, not . or ..)."""
    return name not in ("", ".", "..") and "/" not in name and "\\" not in name and "\0" not in name


def verified_sidecar(path) -> dict:
    """The sidecar of an artifact whose sidecar is intact and whose file matches its recorded sha256."""
    return read_verified(path)[0]


def read_verified(path) -> tuple[dict, bytes]:
    """(sidecar, the model file's bytes), both checked; the bytes are the ones to load."""
    path = Path(path)
    info = checked_sidecar(path)
    other = described_beside(path, info)
    if other:
        raise FeatxError(f"{path} is not the file its sidecar describes; that is {other} (e.g. after featx convert)")
    raw = verified_bytes(path, info.get("sha256", ""))
    if raw is None:
        raise FeatxError(f"{path} does not match the sha256 in {sidecar_path(path).name} (tampered, replaced or "
                         f"half-written); refusing to load it")
    return info, raw


def serialization(info: dict) -> str:
    """How the model file is stored: "skops", "torch", or "joblib" (a pickle: heads before format 3)."""
    return info.get("serialization") or ("torch" if Sidecar.from_json(info).finetuned else "joblib")


def described_beside(path: Path, info: dict) -> Path | None:
    """The other file beside `path` that its sidecar describes, if there is one: a pickle left by a kill
    just after `featx convert` committed its skops file. (A renamed pair describes no file beside it.)"""
    name = info.get("file")
    if not name or name == path.name:
        return None
    other = path.with_name(name)
    return other if other.exists() or pending_path(other).exists() else None


def read_head(path, *, trust_pickle: bool = False) -> tuple[dict, object]:
    """(sidecar, estimator) of a head artifact, read only from bytes whose sha256 was checked."""
    path = Path(path)
    info, raw = read_verified(path)
    if Sidecar.from_json(info).finetuned:
        raise FeatxError(f"{path} is a fine-tuned network, not a head")
    return info, head_from_bytes(path, info, raw, trust_pickle=trust_pickle)


def head_from_bytes(path: Path, info: dict, raw: bytes, *, trust_pickle: bool = False):
    """The estimator in `raw`, the checked bytes of the head at `path`: a skops file, or an older joblib
    pickle only when `trust_pickle` (unpickling runs whatever code the file holds)."""
    if serialization(info) == "skops":
        return portable.loads(raw, path)
    if not trust_pickle:
        raise FeatxError(f"{path} is a pickle (a head saved by featx before format 3): loading it runs any code it "
                         f"holds. If you trust where it came from, convert it once with featx convert --model {path} "
                         "--trust-pickle (or pass trust_pickle=True / --trust-pickle)")
    return _unpickle(path, info, raw)


def _unpickle(path: Path, info: dict, raw: bytes):
    import joblib

    try:
        try:
            return joblib.load(io.BytesIO(raw))
        except ModuleNotFoundError as exc:  # it names a class featx has moved since the head was saved
            if exc.name not in MOVED_MODULES:
                raise
            with _moved_modules():
                return joblib.load(io.BytesIO(raw))
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
