"""`featx robustness`: every saved model of a dataset, on corrupted copies of one split.

Heads see features extracted from the corrupted images with their own backbone, weights and
preprocessing: one cache per corruption and severity (under <cache>/<dataset>/corrupted/<split>/),
resumable and reused like any extraction. Fine-tunes see the same corrupted pixels (a corruption
draws its randomness from the image's path relative to the data root); their outputs are kept
beside the network (robustness/*.npz), so a re-run computes nothing. The clean rows are the
predictions saved with each model, the ones `featx compare` ranks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .._core.atomic import atomic_path
from .._core.console import log_line
from .._core.errors import FeatxError
from .._core.hashing import images_fingerprint, record_hash
from .._core.options import check_choice
from .._core.paths import default_cache_dir
from ..artifacts.catalogue import artifacts_of_dataset, find_artifacts, method_name
from ..artifacts.format import load_predictions
from ..artifacts.predictors import FineTunedClassifier, load
from ..data.corruptions import CORRUPTIONS, SEVERITIES, check_corruption
from ..data.decode_policy import CORRUPTION_RULES
from ..data.datasets import load_dataset
from ..evaluation.significance import bootstrap_auc_ci, point_metrics
from ..features.identity import FeatureRecipe
from .cards import refresh_cards
from .measurements import Robustness, save_robustness

DEFAULT_SEVERITIES = (1, 3, 5)
def parse_corruptions(text) -> list[str]:
    """"all" or comma-separated corruption names -> the names, checked."""
    if text in (None, "all"):
        return list(CORRUPTIONS)
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    if not names:
        raise FeatxError(f"--corruptions names none; choose from {', '.join(CORRUPTIONS)}, or all")
    for name in names:
        check_corruption(name, 1)
    return list(dict.fromkeys(names))


def parse_severities(text) -> list[int]:
    """"1,3,5" -> [1, 3, 5], each in 1..5."""
    values = text.split(",") if isinstance(text, str) else list(text)
    try:
        severities = sorted({int(v) for v in values})
    except ValueError:
        raise FeatxError(f"--severities takes numbers 1 to 5 separated by commas, e.g. 1,3,5; not {text!r}") from None
    if not severities or any(s not in SEVERITIES for s in severities):
        raise FeatxError(f"--severities takes numbers 1 to 5 separated by commas, e.g. 1,3,5; not {text!r}")
    return severities


def robustness(data, *, split: str = "test", corruptions="all", severities=DEFAULT_SEVERITIES, models_dir=None,
               cache_dir=None, device: str = "auto", batch_size=None, workers=None, n_boot: int = 1000, seed: int = 0,
               progress: bool = True, log=None) -> Robustness:
    """Evaluate every head and fine-tune of `data` on corrupted copies of its `split`.

    Returns the rows and saves them beside the models (`robustness-<split>.json`), where
    `featx compare` finds them for its report, and writes each model's card again with its own rows; `reporting.robustness_plot.write_outputs` writes the CSV and the plot.
    """
    check_choice("split", split)
    log = log or log_line
    corruptions, severities = parse_corruptions(corruptions), parse_severities(severities)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    models_dir = Path(models_dir) if models_dir else cache_dir / "models"
    ds = load_dataset(data, cache_dir=cache_dir)
    if split not in ds.splits:
        raise FeatxError(f"{ds.root} has no {split} split; its splits: {', '.join(ds.counts())}")
    images = ds.subset([split])
    models, notes = _models(artifacts_of_dataset(find_artifacts(models_dir), data, cache_dir, models_dir)[0], split)
    if not models:
        raise FeatxError(f"no model of {ds.root} was evaluated on its {split} split; run featx fit or featx finetune")
    run = _Run(data, split, images, cache_dir, dict(device=device, batch_size=batch_size, workers=workers,
                                                      progress=progress), log)
    rows = [_row(m.name, "none", 0, m.clean_y, m.clean_proba, m.model.threshold, n_boot, seed) for m in models]
    order = sorted(range(len(models)), key=lambda i: -(rows[i]["roc_auc"] or 0))  # best clean first, as compare
    models, rows = [models[i] for i in order], [rows[i] for i in order]
    started = time.perf_counter()
    for corruption in corruptions:
        for severity in severities:
            log(f"robustness: {corruption} at severity {severity}")
            for m in models:
                y, proba = run.outputs(m, corruption, severity)
                rows.append(_row(m.name, corruption, severity, y, proba, m.model.threshold, n_boot, seed))
    log(f"robustness: {len(models)} models x {len(corruptions)} corruptions x {len(severities)} severities on "
        f"{len(images)} {split} images in {time.perf_counter() - started:.0f} s")
    result = Robustness(split, str(ds.root), corruptions, severities, [m.name for m in models], rows,
                        notes + run.notes, time.strftime("%Y-%m-%d %H:%M"), {m.name: m.sha256 for m in models})
    save_robustness(result, models_dir)
    cards = refresh_cards(data, models_dir=models_dir, cache_dir=cache_dir)
    log(f"model cards updated with these results: {len(cards)}")
    return result


@dataclass
class _Model:
    name: str
    model: object  # an ImageClassifier or a FineTunedClassifier
    clean_y: np.ndarray
    clean_proba: np.ndarray
    clean_images: str  # fingerprint of the clean predictions' images
    sha256: str  # the model file's: what identifies the model its rows belong to


def _models(found: list[tuple[Path, dict]], split: str) -> tuple[list[_Model], list[str]]:
    """The loaded models that have clean predictions of `split`, each under a name of its own."""
    models, notes = [], []
    names = [method_name(info) for _, info in found]
    for (path, info), name in zip(found, names):
        if names.count(name) > 1:
            name = f"{name} ({path.parent.name if path.name == 'model.pt' else path.stem})"
        try:
            p = load_predictions(path, info).get(split)
            if p is None:
                notes.append(f"{name}: left out, it has no {split} predictions")
                continue
            models.append(_Model(name, load(path), p["y"], p["proba"], images_fingerprint(zip(p["path"], p["sha1"])),
                                 info["sha256"]))
        except FeatxError as exc:
            notes.append(f"{name}: left out, {exc}")
    return models, notes


def _row(method: str, corruption: str, severity: int, y, proba, threshold, n_boot: int, seed: int) -> dict:
    """One CSV row: ROC-AUC with its stratified bootstrap 95% interval, and the metrics at the model's threshold."""
    y, proba = np.asarray(y), np.asarray(proba)
    row = {"method": method, "corruption": corruption, "severity": severity, "n": int(len(y))}
    metrics = point_metrics(y, proba, threshold) if len(y) else {}
    ci = bootstrap_auc_ci(y, proba, n_boot=n_boot, seed=seed) if metrics.get("roc_auc") is not None else None
    row.update(roc_auc=metrics.get("roc_auc"), roc_auc_low=ci[0] if ci else None, roc_auc_high=ci[1] if ci else None)
    row.update({k: metrics.get(k) for k in ("accuracy", "sensitivity", "specificity")})
    return row


class _Run:
    """Computes (or finds cached) one model's outputs on one corrupted copy of the split."""

    def __init__(self, data, split: str, images, cache_dir: Path, compute: dict, log):
        from ..features.planning import row_table

        self.data, self.split, self.images, self.cache_dir, self.compute, self.log = \
            data, split, images, cache_dir, compute, log
        self.notes: list[str] = []
        self._sha1 = row_table(images, None).sha1  # what the images are now, for the fine-tunes' kept outputs
        self.fingerprint = images_fingerprint(zip(images.paths, self._sha1))
        self._warned: set[str] = set()

    def outputs(self, m: _Model, corruption: str, severity: int) -> tuple[np.ndarray, np.ndarray]:
        if m.clean_images != self.fingerprint and m.name not in self._warned:
            self._warned.add(m.name)
            self.notes.append(f"{m.name}: its clean row is from predictions saved on other {self.split} images "
                              "than the corrupted rows (the split changed since it was evaluated)")
        if isinstance(m.model, FineTunedClassifier):
            return self._network_outputs(m.model, corruption, severity)
        return self._head_outputs(m.model, corruption, severity)

    def _head_outputs(self, model, corruption: str, severity: int):
        from ..features.extraction import extract

        recipe = model.extraction_recipe()
        store = extract(self.data, **recipe, corruption=f"{corruption}:{severity}", splits=[self.split],
                        cache_dir=self.cache_dir, log=self._quiet, **self.compute)
        made = FeatureRecipe.from_config(store.config)
        differs = made.differences(replace(model.feature_recipe, decode=model.decode_policy.corrupted(
            (corruption, severity))))
        if differs:
            raise FeatxError(f"the corrupted features of {store.path} differ from those {model.path} was trained on "
                             f"({', '.join(differs)}); re-extract with the model's weights")
        X, y = store.arrays(self.split)
        return y, model.head.predict_proba(X)

    def _network_outputs(self, model, corruption: str, severity: int):
        from ..features.computing import run_on_images

        kept = model.path.parent / "robustness" / f"{self.split}-{corruption}-{severity}.npz"
        key = record_hash({"model": model.info["sha256"], "policy": CORRUPTION_RULES, "images": self.fingerprint,
                           "corruption": [corruption, severity]}, 16)
        if kept.is_file():
            with np.load(kept, allow_pickle=False) as found:
                if str(found["key"]) == key:
                    return found["y"], found["proba"]
        logits, reasons, _ = run_on_images(model.network(), model.data_config, len(model.classes_),
                                           self.images.paths, root=self.images.root,
                                           policy=model.decode_policy.corrupted((corruption, severity)), **self.compute)
        ok = np.array([r is None for r in reasons], bool)
        shifted = np.exp(logits[ok] - logits[ok].max(1, keepdims=True))
        y, proba = self.images.labels[ok], shifted / shifted.sum(1, keepdims=True)
        kept.parent.mkdir(exist_ok=True)
        with atomic_path(kept) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, key=np.array(key), y=y, proba=proba)
        return y, proba

    def _quiet(self, line: str) -> None:
        """Extraction's log, less its "nothing to extract" line on every cached cell of a re-run."""
        if "already cached" not in line and not line.startswith("validation split"):
            self.log(line)
