"""Site-transfer curves (`featx study --target SITE --target-sizes 10,20,40`): what k labelled images of the site
buy, for each head trained on the whole pool.

For each repeat, the site's patients are put in a seeded random order and taken while they add images to a class
that has fewer than k/2: whole patients, nested (a larger k adds patients to a smaller one's), every label counted. Each option is scored on the site's other labelled images, the same ones for every option of a draw:
- as is: the source model and its threshold (no site label used);
- re-thresholded: the source model with a threshold chosen on the k by the study's rule (youden when the study's
  threshold is a fixed number);
- source + k: the head re-fitted, with the source's hyperparameters, on the pool and the k, the k weighted to
  half the total weight, its threshold chosen on its predictions of the k;
- k alone: the head chosen and fitted on the k alone (patient-grouped CV inside them), where they allow it.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.base import clone

from .._core.atomic import write_text_atomic
from .._core.errors import FeatxError
from .._core.hashing import record_hash
from ..evaluation.significance import point_metrics
from ..evaluation.thresholds import choose_threshold
from ..heads.selection import select_head

OPTIONS = ("as is", "re-thresholded", "source + k", "k alone")


@dataclass(frozen=True)
class TransferSetting:
    """What a transfer curve is computed from: the head, its threshold rule, the sizes and repeats."""

    head: str
    rule: str
    sizes: tuple[int, ...]
    repeats: int
    seed: int


def nested_draws(y, groups, sizes, repeats: int, seed: int) -> list[dict[int, np.ndarray]]:
    """Per repeat, {k: rows}: patients taken in a seeded order while they add images to a class that has fewer
    than k/2; each larger k goes on from the smaller one's patients, so the draws are nested."""
    y, groups = np.asarray(y), np.asarray(groups).astype(str)
    patients = np.unique(groups)
    draws = []
    for repeat in range(repeats):
        order = np.random.default_rng([seed, repeat]).permutation(patients)
        taken, rows, counts, k_rows = set(), [], np.zeros(y.max() + 1, int), {}
        for k in sorted(sizes):
            for patient in order:
                if (counts >= k / 2).all():
                    break
                found = np.flatnonzero(groups == patient)
                if patient not in taken and (counts[np.unique(y[found])] < k / 2).any():
                    taken.add(patient)
                    rows.extend(found)
                    counts += np.bincount(y[found], minlength=len(counts))
            if (counts < k / 2).any():
                raise FeatxError(f"--target-sizes {k}: the target's labelled images hold fewer than {k // 2} of a class")
            k_rows[k] = np.sort(np.array(rows, int))
        draws.append(k_rows)
    return draws


def transfer_records(sel, cut, X_pool, y_pool, X_site, y_site, groups_site, setting: TransferSetting) -> list[dict]:
    """One record per (k, repeat, option): its ROC-AUC and balanced accuracy on the site's other images."""
    source_proba = sel.estimator.predict_proba(X_site)
    records = []
    for repeat, draws in enumerate(nested_draws(y_site, groups_site, setting.sizes, setting.repeats, setting.seed)):
        for k, rows in draws.items():
            rest = np.setdiff1d(np.arange(len(y_site)), rows)
            found = _options(sel, cut, source_proba, (X_pool, y_pool), (X_site, y_site, groups_site), rows, rest,
                             setting)
            for option, (proba, threshold) in found.items():
                metrics = point_metrics(y_site[rest], proba, threshold) if proba is not None else {}
                records.append({"k": k, "site_labels": 0 if option == "as is" else int(len(rows)), "repeat": repeat,
                                "option": option, "roc_auc": metrics.get("roc_auc"),
                                "balanced_accuracy": metrics.get("balanced_accuracy"), "images_scored": int(len(rest))})
    return records


def _options(sel, cut, source_proba, pool, site, rows, rest, setting) -> dict:
    """option -> (probabilities of the rest, threshold), or (None, None) where the k cannot train it."""
    (X_pool, y_pool), (X_site, y_site, groups_site) = pool, site
    pick = (lambda y, p: choose_threshold(y, p[:, 1], setting.rule)) if source_proba.shape[1] == 2 else \
        (lambda y, p: None)
    out = {"as is": (source_proba[rest], cut),
           "re-thresholded": (source_proba[rest], pick(y_site[rows], source_proba[rows]))}
    joint = clone(sel.estimator)
    weights = np.r_[np.ones(len(y_pool)), np.full(len(rows), len(y_pool) / len(rows))]
    try:
        joint.fit(np.vstack([X_pool, X_site[rows]]), np.r_[y_pool, y_site[rows]], clf__sample_weight=weights)
        out["source + k"] = (joint.predict_proba(X_site[rest]), pick(y_site[rows], joint.predict_proba(X_site[rows])))
    except (TypeError, ValueError):  # a head without sample weights (knn)
        out["source + k"] = (None, None)
    try:
        with warnings.catch_warnings():  # folds of a few patients may hold one class: numpy says so, the fit copes
            warnings.simplefilter("ignore", RuntimeWarning)
            alone = select_head(setting.head, X_site[rows], y_site[rows], np.asarray(groups_site)[rows],
                                seed=setting.seed)
        out["k alone"] = (alone.estimator.predict_proba(X_site[rest]), pick(alone.selection_y, alone.selection_proba))
    except (FeatxError, ValueError):
        out["k alone"] = (None, None)
    return out


def cached_transfer(out: Path, key: dict, compute) -> list[dict]:
    """The records of one backbone and head, computed once and kept under out/target/."""
    path = out / "target" / f"transfer-{record_hash(key, 16)}.json"
    if path.is_file():
        return json.loads(path.read_text())
    records = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(records, default=float) + "\n")
    return records


def transfer_lines(records: list[dict]) -> list[str]:
    """Per method, per k: each option's mean ROC-AUC (± sd over the draws) and balanced accuracy."""
    if not records:
        return []
    site = records[0]["site"]
    lines = [f"Site transfer to {site} (ROC-AUC ± sd over draws / balanced accuracy, on the site's labelled images "
             "not drawn; the k are whole patients, nested, every label counted):"]
    for method in dict.fromkeys(r["method"] for r in records):
        lines.append(f"  {method}:")
        mine = [r for r in records if r["method"] == method]
        for k in sorted({r["k"] for r in mine}):
            here = [r for r in mine if r["k"] == k]
            labels = max(r["site_labels"] for r in here)
            cells = []
            for option in OPTIONS:
                rows = [r for r in here if r["option"] == option and r["roc_auc"] is not None]
                cells.append(f"{option} " + (f"{np.mean([r['roc_auc'] for r in rows]):.3f} ± "
                                             f"{np.std([r['roc_auc'] for r in rows]):.3f} / "
                                             f"{np.mean([r['balanced_accuracy'] for r in rows]):.3f}" if rows else "-"))
            lines.append(f"    k={k} ({labels} labels at most): " + "; ".join(cells))
    return lines
