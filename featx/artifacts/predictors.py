"""Loaded artifacts as predictors: a head with the recipe of its features, or a fine-tuned network.

`load` checks an artifact against its sidecar (artifacts.format) and returns an `ImageClassifier`
(a head from `featx fit`, which predicts from feature rows, a FeatureStore or image files) or a
`FineTunedClassifier` (a network from `featx finetune`, which predicts from image files). Both
feed images exactly as they were fed in training: the same backbone, weights and preprocessing.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from .._core.errors import FeatxError, first_line
from ..data.decode_policy import DecodePolicy
from ..evaluation.decision import DecisionRule
from ..features.identity import FeatureRecipe
from .local import LocalCalibration
from .format import head_from_bytes, read_verified, sidecar_path, verified_bytes
from .sidecar import Sidecar


def load(path, *, trust_pickle: bool = False):
    """Load an artifact after checking its sidecar and its file's sha256; loading runs no code from it.

    Returns an `ImageClassifier` (a head from `featx fit`, a skops file) or a `FineTunedClassifier`
    (a state_dict, read with weights_only=True when first used, checked again then). A head saved by
    featx before format 3 is a joblib pickle, which runs any code it holds: it loads only with
    `trust_pickle=True`; `featx.convert_artifact` rewrites it without pickle once.
    """
    path = Path(path)
    info, raw = read_verified(path)
    if Sidecar.from_json(info).finetuned:
        return FineTunedClassifier(info, path)
    return ImageClassifier(head_from_bytes(path, info, raw, trust_pickle=trust_pickle), info, path)


class _SavedModel:
    """What every loaded artifact knows: its sidecar, classes, threshold and how its inputs were made."""

    def __init__(self, info: dict, path=None):
        self.info = info
        self.path = Path(path) if path else None
        self.classes_ = np.array(info["classes"])
        self.threshold = info.get("threshold")
        self.rule = DecisionRule.of(info)  # how it decides: predict, the card, the export and the demo say the same
        self.sidecar = Sidecar.from_json(info)
        self.feature_config: dict = info["features"]["config"]  # facts beside the recipe: weights, options
        self.feature_recipe = self.sidecar.recipe
        self.local = LocalCalibration.of(info)  # a site's scaling and prediction sets (featx calibrate), or None

    @property
    def decode_policy(self) -> DecodePolicy:
        """How its training images were decoded (mode, DICOM window), less any corruption."""
        return self.feature_recipe.decode.clean()

    def predict(self, X, **kwargs) -> np.ndarray:
        """Class names, by the model's decision rule (its stored threshold on the second of two classes)."""
        return self.decide(self.predict_proba(X, **kwargs))

    def decide(self, proba: np.ndarray) -> np.ndarray:
        return self.rule.decide(proba)

    def prediction_sets(self, proba: np.ndarray) -> list[str | None]:
        """Each row's conformal prediction set in words, for a model calibrated with sets (else None per row)."""
        return self.local.set_words(proba, self.classes_) if self.local else [None] * len(proba)

    def _at_site(self, proba: np.ndarray) -> np.ndarray:
        """Probabilities as the model gives them: rescaled for its site when `featx calibrate` learnt a scaling."""
        return self.local.proba(proba) if self.local else proba


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

    def check_features(self, made: FeatureRecipe, source: str = "these features") -> None:
        """Refuse features made by another backbone, weights or preprocessing."""
        differs = made.differences(self.feature_recipe)
        if differs:
            raise FeatxError(
                f"{source} were made differently from the features this model was trained on "
                f"({', '.join(differs)}: model {self.feature_config['backbone']}, "
                f"features {made.backbone}); use features of the same backbone and preprocessing")

    def predict_proba(self, X, **kwargs) -> np.ndarray:
        """Class probabilities (columns follow `classes_`) for feature rows, a FeatureStore, or image paths."""
        return self._at_site(self.head.predict_proba(self._features(X, **kwargs)))

    def _features(self, X, **kwargs) -> np.ndarray:
        from ..features.store import FeatureStore

        if isinstance(X, FeatureStore):
            self.check_features(FeatureRecipe.from_config(X.config), str(X.path))
            return X.arrays(kwargs.get("split"))[0]
        if isinstance(X, np.ndarray) and X.ndim == 2 and X.dtype.kind == "f":
            if not len(X):
                raise FeatxError("no feature rows given: predict_proba needs at least one")
            width = self.info["features"]["num_features"]
            if X.shape[1] != width:
                raise FeatxError(f"features have {X.shape[1]} columns; this model expects {width} "
                                 f"({self.feature_config['backbone']})")
            return X
        feats, reasons, _ = self.image_features(X, **kwargs)
        _every_image_read(X, reasons)
        return feats

    def image_features(self, paths, *, weights: str = "auto", device: str = "auto", batch_size=None,
                       workers=None, progress: bool = False):
        """(features, reason-or-None per image, sha1 per image), with this model's backbone."""
        from ..features.computing import compute_features

        paths = _image_paths(paths)
        bb = self.backbone(weights)
        return compute_features(bb, list(paths), device=device, batch_size=batch_size, workers=workers,
                                tta=self.feature_recipe.tta, policy=self.decode_policy,
                                compute=self.feature_config.get("compute"), progress=progress)

    def image_proba(self, paths, **kwargs) -> tuple[np.ndarray, list]:
        """(probabilities with NaN rows for unreadable images, reason-or-None per image)."""
        feats, reasons, _ = self.image_features(paths, **kwargs)
        proba = np.full((len(reasons), len(self.classes_)), np.nan)
        ok = [i for i, r in enumerate(reasons) if r is None]
        if ok:
            proba[ok] = self.head.predict_proba(feats[ok])
        return self._at_site(proba), reasons

    def extraction_recipe(self, weights: str = "auto") -> dict:
        """The `featx.extract` arguments that make this head's features again (e.g. from corrupted
        images); `weights` "auto": the recorded file or folder if it is still there, else imagenet."""
        from ..features.recipe import extraction_options

        return extraction_options(self.feature_config, weights)

    def backbone(self, weights: str = "auto"):
        """Build the backbone the head was trained on, and check its weights are the same ones."""
        from ..models.backbones import create_backbone

        if self._backbone is not None:
            return self._backbone
        c = self.feature_config
        recipe = self.extraction_recipe(weights)
        bb = create_backbone(c["backbone"], recipe["weights"], layer=recipe["layer"], image_size=recipe["image_size"],
                             pool=recipe["pool"], layers=recipe["layers"])
        if bb.weights_sha256 != c["weights_sha256"]:
            raise FeatxError(f"the {c['backbone']} weights found ({bb.weights_source}) differ from those this model "
                             f"was trained with ({c.get('weights_source')}); pass those with --weights PATH")
        self.check_features(FeatureRecipe.of(bb.identity(), tta=self.feature_recipe.tta, decode=self.feature_recipe.decode),
                            f"features of {bb.weights_source}")
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

    @property
    def data_config(self) -> dict:
        """How images are fed to the network: its size, interpolation, crop, mean and std."""
        return self.feature_config["data_config"]


    def network(self):
        """The trained `FinetuneNetwork` (backbone -> dropout -> linear), in eval mode."""
        import torch

        from ..models.backbones import create_backbone
        from ..models.network import FinetuneNetwork

        if self._net is None:
            c = self.feature_config
            raw = verified_bytes(self.path, self.info["sha256"])  # checked as read: not swapped since load
            if raw is None:
                raise FeatxError(f"{self.path} no longer matches the sha256 in {sidecar_path(self.path).name} "
                                 "(replaced since the model was loaded); refusing to use it")
            bb = create_backbone(c["backbone"], "random", image_size=self.sidecar.image_size)
            net = FinetuneNetwork(bb.model, bb.num_features, len(self.classes_), self.info["params"].get("dropout", 0.0))
            try:
                net.load_state_dict(torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True))
            except (RuntimeError, ValueError) as exc:
                raise FeatxError(f"{self.path} does not fit the {c['backbone']} backbone: {first_line(exc)}") from None
            self._net = net.eval().requires_grad_(False)
        return self._net

    def image_proba(self, paths, *, weights: str = "auto", device: str = "auto", batch_size=None, workers=None,
                    progress: bool = False) -> tuple[np.ndarray, list]:
        """(probabilities with NaN rows for unreadable images, reason-or-None per image).
        `weights` is accepted for a head's signature; a fine-tune's weights are its own."""
        return self.network_proba(self.network(), paths, device=device, batch_size=batch_size, workers=workers,
                                  progress=progress)

    def network_proba(self, net, paths, *, device: str = "auto", batch_size=None, workers=None,
                      progress: bool = False) -> tuple[np.ndarray, list]:
        """`image_proba` with another network of this model's architecture (e.g. one whose BatchNorm statistics
        were re-estimated for a site): the same preprocessing, decoding, TTA and softmax."""
        from ..features.computing import run_on_images

        paths = _image_paths(paths)
        logits, reasons, _ = run_on_images(net, self.data_config, len(self.classes_), list(paths),
                                           device=device, batch_size=batch_size, workers=workers,
                                           tta=self.feature_recipe.tta, policy=self.decode_policy,
                                           progress=progress)
        shifted = np.exp(logits - np.nanmax(logits, axis=1, keepdims=True))
        return self._at_site(shifted / shifted.sum(1, keepdims=True)), reasons

    def predict_proba(self, paths, **kwargs) -> np.ndarray:
        """Class probabilities (columns follow `classes_`) of image paths, every one of which must be
        readable; `image_proba` gives a row or a reason per image instead."""
        proba, reasons = self.image_proba(paths, **kwargs)
        _every_image_read(paths, reasons)
        return proba


def _image_paths(paths) -> list:
    """One path or several, as a list; none at all is refused (scikit-learn's raw ValueError otherwise)."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise FeatxError("no images given: predict_proba and image_proba need at least one image path")
    return paths


def _every_image_read(paths, reasons) -> None:
    """predict_proba returns a row for every image or none, and says which call keeps the others."""
    from ..data.loading import refuse_unreadable

    refuse_unreadable(_image_paths(paths), reasons,
                      instead="model.image_proba(paths) returns a probability row or a reason per image instead")
