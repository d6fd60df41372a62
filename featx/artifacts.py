"""Trained models on disk: a joblib file plus a JSON sidecar that says how to trust and use it.

The sidecar holds the sha256 of the joblib file, checked before anything is unpickled
(unpickling runs code: load only artifacts from sources you trust), the exact backbone and
preprocessing of the features the head was trained on, the classes and decision threshold,
and the metrics. An `ImageClassifier` predicts from features or straight from image files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from .atomic import atomic_path, write_text_atomic
from .errors import FeatxError

ARTIFACT_FORMAT = 1
# The parts of a feature cache's config that must match for features to be interchangeable.
FEATURE_IDENTITY = ("backbone", "timm_model", "numerics", "weights_sha256", "data_config", "layer", "tta", "decode")


def sidecar_path(artifact) -> Path:
    return Path(artifact).with_suffix(".json")


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def images_fingerprint(items) -> str:
    """Names an exact set of images, (relative path, sha1 of bytes) pairs, whatever their order."""
    return hashlib.sha256("\n".join(sorted(f"{p}\t{h}" for p, h in items)).encode()).hexdigest()


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
    info = {**info, "format": ARTIFACT_FORMAT, "file": path.name, "sha256": file_sha256(path)}
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
    return file_sha256(path)


def load_predictions(artifact, info: dict | None = None) -> dict:
    """{split: {"path", "sha1", "y", "proba"}} as saved with an artifact (checked against its sidecar)."""
    info = info or read_sidecar(artifact)
    entry = info.get("predictions")
    if not entry:
        raise FeatxError(f"{artifact} has no saved predictions (made by an older featx); run featx fit or featx finetune again")
    path = Path(artifact).with_name(entry["file"])
    if not path.is_file() or file_sha256(path) != entry["sha256"]:
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


def load(path):
    """Load an artifact after checking its sha256 against the sidecar (pickles run code when loaded).

    Returns an `ImageClassifier` (a head from `featx fit`) or a `FineTunedClassifier`.
    """
    path = Path(path)
    info = read_sidecar(path)
    if info.get("format") != ARTIFACT_FORMAT:
        raise FeatxError(f"{path} has artifact format {info.get('format')}, this featx reads {ARTIFACT_FORMAT}")
    if file_sha256(path) != info.get("sha256"):
        raise FeatxError(f"{path} does not match the sha256 in {sidecar_path(path).name} (tampered, replaced or "
                         f"half-written); refusing to load it")
    if info.get("kind") == "finetune":
        return FineTunedClassifier(info, path)
    import joblib

    try:
        estimator = joblib.load(path)
    except Exception as exc:  # a file with the right hash that still fails is a version problem
        raise FeatxError(f"cannot unpickle {path}: {type(exc).__name__}: {exc} "
                         f"(made with scikit-learn {info.get('versions', {}).get('sklearn')})") from None
    return ImageClassifier(estimator, info, path)


class _SavedModel:
    """What every loaded artifact knows: its sidecar, classes, threshold and how its inputs were made."""

    def __init__(self, info: dict, path=None):
        self.info = info
        self.path = Path(path) if path else None
        self.classes_ = np.array(info["classes"])
        self.threshold = info.get("threshold")
        self.feature_config: dict = info["features"]["config"]

    def predict(self, X, **kwargs) -> np.ndarray:
        """Class names, using the stored threshold on the second class for two-class models."""
        return self.decide(self.predict_proba(X, **kwargs))

    def decide(self, proba: np.ndarray) -> np.ndarray:
        if len(self.classes_) == 2 and self.threshold is not None:
            return self.classes_[(proba[:, 1] >= self.threshold).astype(int)]
        return self.classes_[proba.argmax(1)]


class ImageClassifier(_SavedModel):
    """A head and the recipe of its features: `predict_proba` takes feature rows or image paths.

    Paths go through the same backbone, weights and preprocessing the head was trained on;
    feature rows or a FeatureStore are checked to come from that recipe.
    """

    def __init__(self, head, info: dict, path=None):
        super().__init__(info, path)
        self.head = head
        self._backbone = None

    def __repr__(self) -> str:
        return (f"ImageClassifier({self.info['head']} on {self.feature_config['backbone']}, "
                f"classes={self.info['classes']}, threshold={self.threshold})")

    def check_features(self, config: dict, source: str = "these features") -> None:
        """Refuse features made by another backbone, weights or preprocessing."""
        differs = [k for k in FEATURE_IDENTITY if config.get(k) != self.feature_config.get(k)]
        if differs:
            raise FeatxError(
                f"{source} were made differently from the features this model was trained on "
                f"({', '.join(differs)}: model {self.feature_config['backbone']}, "
                f"features {config.get('backbone')}); use features of the same backbone and preprocessing")

    def predict_proba(self, X, **kwargs) -> np.ndarray:
        """Class probabilities (columns follow `classes_`) for feature rows, a FeatureStore, or image paths."""
        return self.head.predict_proba(self._features(X, **kwargs))

    def _features(self, X, **kwargs) -> np.ndarray:
        from .store import FeatureStore

        if isinstance(X, FeatureStore):
            self.check_features(X.config, str(X.path))
            return X.arrays(kwargs.get("split"))[0]
        if isinstance(X, np.ndarray) and X.ndim == 2 and X.dtype.kind == "f":
            width = self.info["features"]["num_features"]
            if X.shape[1] != width:
                raise FeatxError(f"features have {X.shape[1]} columns; this model expects {width} "
                                 f"({self.feature_config['backbone']})")
            return X
        feats, reasons, _ = self.image_features(X, **kwargs)
        bad = [f"{p}: {r}" for p, r in zip(X, reasons) if r]
        if bad:
            raise FeatxError(f"{len(bad)} unreadable image(s), e.g. {bad[0]}")
        return feats

    def image_features(self, paths, *, weights: str = "auto", device: str = "auto", batch_size=None,
                       workers=None, progress: bool = False):
        """(features, reason-or-None per image, sha1 per image), with this model's backbone."""
        from .decoding import mode_of_policy
        from .extraction import compute_features

        if isinstance(paths, (str, Path)):
            paths = [paths]
        bb = self.backbone(weights)
        return compute_features(bb, list(paths), device=device, batch_size=batch_size, workers=workers,
                                tta=self.feature_config.get("tta", "none"),
                                decode=mode_of_policy(self.feature_config.get("decode")), progress=progress)

    def image_proba(self, paths, **kwargs) -> tuple[np.ndarray, list]:
        """(probabilities with NaN rows for unreadable images, reason-or-None per image)."""
        feats, reasons, _ = self.image_features(paths, **kwargs)
        proba = np.full((len(reasons), len(self.classes_)), np.nan)
        ok = [i for i, r in enumerate(reasons) if r is None]
        if ok:
            proba[ok] = self.head.predict_proba(feats[ok])
        return proba, reasons

    def backbone(self, weights: str = "auto"):
        """Build the backbone the head was trained on, and check its weights are the same ones."""
        from .backbones import create_backbone

        if self._backbone is not None:
            return self._backbone
        c = self.feature_config
        if weights == "auto":
            recorded = Path(c.get("weights_source", ""))
            if c.get("weights_source", "").startswith("random"):
                weights = "random"
            elif recorded.is_absolute() and recorded.is_file():
                weights = str(recorded)
            else:
                weights = "imagenet"
        layer = None if c.get("layer") in (None, "pooled") else c["layer"]
        bb = create_backbone(c["backbone"], weights, layer=layer)
        if bb.weights_sha256 != c["weights_sha256"]:
            raise FeatxError(f"the {c['backbone']} weights found ({bb.weights_source}) differ from those this model "
                             f"was trained with ({c.get('weights_source')}); pass those with --weights PATH")
        self.check_features({**c, **bb.identity()}, f"features of {bb.weights_source}")
        self._backbone = bb
        return bb


class FineTunedClassifier(_SavedModel):
    """A model from `featx finetune`: the registry's backbone plus its trained dropout+linear head.

    Built with the backbone's own code, its weights loaded from the checkpoint with
    weights_only=True, and fed with the preprocessing it was trained with.
    """

    def __init__(self, info: dict, path):
        super().__init__(info, path)
        self._net = None

    def __repr__(self) -> str:
        return (f"FineTunedClassifier({self.feature_config['backbone']}, classes={self.info['classes']}, "
                f"threshold={self.threshold})")

    def network(self):
        """The trained torch module (backbone -> dropout -> linear), in eval mode."""
        import torch

        from .backbones import Backbone, create_backbone
        from .finetuning import ImageClassifierNet

        if self._net is None:
            c = self.feature_config
            bb = create_backbone(c["backbone"], "random")
            net = ImageClassifierNet(bb.model, bb.num_features, len(self.classes_),
                                     self.info["params"].get("dropout", 0.0))
            try:
                net.load_state_dict(torch.load(self.path, map_location="cpu", weights_only=True))
            except (RuntimeError, ValueError) as exc:
                raise FeatxError(f"{self.path} does not fit the {c['backbone']} backbone: {first_line(exc)}") from None
            net.eval().requires_grad_(False)
            self._net = Backbone(bb.spec, net, len(self.classes_), c["data_config"], str(self.path),
                                 self.info["sha256"])
        return self._net

    def image_proba(self, paths, *, weights: str = "auto", device: str = "auto", batch_size=None, workers=None,
                    progress: bool = False) -> tuple[np.ndarray, list]:
        """(probabilities with NaN rows for unreadable images, reason-or-None per image)."""
        from .extraction import compute_features

        if isinstance(paths, (str, Path)):
            paths = [paths]
        logits, reasons, _ = compute_features(self.network(), list(paths), device=device, batch_size=batch_size,
                                              workers=workers, progress=progress)
        shifted = np.exp(logits - np.nanmax(logits, axis=1, keepdims=True))
        return shifted / shifted.sum(1, keepdims=True), reasons

    def predict_proba(self, paths, **kwargs) -> np.ndarray:
        proba, reasons = self.image_proba(paths, **kwargs)
        bad = [f"{p}: {r}" for p, r in zip(paths, reasons) if r]
        if bad:
            raise FeatxError(f"{len(bad)} unreadable image(s), e.g. {bad[0]}")
        return proba



def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
