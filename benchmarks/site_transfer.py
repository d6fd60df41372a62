"""Bringing a frozen-feature model to a new site: adaptation without labels, calibration with k labels, and the
site-transfer curves (issue #39), on cached features.

    python benchmarks/site_transfer.py SOURCE.h5 --target DIR [--target-group-pattern RE] [--cache DIR]
    python benchmarks/site_transfer.py SOURCE.h5 --planted acquisition|prior [--cache DIR]

SOURCE.h5 is a featx cache of the training data (its train split trains the source model: a balanced logistic
regression chosen by patient-grouped CV on train, threshold by Youden's J on its out-of-fold predictions, as
featx fit does without a validation split). The target is a folder of labelled images of another site (its
features are extracted with SOURCE.h5's exact recipe, once), or a site planted from the source's own val images,
which the source model never sees: "acquisition" (contrast x0.7, gamma 1.4, blur, noise, JPEG quality 40) or
"prior" (the same change, with pneumonia thinned to 30% of the images).

It prints, with 95% intervals or the spread over draws:
1. the source model at the target, unadapted and adapted by each of featx's adaptations (no target label used);
2. calibration on k labelled target images (k = 10, 20, 40, 80; 200 patient-grouped draws, scored on the other
   images): accuracy at the stored threshold vs a threshold re-chosen on the k, and conformal coverage vs its
   promise (90%, 95%) where k holds enough images of each class;
3. the site-transfer curve (k = 10 ... 160, 3 draws of whole patients, scored on the site's other
   images): the source model as it is, re-thresholded on k, a head re-fit on source + k site labels (the k
   weighted to half the total), a head trained on the k alone; and a head trained on 800 site images (5-fold
   out-of-fold), the reference.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from featx.evaluation.conformal import ConformalSets, smallest_class  # noqa: E402
from featx.evaluation.domain import domain_auc  # noqa: E402
from featx.evaluation.significance import bootstrap_ci, point_metrics  # noqa: E402
from featx.evaluation.thresholds import choose_threshold  # noqa: E402
from featx.features.store import FeatureStore  # noqa: E402
from featx.features.target import Target, TargetListing  # noqa: E402
from featx.heads.adaptation import SiteFit  # noqa: E402
from featx.heads.selection import select_head  # noqa: E402

CALIBRATION_K = (10, 20, 40, 80)
CURVE_K = (10, 20, 40, 80, 160)


def source_model(store: FeatureStore, site_fit=None):
    """featx's logreg on the train split, chosen by grouped CV, Youden threshold on its out-of-fold predictions;
    with `site_fit`, adapted as featx fit --adapt does."""
    X, y = store.arrays("train")
    groups = np.asarray(store.groups("train"))
    mapped = site_fit.learn(X) if site_fit is not None else None
    sel = select_head("logreg", mapped.source(X) if mapped else X, y, groups, seed=0)
    if site_fit is not None:
        sel, _ = site_fit.finish(sel)
    return sel.estimator, choose_threshold(sel.selection_y, sel.selection_proba[:, 1], "youden"), sel.params


def planted(store: FeatureStore, kind: str, cache: Path) -> Path:
    """The source's val images, changed as a new scanner would change them, as a folder of class folders."""
    root = cache / f"planted-{kind}"
    if root.is_dir():
        return root
    rng = np.random.default_rng(0)
    paths, labels = store.paths("val"), store.labels("val")
    keep = np.ones(len(paths), bool)
    if kind == "prior":
        positive = np.flatnonzero(labels == 1)
        negatives = int((labels == 0).sum())
        keep[rng.choice(positive, len(positive) - int(negatives * 3 / 7), replace=False)] = False
    tmp = Path(tempfile.mkdtemp(dir=cache))
    for path, label, kept in zip(paths, labels, keep):
        if not kept:
            continue
        image = Image.open(store.data_root / path).convert("L")
        a = np.asarray(image, np.float32) / 255
        a = np.clip(0.5 + 0.7 * (a - 0.5), 0, 1) ** 1.4
        image = Image.fromarray((a * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.5))
        a = np.clip(np.asarray(image, np.float32) + rng.normal(0, 8, image.size[::-1]), 0, 255).astype(np.uint8)
        out = tmp / store.classes[label] / Path(path).name
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(out, quality=40)
    tmp.rename(root)
    return root


def ci_text(value, ci) -> str:
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{value:.3f}"


def at_target(name: str, model, threshold, X_t, y_t) -> None:
    proba = model.predict_proba(X_t)
    m, ci = point_metrics(y_t, proba, threshold), bootstrap_ci(y_t, proba, threshold, n_boot=1000)
    print(f"  {name:<34} ROC-AUC {ci_text(m['roc_auc'], ci['roc_auc'])}  bal. acc. "
          f"{ci_text(m['balanced_accuracy'], ci['balanced_accuracy'])}  specificity "
          f"{ci_text(m['specificity'], ci['specificity'])}  (threshold {threshold:.3f})")


def adaptation_table(store, target_features, shift) -> tuple:
    X_t, y_t = target_features.X, target_features.y
    print("\n1. At the target, no target label used (intervals: stratified bootstrap of the target images)")
    model, threshold, params = source_model(store)
    at_target("unadapted", model, threshold, X_t, y_t)
    for name in ("standardise", "coral", "ot", "prior"):
        adapted, cut, _ = source_model(store, SiteFit(target_features, shift, name))
        at_target(f"adapted by {name}", adapted, cut, X_t, y_t)
    return model, threshold, params


def grouped_draws(y, groups, k, draws, seed):
    """`draws` draws of whole patients, in random order, taken while a class has fewer than k/2 of its images
    (so about k images, both classes), each with the site's other images."""
    out = []
    patients = np.unique(groups)
    for draw in range(draws):
        rng = np.random.default_rng([seed, draw])
        taken, counts = [], np.zeros(2, int)
        for patient in rng.permutation(patients):
            rows = np.flatnonzero(groups == patient)
            if (counts[y[rows]] < k / 2).any():
                taken.extend(rows)
                counts += np.bincount(y[rows], minlength=2)
            if (counts >= k / 2).all():
                break
        rows = np.sort(np.array(taken, int))
        out.append((rows, np.setdiff1d(np.arange(len(y)), rows)))
    return out


def calibration_table(model, threshold, X_t, y_t, groups_t) -> None:
    print("\n2. Calibration on k labelled target images, scored on the others (mean ± sd over 200 draws)")
    proba = model.predict_proba(X_t)
    for k in CALIBRATION_K:
        before, after, coverage = [], [], {0.9: [], 0.95: []}
        for rows, rest in grouped_draws(y_t, groups_t, k, 200, seed=k):
            before.append(np.mean((proba[rest, 1] >= threshold) == y_t[rest]))
            cut = choose_threshold(y_t[rows], proba[rows, 1], "youden")
            after.append(np.mean((proba[rest, 1] >= cut) == y_t[rest]))
            for confidence in coverage:
                if np.bincount(y_t[rows], minlength=2).min() >= smallest_class(confidence):
                    sets = ConformalSets.fit(y_t[rows], proba[rows], confidence, ["0", "1"]).members(proba[rest])
                    coverage[confidence].append(sets[np.arange(len(rest)), y_t[rest]].mean())
        gain = np.array(after) - np.array(before)
        covered = "; ".join(f"{c:.0%} sets cover {np.mean(v):.3f} ± {np.std(v):.3f} ({len(v)} draws)" if v else
                            f"{c:.0%} sets: too few images per class" for c, v in coverage.items())
        print(f"  k={k:<4} accuracy stored threshold {np.mean(before):.3f} ± {np.std(before):.3f}; re-chosen "
              f"{np.mean(after):.3f} ± {np.std(after):.3f} (gain {np.mean(gain):+.3f}); {covered}")


def curves_table(store, model, threshold, params, X_t, y_t, groups_t) -> None:
    print("\n3. Site-transfer curves: ROC-AUC / balanced accuracy on the site's other images (mean ± sd, 3 draws)")
    X_s, y_s = store.arrays("train")
    proba = model.predict_proba(X_t)
    for k in CURVE_K:
        found = {"as is": [], "re-thresholded": [], "source + k": [], "k alone": []}
        for rows, rest in grouped_draws(y_t, groups_t, k, 3, seed=1000 + k):
            y_r = y_t[rest]
            cut = choose_threshold(y_t[rows], proba[rows, 1], "youden")
            found["as is"].append(_scores(y_r, proba[rest], threshold))
            found["re-thresholded"].append(_scores(y_r, proba[rest], cut))
            weights = np.r_[np.ones(len(y_s)), np.full(len(rows), len(y_s) / len(rows))]
            joint = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=2000,
                                                                       C=params["C"]))
            joint.fit(np.vstack([X_s, X_t[rows]]), np.r_[y_s, y_t[rows]], logisticregression__sample_weight=weights)
            p = joint.predict_proba(X_t[rest])
            found["source + k"].append(_scores(y_r, p, choose_threshold(y_t[rows], joint.predict_proba(X_t[rows])[:, 1],
                                                                         "youden")))
            alone = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=2000, C=0.01))
            alone.fit(X_t[rows], y_t[rows])
            found["k alone"].append(_scores(y_r, alone.predict_proba(X_t[rest]), 0.5))
        print(f"  k={k:<4} " + "; ".join(f"{name} {np.mean([a for a, _ in v]):.3f} ± {np.std([a for a, _ in v]):.3f}"
                                         f" / {np.mean([b for _, b in v]):.3f}" for name, v in found.items()))
    out_of_fold = np.zeros(len(y_t))
    for rows, rest in _folds(y_t, groups_t):
        alone = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=2000, C=0.01))
        out_of_fold[rest] = alone.fit(X_t[rows], y_t[rows]).predict_proba(X_t[rest])[:, 1]
    print(f"  reference: a head trained on {int(len(y_t) * 0.8)} site images (5-fold by patient, out of fold): "
          f"ROC-AUC {roc_auc_score(y_t, out_of_fold):.3f}")


def _folds(y, groups):
    from featx.evaluation.folds import group_folds

    return group_folds(y, groups, 5, 0)


def _scores(y, proba, threshold) -> tuple[float, float]:
    m = point_metrics(y, proba, threshold)
    return m["roc_auc"], m["balanced_accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="the training data's feature cache (.h5)")
    parser.add_argument("--target", help="a folder (or manifest) of labelled images of another site")
    parser.add_argument("--target-group-pattern", default=None)
    parser.add_argument("--planted", choices=["acquisition", "prior"])
    parser.add_argument("--cache", default=None, help="cache folder for the target's features")
    args = parser.parse_args()
    store = FeatureStore(args.source)
    cache = Path(args.cache) if args.cache else store.path.parent.parent
    started = time.perf_counter()
    source = planted(store, args.planted, cache) if args.planted else Path(args.target)
    listing = TargetListing.of(Target(str(source), args.target_group_pattern), cache)
    found = listing.features(store, cache_dir=cache, log=print)
    groups = [f"train/{g}" for g in store.groups("train")] + [f"target/{g}" for g in found.groups]
    auc, ci = domain_auc(store.arrays("train")[0], found.X, groups)
    print(f"{store.config['backbone']}: train {store.counts()['train']['done']} images -> target {found.name} "
          f"{len(found.y)} images ({np.bincount(found.y).tolist()} per class); shift: domain AUC {ci_text(auc, ci)}")
    model, threshold, params = adaptation_table(store, found, {"auc": auc, "ci": list(ci)})
    groups_t = np.asarray(found.groups)
    calibration_table(model, threshold, found.X, found.y, groups_t)
    curves_table(store, model, threshold, params, found.X, found.y, groups_t)
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
