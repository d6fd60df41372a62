"""Out-of-core heads: `featx fit --out-of-core` on feature caches larger than memory.

Features are read from the HDF5 cache in blocks of rows and are never held whole; only labels,
groups and held-out probabilities (a few bytes per image) live in memory.

- logreg: a StandardScaler fitted by `partial_fit` in a first pass, then either
  - lbfgs (default): scikit-learn's own LogisticRegression problem, solved by scipy's L-BFGS
    with the loss and gradient summed block by block: the in-memory model, one pass per
    iteration;
  - sgd: SGDClassifier(loss="log_loss") by `partial_fit`, alpha = 1 / (C n). Every candidate
    and fold learns from the same passes (SGD_EPOCHS in all): fewest reads, but it stops near
    the optimum, not at it (benchmarks/out_of_core.py measures how near).
- lightgbm reads the cache through `lightgbm.Sequence`; only LightGBM's binned copy (one byte
  per value at max_bin 63, a quarter of float32) is in memory.

Selection follows featx fit: ROC-AUC on the validation split, else stratified group k-fold on
train and a refit on all of train; the threshold comes from the same held-out probabilities,
and test is only predicted.
"""

from __future__ import annotations

import time
import warnings

import lightgbm
import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import SGDClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .._core.errors import FeatxError
from .._core.options import check_choice
from ..data.datasets import SPLITS
from ..features.store import FeatureStore, read_rows
from ..evaluation.folds import group_folds
from .selection import Selection, auc_score, best_index, early_stopping_rows
from .specs import EARLY_STOPPING_ROUNDS, HEADS

STREAM_HEADS = ("logreg", "lightgbm")
BLOCK_ROWS = 4096
SGD_EPOCHS = 20
BIN_SAMPLE_BYTES = 512 * 2**20  # LightGBM holds its bin-construction sample as float64 rows, twice


class CachedSplits:
    """Each split's finished rows of a cache: indices, labels and groups in memory, features on disk."""

    def __init__(self, store: FeatureStore, block_rows: int = BLOCK_ROWS):
        self.store, self.block_rows = store, block_rows
        self.rows = {s: store.rows(s) for s in SPLITS}
        self.rows = {s: r for s, r in self.rows.items() if len(r)}
        self.y = {s: store.labels(s) for s in self.rows}
        self.groups = np.asarray(store.groups("train")) if "train" in self.rows else None

    def blocks(self, split: str, rng: np.random.Generator | None = None):
        """(positions within the split, features) block by block."""
        yield from self.store.iter_features(self.rows[split], self.block_rows, rng)

    def check_finite(self) -> None:
        for split in self.rows:
            bad = sum(int((~np.isfinite(X)).any(1).sum()) for _, X in self.blocks(split))
            if bad:
                raise FeatxError(f"{self.store.path}: {bad} {split} feature rows contain NaN or inf; re-extract them "
                                 "(delete the cache file) before fitting")

    def predict_proba(self, estimator, split: str) -> np.ndarray:
        return self.predict_rows([estimator], self.rows[split])[0]

    def predict_rows(self, estimators: list, rows: np.ndarray) -> list[np.ndarray]:
        """Each estimator's probabilities for ascending cache rows, from one block-by-block read."""
        parts = [[] for _ in estimators]
        for _, X in self.store.iter_features(rows, self.block_rows):
            for part, estimator in zip(parts, estimators):
                part.append(estimator.predict_proba(X))
        return [np.concatenate(part) for part in parts]


def select_head(name: str, data: CachedSplits, *, seed: int = 0, folds: int = 5, solver: str = "lbfgs",
                on_validation: bool = True) -> Selection:
    """featx fit's selection, reading features block by block. solver (logreg): lbfgs or sgd.

    Candidates are scored on the validation split if there is one (and `on_validation`), else by
    stratified group k-fold on train."""
    if name not in STREAM_HEADS:
        raise FeatxError(f"--out-of-core trains {' and '.join(STREAM_HEADS)}; the {name} head needs the features "
                         "in memory")
    started = time.perf_counter()
    check_choice("solver", solver)
    on_validation = on_validation and "val" in data.rows
    if name == "logreg":
        selection = _select_logreg(data, seed, folds, solver, on_validation)
    else:
        selection = _select_lightgbm(data, seed, folds, on_validation)
    selection.train_seconds = time.perf_counter() - started
    return selection


# --- logistic regression ---------------------------------------------------------------------------

def _select_logreg(data: CachedSplits, seed: int, folds: int, solver: str, on_validation: bool) -> Selection:
    y, classes = data.y["train"], np.arange(len(data.store.classes))
    grid = HEADS["logreg"].grid["C"]
    if on_validation:
        masks = [None]
        method = "validation split"
    else:
        splits = group_folds(y, data.groups, folds, seed)
        masks = [np.isin(np.arange(len(y)), tr) for tr, _ in splits]
        method = f"{len(splits)}-fold stratified group CV on train"
    scalers = _scalers(data, [*masks, None] if masks != [None] else masks)  # each fold's own, as in a Pipeline
    scaler = scalers[-1]
    train = _train_lbfgs if solver == "lbfgs" else _train_sgd
    models = train(data, {(c, f): (C, mask, scalers[f]) for c, C in enumerate(grid) for f, mask in enumerate(masks)},
                   y, classes, seed)

    if masks == [None]:
        y_val = data.y["val"]
        held = {c: np.zeros((len(y_val), len(classes))) for c in range(len(grid))}
        for pos, X in data.blocks("val"):
            Xs = scaler.transform(X)
            for c in range(len(grid)):
                held[c][pos] = models[(c, 0)].predict_proba(Xs)
        scores = [auc_score(y_val, held[c]) for c in range(len(grid))]
        best = best_index(scores)
        final, held_proba, held_y = models[(best, 0)], held[best], y_val
    else:
        held = {c: np.zeros((len(y), len(classes))) for c in range(len(grid))}
        for pos, X in data.blocks("train"):
            for f, mask in enumerate(masks):
                out = ~mask[pos]
                if out.any():
                    Xs = scalers[f].transform(X[out])
                    for c in range(len(grid)):
                        held[c][pos[out]] = models[(c, f)].predict_proba(Xs)
        fold_of = np.zeros(len(y), int)
        for f, (_, va) in enumerate(splits):
            fold_of[va] = f
        scores = [float(np.nanmean([auc_score(y[fold_of == f], held[c][fold_of == f]) for f in range(len(splits))]))
                  for c in range(len(grid))]
        best = best_index(scores)
        final = train(data, {0: (grid[best], None, scaler)}, y, classes, seed)[0]
        held_proba, held_y = held[best], y
    estimator = Pipeline([("scale", scaler), ("clf", final)])
    return Selection(estimator, {"C": grid[best], "solver": solver},
                     [({"C": C}, s) for C, s in zip(grid, scores)], method + ", out of core", held_proba, held_y)


def _scalers(data: CachedSplits, masks: list) -> list[StandardScaler]:
    """A StandardScaler per row mask (None: all of train), fitted in one pass."""
    scalers = [StandardScaler() for _ in masks]
    for pos, X in data.blocks("train"):
        for scaler, mask in zip(scalers, masks):
            part = X if mask is None else X[mask[pos]]
            if len(part):
                scaler.partial_fit(part)
    return scalers


def _train_lbfgs(data: CachedSplits, jobs: dict, y, classes, seed: int) -> dict:
    """LogisticRegression(C, class_weight="balanced") for each job (C, row mask, scaler), solved as
    scikit-learn's lbfgs solver does (same objective, start, tolerance), with every loss and
    gradient summed block by block over the cache: one pass per L-BFGS iteration."""
    from scipy.optimize import minimize
    from scipy.special import expit, logsumexp
    from sklearn.linear_model import LogisticRegression

    weight = compute_sample_weight("balanced", y)
    k, d = len(classes), data.store.num_features
    cols = 1 if k == 2 else k
    models = {}
    for key, (C, mask, scaler) in jobs.items():
        sw = float(weight.sum() if mask is None else weight[mask].sum())

        def loss_and_grad(theta):
            W = theta.reshape(d + 1, cols)
            loss, grad = 0.0, np.zeros_like(W)
            for pos, X in data.blocks("train"):
                if mask is not None:
                    keep = mask[pos]
                    pos, X = pos[keep], X[keep]
                if not len(pos):
                    continue
                Xs, w, yy = scaler.transform(X).astype(np.float64), weight[pos], y[pos]
                Z = Xs @ W[:-1] + W[-1]
                if cols == 1:
                    sign = 2.0 * yy - 1
                    z = Z[:, 0]
                    loss += float(w @ np.logaddexp(0, -sign * z))
                    r = (w * -sign * expit(-sign * z))[:, None]
                else:
                    lse = logsumexp(Z, axis=1)
                    loss += float(w @ (lse - Z[np.arange(len(yy)), yy]))
                    P = np.exp(Z - lse[:, None])
                    P[np.arange(len(yy)), yy] -= 1
                    r = w[:, None] * P
                grad[:-1] += Xs.T @ r
                grad[-1] += r.sum(0)
            loss = loss / sw + float((W[:-1] ** 2).sum()) / (2 * C * sw)
            grad /= sw
            grad[:-1] += W[:-1] / (C * sw)
            return loss, grad.ravel()

        result = minimize(loss_and_grad, np.zeros((d + 1) * cols), jac=True, method="L-BFGS-B",
                          options={"maxiter": 2000, "maxls": 50, "gtol": 1e-3, "ftol": 64 * np.finfo(float).eps})
        W = result.x.reshape(d + 1, cols)
        model = LogisticRegression(C=C, class_weight="balanced", max_iter=2000, tol=1e-3)
        model.coef_, model.intercept_ = np.ascontiguousarray(W[:-1].T), W[-1].copy()
        model.classes_, model.n_features_in_, model.n_iter_ = classes, d, np.array([result.nit])
        models[key] = model
    return models


def _train_sgd(data: CachedSplits, jobs: dict, y, classes, seed: int) -> dict:
    """Averaged SGD on the same objective (alpha = 1 / (C n)), every job learning from the same
    SGD_EPOCHS passes: far fewer reads of the cache than lbfgs, but only near its optimum."""
    n_fit = {key: len(y) if mask is None else int(mask.sum()) for key, (_, mask, _) in jobs.items()}
    models = {key: SGDClassifier(loss="log_loss", alpha=1.0 / (C * n_fit[key]), average=True, random_state=seed)
              for key, (C, _, _) in jobs.items()}
    _sgd_epochs(data, {key: (models[key], mask, scaler) for key, (_, mask, scaler) in jobs.items()}, y, classes,
                seed)
    return models


def _sgd_epochs(data: CachedSplits, models: dict, y, classes, seed: int) -> None:
    """SGD_EPOCHS passes over train, blocks in random order and rows shuffled within each block;
    each (model, mask, scaler) learns from the rows of its mask (None: all). Classes are
    balanced by sample weights (partial_fit has no class_weight="balanced")."""
    weight = compute_sample_weight("balanced", y)
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for _ in range(SGD_EPOCHS):
            for pos, X in data.blocks("train", rng):
                order = rng.permutation(len(pos))
                pos, X = pos[order], X[order]
                scaled = {}  # one transform per (scaler, mask), shared by that fold's candidates
                for model, mask, scaler in models.values():
                    keep = np.ones(len(pos), bool) if mask is None else mask[pos]
                    if not keep.any():
                        continue
                    if id(scaler) not in scaled:
                        scaled[id(scaler)] = scaler.transform(X[keep])
                    model.partial_fit(scaled[id(scaler)], y[pos][keep], classes=classes,
                                      sample_weight=weight[pos][keep])


# --- LightGBM through lightgbm.Sequence -----------------------------------------------------------

class CacheSequence(lightgbm.Sequence):
    """Rows of a feature cache as a `lightgbm.Sequence`: LightGBM asks for rows and slices of rows."""

    def __init__(self, features, rows: np.ndarray, batch_size: int):
        self.features, self.rows, self.batch_size = features, rows, batch_size

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return read_rows(self.features, self.rows[index])
        return read_rows(self.features, self.rows[[index]])[0].astype(np.float64)  # LightGBM samples in float64


def _lightgbm_params(num_leaves: int, learning_rate: float, n_classes: int, seed: int) -> dict:
    """featx fit's LGBMClassifier settings, as lightgbm.train parameters."""
    params = {"num_leaves": num_leaves, "learning_rate": learning_rate, "bagging_fraction": 0.8, "bagging_freq": 1,
              "feature_fraction": 0.2, "max_bin": 63, "seed": seed, "verbose": -1}
    if n_classes > 2:
        return {**params, "objective": "multiclass", "num_class": n_classes}
    return {**params, "objective": "binary"}


class BoosterClassifier(ClassifierMixin, BaseEstimator):
    """A LightGBM booster with scikit-learn's classifier API (fit on arrays, predict_proba on rows).

    `fit` takes arrays; featx --out-of-core trains the same model from a cache with `train`.
    """

    def __init__(self, num_leaves: int = 31, learning_rate: float = 0.1, n_estimators: int = 1000, seed: int = 0):
        self.num_leaves, self.learning_rate, self.n_estimators, self.seed = num_leaves, learning_rate, n_estimators, seed

    def fit(self, X, y, X_val=None, y_val=None):
        """Learn from arrays; `classes_` are y's labels, whatever they are (predict_proba's columns follow them)."""
        X, y = validate_data(self, X, y, dtype=np.float32, ensure_all_finite="allow-nan")
        check_classification_targets(y)
        classes, codes = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(f"BoosterClassifier needs samples of at least 2 classes in y; got 1 class ({classes[0]})")
        train = lightgbm.Dataset(X, label=codes, weight=compute_sample_weight("balanced", codes),
                                 params={"max_bin": 63})
        val = None
        if X_val is not None:
            val = lightgbm.Dataset(np.asarray(X_val, np.float32), label=np.searchsorted(classes, y_val), reference=train)
        return self.train(train, len(classes), val, classes=classes)

    def train(self, train_set, n_classes: int, val_set=None, classes=None):
        """Learn from a LightGBM Dataset labelled 0..n_classes-1 (featx --out-of-core streams one from a
        cache); `classes`: the labels those codes stand for (default: the codes)."""
        callbacks = [lightgbm.early_stopping(EARLY_STOPPING_ROUNDS, verbose=False)] if val_set is not None else []
        self.booster_ = lightgbm.train(_lightgbm_params(self.num_leaves, self.learning_rate, n_classes, self.seed),
                                       train_set, num_boost_round=self.n_estimators,
                                       valid_sets=[val_set] if val_set is not None else None, callbacks=callbacks)
        self.best_iteration_ = self.booster_.best_iteration or self.n_estimators
        self.classes_ = np.arange(n_classes) if classes is None else np.asarray(classes)
        self.n_features_in_ = self.booster_.num_feature()
        return self

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self, "booster_")
        X = validate_data(self, X, dtype=np.float32, ensure_all_finite="allow-nan", reset=False)
        p = self.booster_.predict(X, num_iteration=self.best_iteration_)
        return np.column_stack([1 - p, p]) if p.ndim == 1 else p

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self, "booster_")
        return self.classes_[self.predict_proba(X).argmax(1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True  # LightGBM learns where missing values go
        return tags


def _select_lightgbm(data: CachedSplits, seed: int, folds: int, on_validation: bool) -> Selection:
    import h5py
    from sklearn.model_selection import ParameterGrid

    y, k = data.y["train"], len(data.store.classes)
    candidates = list(ParameterGrid(HEADS["lightgbm"].grid))
    with h5py.File(data.store.path, "r", locking=False) as f, warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Overriding the parameters from Reference Dataset")
        sets = _LightGBMSets(data, f["features"])

        def model(params, n_estimators=1000):
            return BoosterClassifier(params["num_leaves"], params["learning_rate"], n_estimators, seed)

        def early_stopped(positions):  # every candidate trained inside `positions` of train, stopped inside too
            fit_on, stop_on = sets.early_stopping(positions, seed)
            return [model(p).train(fit_on, k, stop_on) for p in candidates]

        all_train = np.arange(len(y))
        if on_validation:
            fitted = early_stopped(all_train)
            scores = [auc_score(data.y["val"], h) for h in data.predict_rows(fitted, data.rows["val"])]
            trees = [[m.best_iteration_] for m in fitted]
            method = "validation split"
        else:
            splits = group_folds(y, data.groups, folds, seed)
            oofs = [np.zeros((len(y), k)) for _ in candidates]
            trees = [[] for _ in candidates]
            for tr, va in splits:
                fold_models = early_stopped(tr)
                for c, (m, proba) in enumerate(zip(fold_models, data.predict_rows(fold_models, data.rows["train"][va]))):
                    oofs[c][va] = proba
                    trees[c].append(m.best_iteration_)
            scores = [float(np.nanmean([auc_score(y[va], oof[va]) for _, va in splits])) for oof in oofs]
            method = f"{len(splits)}-fold stratified group CV on train"
        best = best_index(scores)
        final = model(candidates[best], int(np.median(trees[best]))).train(sets.training(all_train), k)
    if on_validation:
        held_proba, held_y = data.predict_proba(final, "val"), data.y["val"]
    else:
        held_proba, held_y = oofs[best], y
    params = {**candidates[best], "n_estimators": final.best_iteration_}
    return Selection(final, params, list(zip(candidates, scores)), method + ", out of core", held_proba, held_y)


class _LightGBMSets:
    """lightgbm Datasets over rows of train, read from the cache through CacheSequence."""

    def __init__(self, data: CachedSplits, features):
        self.data, self.features = data, features
        # Bin edges come from a sample of rows (LightGBM's default: 200,000, all rows of smaller sets, as
        # in memory); capped so that the sample, not the cache, bounds memory.
        self.sample = int(min(200_000, max(10_000, BIN_SAMPLE_BYTES // (16 * data.store.num_features))))

    def training(self, positions: np.ndarray):
        """Training rows: classes balanced by weights, as LGBMClassifier does."""
        labels = self.data.y["train"][positions]
        return lightgbm.Dataset([self._rows(positions)], label=labels, weight=compute_sample_weight("balanced", labels),
                                params={"max_bin": 63, "bin_construct_sample_cnt": self.sample})

    def early_stopping(self, positions: np.ndarray, seed: int):
        """(train set, stopping set): a patient-grouped fifth of `positions` stops training, never the
        rows that score it; (all of `positions`, None) when too few groups for that."""
        inner = early_stopping_rows(self.data.y["train"][positions], self.data.groups[positions], seed)
        if inner is None:
            return self.training(positions), None
        fit_on, stop_on = positions[inner[0]], positions[inner[1]]
        train = self.training(fit_on)
        held_out = lightgbm.Dataset([self._rows(stop_on)], label=self.data.y["train"][stop_on],
                                    reference=train).construct()
        # LightGBM 4.x gives a Sequence dataset made by reference to a weighted one all-zero weights
        # (so early stopping stops at tree 1); stopping rows are unweighted, as in featx fit.
        held_out.set_field("weight", np.ones(len(stop_on)))
        return train, held_out

    def _rows(self, positions: np.ndarray) -> CacheSequence:
        return CacheSequence(self.features, self.data.rows["train"][positions], self.data.block_rows)
