"""What `featx calibrate` adds to a model for one site, as the model's sidecar keeps it under "local": the
site's images it was calibrated on, its probability scaling and its conformal prediction sets. Every reader
(predictors, the card, the demo) goes through `LocalCalibration`, so they apply and describe the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..evaluation.conformal import ConformalSets, set_words
from ..evaluation.scaling import Scaling


@dataclass(frozen=True)
class LocalCalibration:
    site: str  # the site's name, for people
    images: int
    counts: dict  # class -> images
    images_sha256: str  # the calibration images' fingerprint (paths and bytes)
    where: str  # the images a re-chosen threshold was chosen on, in words
    scaling: Scaling | None
    sets: ConformalSets | None
    estimate: dict  # the local estimate (sites.calibration.local_estimate)
    calibrated_from: dict  # {"file", "sha256"} of the model before calibration

    @classmethod
    def of(cls, info: dict) -> LocalCalibration | None:
        record = info.get("local")
        if not record:
            return None
        return cls(record["site"], int(record["images"]), dict(record["counts"]), record["images_sha256"],
                   record["where"], Scaling.from_json(record.get("scaling")), ConformalSets.from_json(record.get("sets")),
                   record.get("estimate") or {}, record["calibrated_from"])

    def to_json(self) -> dict:
        return {"site": self.site, "images": self.images, "counts": self.counts, "images_sha256": self.images_sha256,
                "where": self.where, "scaling": self.scaling.to_json() if self.scaling else None,
                "sets": self.sets.to_json() if self.sets else None, "estimate": self.estimate,
                "calibrated_from": self.calibrated_from}

    def proba(self, proba: np.ndarray) -> np.ndarray:
        """The model's probabilities as this site's scaling rescales them (NaN rows stay NaN)."""
        if self.scaling is None:
            return proba
        out = np.array(proba, dtype=np.float64)
        ok = ~np.isnan(out).any(1)
        if ok.any():
            out[ok] = self.scaling.apply(out[ok])
        return out

    def set_words(self, proba: np.ndarray, classes) -> list[str | None]:
        """Each row's prediction set in words (None for a NaN row or a model without sets)."""
        proba = np.asarray(proba, dtype=np.float64)
        out: list[str | None] = [None] * len(proba)
        ok = np.flatnonzero(~np.isnan(proba).any(1))
        if self.sets is None or not len(ok):
            return out
        for i, members in zip(ok, self.sets.members(proba[ok])):
            out[i] = set_words(members, classes)
        return out

    def estimate_lines(self) -> list[str]:
        """The local estimate in words, as `featx calibrate` prints it and the card shows it."""
        e, site = self.estimate, self.site
        out = []
        if "roc_auc" in e:
            auc = e["roc_auc"]
            out.append(f"ROC-AUC at {site}: {auc['value']:.3f}" + (f" [{auc['ci'][0]:.3f}, {auc['ci'][1]:.3f}]"
                                                                   if auc["ci"] else "") + f" on {e['images']} images")
        for key, words in (("before", "with the threshold it came with"),
                           ("rechosen", "with the threshold re-chosen on the site (each image decided out of fold)")):
            if key in e:
                m = e[key]
                out.append(f"{words}: accuracy {_cell(m['accuracy'])}" +
                           (f", sensitivity {_cell(m['sensitivity'])}, specificity {_cell(m['specificity'])}"
                            if "sensitivity" in m else ""))
        accuracy = e["rechosen"]["accuracy"]
        out.append(f"about {e['labels_for_0.05']} labelled images from {site} would narrow the accuracy interval to "
                   f"+-0.05 (from these {e['images']} it is +-{(accuracy['ci'][1] - accuracy['ci'][0]) / 2:.3f})")
        return out


def _cell(m: dict) -> str:
    return f"{m['value']:.3f} [{m['ci'][0]:.3f}, {m['ci'][1]:.3f}]"
