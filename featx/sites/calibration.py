"""`featx calibrate`: k labelled images from the site where a model will be used give a new version of it.

The new version keeps the model file as it is and adds, for that site: a decision threshold re-chosen by the
model's own rule on the site's images, optionally a probability scaling (Platt or temperature), and conformal
prediction sets. Its card gives the local estimate with its interval from those k images: ROC-AUC on all of
them (nothing learnt from them changes the ranking), and accuracy, sensitivity and specificity of the
re-chosen threshold out of fold (each image decided by a threshold chosen on the other patients' images), so
the figure is not flattered by the choice it measures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._core.console import log_line
from .._core.errors import FeatxError
from .._core.hashing import images_fingerprint
from ..artifacts.format import load_predictions, read_verified, save_version
from ..artifacts.local import LocalCalibration
from ..artifacts.model_card import write_model_card
from ..artifacts.predictors import load
from ..data.datasets import load_dataset
from ..data.files import sha1_of_files
from ..evaluation.conformal import CONFIDENCE, ConformalSets, check_confidence
from ..evaluation.decision import DecisionRule, decided
from ..evaluation.folds import group_folds
from ..evaluation.metrics import evaluate_with_intervals
from ..evaluation.scaling import Scaling, check_scaling, fit_scaling
from ..evaluation.significance import bootstrap_auc_ci, labels_for_half_width, wilson_interval
from ..evaluation.thresholds import choose_threshold, parse_threshold, threshold_rule
from .versions import model_images, new_version_path

MIN_PER_CLASS = 5  # below this, a threshold and its interval say nothing about a class
FOLDS = 5


@dataclass(frozen=True)
class Calibration:
    """What `calibrate` made: the new model's path and what it now says of the site."""

    path: Path
    local: LocalCalibration
    rule: DecisionRule
    threshold_before: float | None

    def lines(self) -> list[str]:
        site = self.local.site
        out = [f"calibrated on {self.local.where}"]
        if self.rule.thresholded:
            out.append(f"threshold {self.threshold_before:.4f} -> {self.rule.threshold:.4f} (chosen by {self.rule.how} on "
                       f"the site's images)")
        out += self.local.estimate_lines()
        if self.local.scaling:
            out.append(f"probabilities rescaled for {site}: {self.local.scaling.describe()}")
        if self.local.sets:
            out.append(f"{self.local.sets.describe()}")
        out.append(f"wrote {self.path} (and its card {self.path.with_suffix('.md').name})")
        return out


def calibrate(model, data, *, threshold=None, scaling: str = "none", confidence: float | None = CONFIDENCE,
              site: str | None = None, out=None, group_pattern: str | None = None, cache_dir=None, seed: int = 0,
              log=None) -> Calibration:
    """A new version of `model` (an artifact path) for the site whose labelled images are `data` (a folder
    of class folders or a manifest): a threshold re-chosen by `threshold` (a rule; default the model's own,
    youden if it was fixed), `scaling` ("none", "platt", "temperature"), and conformal sets at `confidence`
    (None: no sets). Written to `out` (default beside the model, `<name>.at-<site><suffix>`) with its card."""
    log = log or log_line
    source = Path(model)
    loaded = load(source)
    classes = [str(c) for c in loaded.classes_]
    scaling = check_scaling(scaling, len(classes))
    confidence = None if confidence is None else check_confidence(confidence)
    if loaded.local:
        raise FeatxError(f"{source.name} is already calibrated for {loaded.local.site}; calibrate the model it came "
                         f"from ({loaded.local.calibrated_from['file']})")
    rule = _rule(threshold, loaded)
    ds = load_dataset(data, group_pattern=group_pattern, cache_dir=cache_dir)
    site = site or Path(ds.source).stem
    out = new_version_path(source, out, f"at-{site}")
    rows, y = _labelled(ds, classes, rule, confidence)
    paths = [ds.absolute(ds.paths[i]) for i in rows]
    sha1s = _not_trained_on(source, loaded, ds, rows, paths)
    proba, reasons = loaded.image_proba(paths)
    unreadable = [str(p) for p, r in zip(paths, reasons) if r]
    if unreadable:
        raise FeatxError(f"{len(unreadable)} calibration images could not be read (e.g. {unreadable[0]}); fix or "
                         "remove them first")
    fitted = fit_scaling(scaling, y, proba)
    scaled = fitted.apply(proba) if fitted else proba
    new_threshold = choose_threshold(y, scaled[:, 1], rule) if rule else None
    groups = [ds.groups[i] for i in rows]
    estimate = local_estimate(y, scaled, groups, rule=rule, threshold_before=loaded.threshold, seed=seed)
    counts = {c: int((y == k).sum()) for k, c in enumerate(classes)}
    local = LocalCalibration(
        site=site, images=len(y), counts=counts,
        images_sha256=images_fingerprint(zip((ds.paths[i] for i in rows), sha1s)),
        where=f"{len(y)} labelled images from {site} ({', '.join(f'{n} {c}' for c, n in counts.items())})",
        scaling=fitted, sets=ConformalSets.fit(y, scaled, confidence, classes) if confidence else None,
        estimate=estimate, calibrated_from={"file": source.name, "sha256": loaded.info["sha256"]})
    _save(out, source, loaded, local, rule, new_threshold)
    result = Calibration(out, local, DecisionRule.of(read_verified(out)[0]), loaded.threshold)
    for line in result.lines():
        log(line)
    return result


def _rule(threshold, loaded) -> str | None:
    """The threshold rule to re-choose by: the one given, else the model's own, else youden (two classes)."""
    if len(loaded.classes_) != 2:
        if threshold is not None:
            raise FeatxError(f"--threshold applies to two classes; this model has {len(loaded.classes_)}")
        return None
    if threshold is None:
        return loaded.rule.how if loaded.rule.how != "fixed" else "youden"
    value = parse_threshold(threshold)
    if not isinstance(value, str):
        raise FeatxError("featx calibrate re-chooses the threshold by a rule (youden, f1, sensitivity=<v>); "
                         f"a fixed --threshold {value} needs no site's labels")
    return value


def _labelled(ds, classes: list[str], rule: str | None, confidence: float | None) -> tuple[list[int], np.ndarray]:
    """The labelled rows and their labels as the model's class indices; refuses what no rule can use."""
    foreign = [c for c in ds.classes if c not in classes]
    if foreign:
        raise FeatxError(f"{ds.source} has labels the model does not know ({', '.join(foreign)}); its classes are "
                         f"{', '.join(classes)}")
    rows = [i for i, label in enumerate(ds.labels) if label >= 0]
    y = np.array([classes.index(ds.classes[ds.labels[i]]) for i in rows], dtype=int)
    counts = np.bincount(y, minlength=len(classes))
    short = [f"{c} has {n}" for c, n in zip(classes, counts) if n < MIN_PER_CLASS]
    if short:
        raise FeatxError(f"calibration needs at least {MIN_PER_CLASS} labelled images of each class; "
                         f"{', '.join(short)} in {ds.source}")
    target = threshold_rule(rule) if rule else None
    if target is not None and target < 1 and counts[1] < math.ceil(1 / (1 - target)):
        raise FeatxError(f"--threshold {rule} needs at least {math.ceil(1 / (1 - target))} {classes[1]} images to "
                         f"tell {target:g} of them apart; {ds.source} has {counts[1]}")
    return rows, y


def _not_trained_on(source: Path, loaded, ds, rows: list[int], paths: list[Path]) -> list[str]:
    """The images' sha1s; refuses images the model was trained or validated on (same bytes)."""
    sha1s = sha1_of_files(paths)
    seen = model_images(source, loaded.info)
    clash = [(ds.paths[i], seen[h]) for i, h in zip(rows, sha1s) if h in seen]
    if clash:
        raise FeatxError(f"{len(clash)} calibration images are the model's own {clash[0][1]} images (same bytes, "
                         f"e.g. {clash[0][0]}); calibrate on images from the site it was not trained on")
    return sha1s


def local_estimate(y, proba, groups, *, rule: str | None, threshold_before: float | None, seed: int = 0) -> dict:
    """What k labelled images of a site say of a model there, with 95% intervals: ROC-AUC (stratified bootstrap), the
    model as it was (its old threshold), and the re-chosen threshold out of fold; and how many labels would
    narrow the accuracy interval to +-0.05."""
    y, proba = np.asarray(y), np.asarray(proba, dtype=np.float64)
    out: dict = {"images": int(len(y))}
    if proba.shape[1] == 2:
        ci = bootstrap_auc_ci(y, proba, seed=seed)
        from sklearn.metrics import roc_auc_score

        out["roc_auc"] = {"value": float(roc_auc_score(y, proba[:, 1])), "ci": list(ci) if ci else None}
        out["before"] = _proportions(y, decided(proba, threshold_before))
    if rule:
        pred = np.empty(len(y), dtype=int)
        for train, held in group_folds(y, groups, FOLDS, seed):
            cut = choose_threshold(y[train], proba[train, 1], rule)
            pred[held] = proba[held, 1] >= cut
        out["rechosen"] = _proportions(y, pred)
    else:
        out["rechosen"] = _proportions(y, proba.argmax(1))
    accuracy = out["rechosen"]["accuracy"]["value"]
    out["labels_for_0.05"] = labels_for_half_width(accuracy)
    return out


def _proportions(y, pred) -> dict:
    """Accuracy, and for two classes sensitivity and specificity, each with its Wilson interval."""
    parts = {"accuracy": (pred == y)}
    if y.max() <= 1:
        parts.update(sensitivity=(pred == y)[y == 1], specificity=(pred == y)[y == 0])
    return {name: {"value": float(hits.mean()), "ci": list(wilson_interval(int(hits.sum()), len(hits))),
                   "n": int(len(hits))} for name, hits in parts.items()}


def _save(out: Path, source: Path, loaded, local: LocalCalibration, rule: str | None, threshold: float | None) -> None:
    """The new version: the same model bytes; its sidecar with the site's threshold, scaling and sets; its saved
    predictions (the training data's splits) rescaled and re-scored at the new threshold; then its card."""
    info, raw = read_verified(source)
    predictions = load_predictions(source, info) if info.get("predictions") else None
    classes = list(info["classes"])
    metrics = dict(info.get("metrics") or {})
    if predictions:
        for split, p in predictions.items():
            p["proba"] = local.proba(np.asarray(p["proba"]))
            metrics[split] = evaluate_with_intervals(p["y"], p["proba"], classes, threshold if threshold is not None else 0.5)
    drop = ("file", "sha256", "predictions", "splits", "sidecar_sha256")
    new = {k: v for k, v in info.items() if k not in drop}
    new.update(metrics=metrics, local=local.to_json())
    if rule:
        new.update(threshold=threshold, threshold_rule=rule)
    save_version(out, raw, new, predictions)
    write_model_card(out)
