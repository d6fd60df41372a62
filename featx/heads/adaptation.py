"""Adapting a frozen-feature head to a target site from the site's unlabelled features (`--adapt`).

- standardise: each site's features standardised by its own mean and variance (source by the training
  images', target by the target images'), the simplest correction of an acquisition change.
- coral: skada's CORALAdapter (Sun et al. 2016): source features whitened and re-coloured with the target's
  covariance; target features centred on their own mean.
- ot: skada's LinearOTMappingAdapter: the Gaussian optimal-transport (Monge) map of source features onto the
  target's (Flamary et al. 2019); target features unchanged.
- prior: label shift, p(x | y) unchanged and the class mix changed. Black-box shift estimation (BBSE, Lipton et
  al. 2018): the head's confusion matrix on its held-out predictions and its predicted class shares on the
  target give the target's class prior; the head's classes are then re-weighted by it (a logistic regression's
  intercept moves by the log of the ratio). skada has no label-shift estimator, so this one is featx's.

Each adapted head is an ordinary scikit-learn Pipeline (the target step, then the head trained on mapped
source features), saved, exported and loaded like any head. Its decisions on the target can only be checked
with target labels: without them, featx says it cannot be checked.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from .._core.errors import FeatxError
from .._core.optional import library

ADAPTATIONS = ("none", "standardise", "coral", "ot", "prior")
MAPPINGS = ("standardise", "coral", "ot")  # adaptations that map features (the rest re-weight classes)
WORDS = {"standardise": "target-statistics standardisation", "coral": "CORAL (skada)",
         "ot": "linear optimal-transport mapping (skada)", "prior": "label-shift prior estimation (BBSE)"}


def check_adaptation(name: str, *, target, heads, out_of_core: bool) -> str | None:
    """The adaptation asked for (None for "none"), refused in one line where it cannot run."""
    if name not in ADAPTATIONS:
        raise FeatxError(f"--adapt must be one of {', '.join(ADAPTATIONS)}, not {name!r}")
    if name == "none":
        return None
    if target is None:
        raise FeatxError(f"--adapt {name} adapts to a target site's images: give them with --target DIR|CSV")
    if out_of_core:
        raise FeatxError("--adapt works on features loaded in memory; drop --out-of-core")
    if name == "prior" and any(h != "logreg" for h in heads):
        raise FeatxError("--adapt prior re-weights the classes of a logreg head; fit --head logreg")
    if name in ("coral", "ot"):
        _skada()
    return name


def _skada():
    """skada, imported without its side effect: importing it switches on scikit-learn's metadata routing for the
    whole process, which would change how every later head is fitted (sample weights); featx turns it on only
    around skada's own calls."""
    from sklearn import config_context

    with config_context():  # the configuration as it was, restored when the import is done
        return library("skada", "skada", "site")


@dataclass(frozen=True)
class SiteMap:
    """A mapping adaptation learnt on source training features and the target's features."""

    name: str
    source: object  # X -> X mapped into the target's space (train and validation rows)
    target_step: StandardScaler | None  # what the saved model does to a target image's features first

    def wrap(self, estimator):
        return estimator if self.target_step is None else Pipeline([("site", self.target_step), ("head", estimator)])


def learn_map(name: str, X_source: np.ndarray, X_target: np.ndarray) -> SiteMap:
    X_source, X_target = np.asarray(X_source, np.float64), np.asarray(X_target, np.float64)
    if name == "standardise":
        return SiteMap(name, StandardScaler().fit(X_source).transform, StandardScaler().fit(X_target))
    from sklearn import config_context

    skada = _skada()
    adapter = (skada.CORALAdapter() if name == "coral" else skada.LinearOTMappingAdapter())
    domains = np.r_[np.ones(len(X_source), int), -np.ones(len(X_target), int)]
    with config_context(enable_metadata_routing=True):  # skada's adapters route sample_domain
        adapter.fit(np.vstack([X_source, X_target]), sample_domain=domains)

    def source(X):
        with config_context(enable_metadata_routing=True):
            return adapter.transform(np.asarray(X, np.float64), sample_domain=np.ones(len(X), int), allow_source=True)
    if name == "coral":  # skada centres target features on their mean: the same step, as a plain scaler
        centre = StandardScaler(with_std=False).fit(X_target)
        return SiteMap(name, source, centre)
    return SiteMap(name, source, None)


def estimate_prior(y_held, proba_held, proba_target) -> np.ndarray:
    """BBSE: the target's class prior from the head's confusion matrix on held-out source predictions and its
    predicted class shares on the target images (clipped to be a distribution)."""
    y_held, k = np.asarray(y_held), proba_held.shape[1]
    predicted = np.asarray(proba_held).argmax(1)
    joint = np.zeros((k, k))
    np.add.at(joint, (predicted, y_held), 1)
    joint /= len(y_held)
    shares = np.bincount(np.asarray(proba_target).argmax(1), minlength=k) / len(proba_target)
    weights = np.clip(np.linalg.lstsq(joint, shares, rcond=None)[0], 0, None)
    prior = weights * np.bincount(y_held, minlength=k) / len(y_held)
    if prior.sum() <= 0:
        raise FeatxError("the target's class prior cannot be estimated from these predictions")
    return prior / prior.sum()


def reweighted(estimator, prior: np.ndarray):
    """A balanced logistic regression head (its implicit prior uniform) re-weighted to `prior`: a copy of the
    Pipeline whose intercept moved by log(prior / uniform), so its probabilities are `adjusted_proba`'s."""
    from copy import deepcopy

    head = deepcopy(estimator)
    clf = head.steps[-1][1]
    shift = np.log(np.clip(prior, 1e-6, None) * len(prior))
    clf.intercept_ = clf.intercept_ + (shift[1] - shift[0] if len(shift) == 2 else shift)
    return head


def adjusted_proba(proba: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Held-out probabilities of a balanced head as the re-weighted head gives them."""
    scaled = np.asarray(proba) * np.clip(prior, 1e-6, None)
    return scaled / scaled.sum(1, keepdims=True)


@dataclass(frozen=True)
class Adaptation:
    """What a fitted head's sidecar says of its adaptation."""

    name: str
    target_images: int
    prior: tuple[float, ...] | None = None

    def record(self, classes) -> dict:
        out = {"method": self.name, "words": WORDS[self.name], "unlabelled_target_images": self.target_images}
        if self.prior is not None:
            out["estimated_prior"] = {c: round(float(p), 4) for c, p in zip(classes, self.prior)}
        return out

    def with_prior(self, prior) -> Adaptation:
        return replace(self, prior=tuple(float(p) for p in prior))


@dataclass
class SiteFit:
    """A target site in `featx fit`: its features, the train -> target shift score, and the adaptation asked for
    (None: the head is only scored there, when the target has labels)."""

    features: object  # features.target.TargetFeatures
    shift: dict  # {"auc", "ci"}: the domain classifier's out-of-fold ROC-AUC, train vs target
    adaptation: str | None = None
    site_map: SiteMap | None = None
    adapted: Adaptation | None = None  # what the last `finish` made, for the sidecar

    def learn(self, X_train: np.ndarray) -> SiteMap | None:
        """The mapping adaptation learnt on the training features and every target image (labels unused)."""
        if self.adaptation in MAPPINGS:
            self.site_map = learn_map(self.adaptation, X_train, self.features.X)
        return self.site_map

    def finish(self, sel):
        """The selected head made the adapted model, with its held-out probabilities as that model gives them
        (the threshold is chosen on them), and what its sidecar says of the adaptation."""
        if self.adaptation is None:
            return sel, None
        self.adapted = Adaptation(self.adaptation, len(self.features.y))
        if self.site_map is not None:
            return replace(sel, estimator=self.site_map.wrap(sel.estimator)), self.adapted
        prior = estimate_prior(sel.selection_y, sel.selection_proba, sel.estimator.predict_proba(self.features.X))
        self.adapted = self.adapted.with_prior(prior)
        return replace(sel, estimator=reweighted(sel.estimator, prior),
                       selection_proba=adjusted_proba(sel.selection_proba, prior)), self.adapted

    def record(self, classes) -> dict:
        """The sidecar's "target": the site's images, the shift score, and the adaptation the last `finish` made."""
        out = {**self.features.record(), "shift": self.shift}
        if self.adapted is not None:
            out["adaptation"] = self.adapted.record(classes)
        return out
