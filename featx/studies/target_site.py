"""A study's target site (`--target`): per backbone, the target's features and the train -> target shift
(measured once, kept under out/target/); per unit, its scores on the target's labelled images (kept beside
the unit, named by the target's fingerprint, so adding a target to a finished study computes only them).

Nothing here trains on a target label: a head adapted to the target learns from its features alone
(heads.adaptation), and every labelled target image only scores.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .._core.atomic import write_text_atomic
from .._core.hashing import record_hash
from ..evaluation.domain import domain_auc
from ..evaluation.sets import EvaluationSet
from ..evaluation.significance import bootstrap_auc_ci, point_metrics
from ..features.target import TargetFeatures, TargetListing
from ..heads.adaptation import SiteFit


class StudySite:
    def __init__(self, listing: TargetListing, out: Path, cache_dir: Path, *, n_boot: int, seed: int):
        self.listing, self.out, self.cache_dir, self.n_boot, self.seed = listing, out, cache_dir, n_boot, seed
        self._features: dict[str, tuple[TargetFeatures, dict]] = {}

    @property
    def name(self) -> str:
        return self.listing.target.name

    @property
    def labelled(self) -> bool:
        return bool((self.listing.ds.labels >= 0).any())

    def features(self, backbone: str, pool, log) -> tuple[TargetFeatures, dict]:
        """The target's features with the pool's recipe, and the shift from the pool's train images to them."""
        if backbone not in self._features:
            found = self.listing.features(pool.store, cache_dir=self.cache_dir, log=log)
            self._features[backbone] = (found, self._shift(backbone, pool, found, log))
        return self._features[backbone]

    def _shift(self, backbone: str, pool, found: TargetFeatures, log) -> dict:
        key = record_hash({"features": pool.store.config["config_hash"], "train": pool.images,
                           "target": found.fingerprint, "seed": self.seed}, 16)
        path = self.out / "target" / f"shift-{key}.json"
        if path.is_file():
            return json.loads(path.read_text())
        groups = [f"train/{g}" for g in pool.groups] + [f"target/{g}" for g in found.groups]
        auc, ci = domain_auc(pool.X, found.X, groups, self.seed, n_boot=self.n_boot)
        shift = {"backbone": backbone, "auc": auc, "ci": list(ci)}
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(shift) + "\n")
        log(f"train -> target {self.name} shift on {backbone} features: domain AUC {auc:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]")
        return shift

    def shifts(self) -> list[dict]:
        return [shift for _, shift in self._features.values()]

    def adapting(self, method, features: TargetFeatures, shift: dict) -> SiteFit | None:
        """The adaptation a unit's head gets (None: a plain head)."""
        return SiteFit(features, shift, method.adapted) if method.adapted else None

    # -- scores at the target ----------------------------------------------------------------------------
    def scores_path(self, unit_key: str) -> Path:
        return self.out / "units" / f"{unit_key}.at-{self.listing.fingerprint[:16]}.json"

    def save_scores(self, unit_key: str, labelled: tuple, proba, threshold) -> dict:
        """A unit's scores on the target's labelled images (`labelled`: their paths, sha1s and labels), at its
        own threshold, with a ROC-AUC interval; kept beside the unit."""
        paths, sha1s, y = labelled
        evaluation = EvaluationSet.of("target", list(paths), list(sha1s))
        y, order, proba = np.asarray(y), evaluation.order(), np.asarray(proba, float)
        metrics = point_metrics(y, proba, threshold)
        ci = bootstrap_auc_ci(y, proba, n_boot=self.n_boot, seed=self.seed) if metrics.get("roc_auc") is not None \
            else None
        scores = {**metrics, "roc_auc_low": ci[0] if ci else None, "roc_auc_high": ci[1] if ci else None,
                  "threshold": threshold, "site": self.name, "eval_images": evaluation.key,
                  "y": y[order].tolist(), "proba": proba[order].tolist()}
        write_text_atomic(self.scores_path(unit_key), json.dumps(scores, default=float) + "\n")
        return scores

    def scores(self, unit_key: str) -> dict | None:
        path = self.scores_path(unit_key)
        return json.loads(path.read_text()) if path.is_file() else None

    @staticmethod
    def labelled_rows(features: TargetFeatures) -> tuple:
        """(paths, sha1s, labels) of the labelled target rows of `features`, in their order."""
        rows = features.labelled
        return [features.paths[i] for i in rows], [features.sha1s[i] for i in rows], features.y[rows]

    def labelled_images(self, classes) -> tuple[list[Path], tuple]:
        """The labelled target images as files (a fine-tune scores images, not features), and their (paths,
        sha1s, labels as indices of `classes`)."""
        ds = self.listing.ds
        rows, y = self.listing.labelled(classes)
        return ([ds.absolute(ds.paths[i]) for i in rows],
                ([ds.paths[i] for i in rows], [self.listing.sha1s[i] for i in rows], y))
