"""Which images to label next: selection strategies on a backbone's frozen features (featx suggest, and
each strategy's curve in featx study).

Cold start, no label needed: TypiClust (the most typical image of each k-means cluster that holds no
labelled image; Hacohen et al. 2022), ProbCover (balls of radius delta that cover the most unlabelled
images; Yehuda et al. 2022) and k-center coreset (the image farthest from every labelled one), all three
from scikit-activeml, whose implementations follow the papers and take about a second on 5,000 images;
and random, the baseline. With labels, a model's uncertainty: margin (smallest gap between the two most
probable classes), entropy (scikit-activeml's `uncertainty_scores`), and BADGE (k-means++ seeding on the
gradient embeddings of a linear head, (p - onehot(argmax p)) x features). BADGE is written here:
scikit-activeml's needs a classifier that returns its own embedding, which a scikit-learn head does not.

Geometry is measured on L2-normalised features (cosine), as these methods use self-supervised embeddings.
A strategy never reads a label it is not given: cold-start strategies are told only which images are
labelled, model strategies get the probabilities of a head trained on the labelled images alone.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from .._core.errors import FeatxError
from .._core.optional import library as optional_library

COLD_START = ("typiclust", "probcover", "coreset", "random")
WITH_MODEL = ("margin", "entropy", "badge")
STRATEGIES = COLD_START + WITH_MODEL
SEED_STRATEGY = "typiclust"  # chooses the first labels of a strategy that needs a model


@dataclass(frozen=True)
class Picks:
    """Rows chosen (indices into the features given), in the order to label them, and why each."""

    rows: np.ndarray
    why: list[str]


def check_strategy(name: str, *, has_labels: bool = True) -> str:
    """`name` if it is a strategy, and one that can run without labels when there are none; else one line."""
    if name not in STRATEGIES:
        raise FeatxError(f"--strategy must be one of {', '.join(STRATEGIES)}, not {name!r}")
    if name in WITH_MODEL and not has_labels:
        raise FeatxError(f"--strategy {name} needs a model trained on labels, and no image has a label yet: start "
                         f"with a cold-start strategy ({', '.join(COLD_START[:3])}), label those, then use {name}")
    return name


def needs_model(name: str) -> bool:
    return name in WITH_MODEL


def choose(name: str, X: np.ndarray, labelled, k: int, *, candidates=None, proba=None, classes=None,
           seed: int = 0) -> Picks:
    """`k` rows of `X` to label next by strategy `name`, among `candidates` (default: every row not in
    `labelled`). `proba`: a model's probabilities for every row of X (model strategies only)."""
    X = _normalised(X)
    labelled = np.asarray(labelled, int)
    if candidates is None:
        candidates = np.setdiff1d(np.arange(len(X)), labelled)
    candidates = np.asarray(candidates, int)
    if k > len(candidates):
        raise FeatxError(f"asked for {k} images, and only {len(candidates)} are waiting for a label")
    if k <= 0:
        return Picks(np.empty(0, int), [])
    if needs_model(name):
        if proba is None:
            raise FeatxError(f"strategy {name} needs a model's probabilities for the images")
        return _uncertain(name, X, np.asarray(proba, float), candidates, k, classes, seed)
    if name == "random":
        rows = np.random.default_rng([seed, len(labelled), k]).permutation(candidates)[:k]
        return Picks(rows, [f"drawn at random (seed {seed})"] * k)
    return _geometric(name, X, labelled, candidates, k, seed)


def library(module: str, package: str):
    """An optional library of the `labelling` extra, or one line saying how to install it."""
    return optional_library(module, package, "labelling")


def _normalised(X) -> np.ndarray:
    X = np.asarray(X, np.float32)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


_WHY = {"typiclust": "the most typical image (typicality {:.2f}) of a k-means cluster no labelled image is in",
        "probcover": "its ball covers {:.0f} images no labelled image covers yet",
        "coreset": "the farthest from every labelled or chosen image (cosine distance {:.3f})"}


def _geometric(name: str, X: np.ndarray, labelled: np.ndarray, candidates: np.ndarray, k: int, seed: int) -> Picks:
    """TypiClust, ProbCover or coreset through scikit-activeml: label-blind, so every labelled image gets
    the same stand-in label; only which images are labelled reaches the strategy."""
    pool = library("skactiveml.pool", "scikit-activeml")
    CoreSet, ProbCover, TypiClust = pool.CoreSet, pool.ProbCover, pool.TypiClust

    y = np.full(len(X), np.nan)
    y[labelled] = 0.0
    strategy = {"typiclust": lambda: TypiClust(random_state=seed, cluster_algo_dict={"n_init": 3}),
                "probcover": lambda: ProbCover(random_state=seed, cluster_algo_dict={"n_init": 3}),
                "coreset": lambda: CoreSet(random_state=seed)}[name]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # k-means convergence notes on a few clusters
        rows, utilities = strategy.query(X, y, candidates=candidates, batch_size=k, return_utilities=True)
    rows = np.asarray(rows, int)
    return Picks(rows, [_WHY[name].format(float(utilities[j, r])) for j, r in enumerate(rows)])


def _uncertain(name: str, X: np.ndarray, proba: np.ndarray, candidates: np.ndarray, k: int, classes,
               seed: int) -> Picks:
    """Margin or entropy (the k most uncertain), or BADGE (k-means++ on gradient embeddings)."""
    p = proba[candidates]
    classes = list(classes) if classes is not None else [str(c) for c in range(p.shape[1])]
    shown = [", ".join(f"p({c})={v:.2f}" for c, v in zip(classes, row)) for row in p]
    if name == "badge":
        from sklearn.cluster import kmeans_plusplus

        onehot = np.eye(p.shape[1])[p.argmax(1)]
        embedding = ((p - onehot)[:, :, None] * X[candidates][:, None, :]).reshape(len(p), -1)
        _, picked = kmeans_plusplus(embedding, n_clusters=k, random_state=seed)
        norms = np.linalg.norm(embedding[picked], axis=1)
        return Picks(candidates[picked], [f"uncertain and unlike the others chosen ({s}; gradient length "
                                          f"{g:.2f})" for s, g in zip(np.array(shown)[picked], norms)])
    uncertainty_scores = library("skactiveml.pool", "scikit-activeml").uncertainty_scores

    method = {"margin": "margin_sampling", "entropy": "entropy"}[name]
    utility = uncertainty_scores(p, method=method)
    order = np.lexsort((candidates, -utility))[:k]  # most uncertain first; ties by row
    word = {"margin": "smallest margin between the two most probable classes", "entropy": "highest entropy"}[name]
    return Picks(candidates[order], [f"{word}: {shown[j]}" for j in order])


def nested_selection(name: str, X: np.ndarray, y: np.ndarray, groups, sizes, *, fit_proba, seed: int = 0,
                     min_groups: int = 2) -> dict[int, np.ndarray]:
    """The rows a strategy has labelled at each size (ascending): nested, as a user labelling round after
    round. A model strategy starts with SEED_STRATEGY for the first size, then each round's model is trained
    on the labels so far (`fit_proba(rows) -> probabilities of every row`). Where the images chosen hold
    fewer than `min_groups` patients of a class, the strategy goes on choosing, one image at a time, until
    they do: those labels are counted too. `y` is read only for images already chosen."""
    groups = np.asarray(groups).astype(str)
    chosen, out = np.empty(0, int), {}
    for n in sizes:
        strategy = SEED_STRATEGY if needs_model(name) and not len(chosen) else name
        proba = fit_proba(chosen) if needs_model(strategy) else None
        chosen = np.concatenate([chosen, choose(strategy, X, chosen, max(n - len(chosen), 0), proba=proba,
                                                seed=seed).rows])
        while _lacking(y[chosen], groups[chosen], y, min_groups) and len(chosen) < len(X):
            proba = fit_proba(chosen) if needs_model(strategy) and _fittable(y[chosen], groups[chosen]) else None
            step = SEED_STRATEGY if needs_model(strategy) and proba is None else strategy
            chosen = np.concatenate([chosen, choose(step, X, chosen, 1, proba=proba, seed=seed).rows])
        out[n] = chosen.copy()
    return out


def _lacking(y_chosen, groups_chosen, y, min_groups: int) -> bool:
    """Whether a class of the pool has fewer than `min_groups` patients among the chosen images."""
    return any(len(set(groups_chosen[y_chosen == c].tolist())) < min_groups for c in np.unique(y))


def _fittable(y_chosen, groups_chosen) -> bool:
    """Whether a head can be chosen by patient-grouped CV on these images (two patients of each of two classes)."""
    classes = np.unique(y_chosen)
    return len(classes) >= 2 and all(len(set(groups_chosen[y_chosen == c].tolist())) >= 2 for c in classes)
