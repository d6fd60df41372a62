"""`featx compare`: every head and fine-tune of a dataset, on one split, measured the same way.

Methods are ranked together only when they were evaluated on exactly the same images (same
relative paths, same bytes); the others are listed apart with the reason. Each metric gets a
stratified bootstrap 95% interval, and every method is tested against the best one (highest
ROC-AUC) with DeLong's test and McNemar's test on the same images. With several methods these
are several tests: the table shows p-values Holm-adjusted within each test's family (the raw
ones are kept in the records and the report's CSV). "Best" is chosen on the same split it is
tested on, which no p-value here accounts for.
"""

from __future__ import annotations

import textwrap
from collections import Counter
from pathlib import Path

import numpy as np

from .._core.errors import FeatxError
from .._core.options import CHOICES, check_choice
from .._core.paths import default_cache_dir
from ..artifacts.format import checked_sidecar, load_predictions
from ..evaluation.sets import EvaluationSet
from ..evaluation.significance import (
    BOOTSTRAP_METRICS,
    bootstrap_ci,
    delong_test,
    holm,
    mcnemar_test,
    point_metrics,
)
from ..artifacts.catalogue import artifacts_of_dataset, find_artifacts
from ..artifacts.sidecar import Sidecar


def compare(data=None, *, split: str = "test", models_dir=None, cache_dir=None, n_boot: int = 1000,
            seed: int = 0, keep_predictions: bool = False) -> list[dict]:
    """One record per artifact of the dataset: metrics with 95% CIs, p-values against the best, costs.

    Records with `ranked` False were evaluated on other images (or lack the split) and carry a
    `note` saying why; they get metrics but no p-values. `keep_predictions` adds each record's
    per-image "predictions" (path, sha1, y, proba), for plots.
    """
    if split != "target":  # the labelled --target images a fit scored, beside the dataset's own splits
        try:
            check_choice("split", split)
        except FeatxError:
            raise FeatxError(f"--split must be one of {', '.join(CHOICES['split'])}, target; not {split!r}") from None
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    models_dir = Path(models_dir) if models_dir else cache_dir / "models"
    candidates, data_root = artifacts_of_dataset(find_artifacts(models_dir), data, cache_dir, models_dir)

    methods, apart = [], []
    for path, info in candidates:
        try:
            checked_sidecar(path, info)
            preds = load_predictions(path, info)
        except FeatxError as exc:  # listed, with the reason, rather than failing the whole comparison
            apart.append(_record(path, info, None, split, note=str(exc)))
            continue
        if split not in preds:
            apart.append(_record(path, info, None, split, note=f"no {split} split (has {', '.join(preds)})"))
            continue
        p = preds[split]
        order = EvaluationSet.of(split, p["path"], p["sha1"]).order()
        methods.append((path, info, {k: v[order] for k, v in p.items()}))
    if not methods:
        raise FeatxError(f"no artifact of this dataset was evaluated on a {split} split; try --split val")

    fingerprints = [EvaluationSet.of(split, m[2]["path"], m[2]["sha1"]).key for m in methods]
    main_print = Counter(fingerprints).most_common(1)[0][0]
    ranked = [m for m, f in zip(methods, fingerprints) if f == main_print]
    for (path, info, p), f in zip(methods, fingerprints):
        if f != main_print:
            note = (f"evaluated on other {split} images ({len(p['y'])} images, fingerprint {f[:8]}, "
                    f"not {main_print[:8]}): not comparable with the ranked methods")
            apart.append(_record(path, info, p, split, note=note, n_boot=n_boot, seed=seed))
            if keep_predictions:
                apart[-1]["predictions"] = p

    records = [_record(path, info, p, split, n_boot=n_boot, seed=seed) for path, info, p in ranked]
    paired_tests(records, [p for _, _, p in ranked])
    if keep_predictions:
        for r, (_, info, p) in zip(records, ranked):
            r["predictions"] = p
            r["history"] = info.get("history")
            r["best_epoch"] = info.get("best_epoch")
            r["data_root"] = data_root or info["features"]["config"].get("data_root")
    records.sort(key=lambda r: -(r["roc_auc"] if r["roc_auc"] is not None else r["balanced_accuracy"]))
    return records + apart


def _record(path: Path, info: dict, p: dict | None, split: str, note: str = "", n_boot: int = 1000,
            seed: int = 0) -> dict:
    size = path.stat().st_size
    sidecar = Sidecar.from_json(info)
    record = {
        "method": sidecar.method.label, "kind": sidecar.kind, "head": sidecar.method.head, "artifact": str(path),
        "sha256": info.get("sha256"), "split": split,
        "ranked": not note, "note": note, "n": 0, "threshold": info.get("threshold"),
        "train_seconds": info.get("train_seconds"), "features_file": sidecar.features_file(path),
        "backbone": sidecar.method.backbone,
        "predict_seconds_per_image": info.get("predict_seconds_per_image"), "size_bytes": size,
        "classes": info["classes"], "p_delong": None, "p_mcnemar": None, "p_delong_holm": None,
        "p_mcnemar_holm": None,
    }
    if p is None:
        return record | {m: None for m in BOOTSTRAP_METRICS} | {f"{m}_ci": None for m in BOOTSTRAP_METRICS}
    return scored(record, p["y"], p["proba"], n_boot=n_boot, seed=seed)


def scored(record: dict, y, proba, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """`record` (method, classes, threshold, split, note, costs) with its metrics on (y, proba) and their 95%
    intervals: what one row of the compare table shows."""
    threshold, split = record["threshold"], record["split"]
    record["n"] = int(len(y))
    record["counts"] = {c: int((y == i).sum()) for i, c in enumerate(record["classes"])}
    record.update(point_metrics(y, proba, threshold))
    cis = bootstrap_ci(y, proba, threshold, n_boot=n_boot, seed=seed)
    record.update({f"{m}_ci": cis[m] for m in BOOTSTRAP_METRICS})
    if record["roc_auc"] is None:
        missing = [c for c, n in record["counts"].items() if n == 0]
        record["note"] = (record["note"] + "; " if record["note"] else "") + \
            f"ROC-AUC and PR-AUC undefined: the {split} split has no {', '.join(missing)} images"
    return record


def paired_tests(records: list[dict], predictions: list[dict]) -> None:
    """DeLong (ROC-AUC) and McNemar (accuracy at each stored threshold) against the best method, raw and
    Holm-adjusted over the methods compared with it; `predictions[i]` ("y", "proba") are `records[i]`'s,
    on the same images in the same order."""
    if not records:
        return
    key = [r["roc_auc"] if r["roc_auc"] is not None else -1 for r in records]
    best = int(np.argmax(key))
    y = predictions[best]["y"]
    binary = len(records[best]["classes"]) == 2
    both = len(np.unique(y)) == 2
    correct = [_correct(p["y"], p["proba"], r["threshold"]) for r, p in zip(records, predictions)]
    for i, (r, p) in enumerate(zip(records, predictions)):
        r["best"] = i == best
        if i == best:
            continue
        if binary and both:
            r["p_delong"] = delong_test(y, predictions[best]["proba"][:, 1], p["proba"][:, 1])["p_value"]
        r["p_mcnemar"] = mcnemar_test(correct[best], correct[i])["p_value"]
    for test in ("p_delong", "p_mcnemar"):
        for r, adjusted in zip(records, holm([r[test] for r in records])):
            r[f"{test}_holm"] = adjusted


def _correct(y, proba, threshold) -> np.ndarray:
    if proba.shape[1] == 2 and threshold is not None:
        return (proba[:, 1] >= threshold).astype(int) == y
    return proba.argmax(1) == y


SHOWN = (("accuracy", "Accuracy"), ("balanced_accuracy", "Bal. acc."), ("sensitivity", "Sensitivity"),
         ("specificity", "Specificity"), ("f1", "F1"), ("roc_auc", "ROC-AUC"), ("pr_auc", "PR-AUC"))
HEADER = ["Method", "images", *[label for _, label in SHOWN], "p DeLong (Holm)", "p McNemar (Holm)", "Train s",
          "Predict ms/img", "Size MB"]
BEST_MARK = "best*"
BEST_NOTE = ("* best: the highest ROC-AUC on this same split, so choosing it already favoured it; the p-values "
             "test every other method against it, Holm-adjusted over the {m} (raw p-values in the report's "
             "comparison.csv)")
CSV_METRICS = (*[m for m, _ in SHOWN], "balanced_accuracy")


def table_rows(records: list[dict], ranked: bool) -> list[list[str]]:
    """The cells of the compare table (as HEADER), for the ranked methods or those evaluated apart."""
    return [[r["method"], str(r["n"]), *[_cell(r, m) for m, _ in SHOWN], _p(r["p_delong_holm"], r.get("best")),
             _p(r["p_mcnemar_holm"], r.get("best")), *_cost(r)] for r in records if r["ranked"] == ranked]


def best_note(records: list[dict]) -> str:
    """The line that goes under a table with a best method: how it was chosen, how p-values are adjusted."""
    compared = sum(1 for r in records if r["ranked"] and not r.get("best"))
    return BEST_NOTE.format(m=f"{compared} comparisons" if compared > 1 else "1 comparison") if compared else ""


def ranked_shift(records: list[dict], with_map: bool = False) -> tuple[str, dict, dict] | None:
    """(from split, shift record, compare record) of the shift `featx shift` measured into the compared
    split, on the features of the best-ranked head that has one; None if none has. `with_map` also
    reads the map's coordinates (for the report's figure)."""
    from ..studies.shift import recorded_shift

    for r in records:
        if r["ranked"] and r["kind"] == "head" and r.get("features_file"):
            found = recorded_shift(r["features_file"], r["split"], with_map)
            if found:
                return found[0], found[1], r
    return None


def shift_note(records: list[dict]) -> str:
    """A line on the shift into the compared split, where `featx shift` measured one; "" otherwise."""
    found = ranked_shift(records)
    if not found:
        return ""
    start, score, r = found
    low, high = score["ci"]
    return (f"{start} -> {r['split']} shift ({r['backbone']} features): domain AUC "
            f"{score['auc']:.2f} [{low:.2f}, {high:.2f}]" + ("; thresholds chosen on validation may not "
                                                             "transfer" if low > 0.6 else ""))


def csv_rows(records: list[dict]) -> list[dict]:
    """One row per method for comparison.csv: metrics with interval ends, raw and Holm-adjusted p-values."""
    rows = []
    for r in records:
        row = {"method": r["method"], "kind": r["kind"], "ranked": r["ranked"], "best": bool(r.get("best")),
               "split": r["split"], "n": r["n"], "threshold": r["threshold"]}
        for m in dict.fromkeys(CSV_METRICS):
            ci = r.get(f"{m}_ci") or (None, None)
            row.update({m: r.get(m), f"{m}_low": ci[0], f"{m}_high": ci[1]})
        row.update({k: r[k] for k in ("p_delong", "p_delong_holm", "p_mcnemar", "p_mcnemar_holm", "train_seconds",
                                      "predict_seconds_per_image", "size_bytes", "artifact", "note")})
        rows.append(row)
    return rows


WIDTH = 100  # a terminal's columns: the narrow table and its notes fit in them
NARROW = (("roc_auc", "ROC-AUC [95% CI]"), ("balanced_accuracy", "Bal. acc. [95% CI]"))
NARROW_HEADER = ["Method", "images", *[label for _, label in NARROW], "p DeLong", "Train s"]


def format_table(records: list[dict], wide: bool = False) -> str:
    """The compare table as text: ranked methods, then those evaluated on other images. Within 100 columns
    (the headline metrics with intervals, the Holm-adjusted DeLong p, the training time; the rest is in
    the CSV and the report), or every column (`wide`)."""
    header = HEADER if wide else NARROW_HEADER
    groups = [(ranked, table_rows(records, ranked) if wide else _narrow_rows(records, ranked))
              for ranked in (True, False)]
    cells = [header] + [row for _, rows in groups for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    if not wide:  # the method's name gives way
        widths[0] = max(12, min(widths[0], WIDTH - sum(widths[1:]) - 2 * (len(header) - 1)))
    def line(row) -> str:  # a name too long for its column gets a line of its own, the numbers under it
        cells = "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                          enumerate(zip(["" if len(row[0]) > widths[0] else row[0], *row[1:]], widths)))
        return (row[0] + "\n" + cells) if len(row[0]) > widths[0] else cells
    lines = [line(header).rstrip()]
    notes = {r["method"]: r["note"] for r in records}
    wrap = (lambda text, indent="": [text]) if wide else \
        (lambda text, indent="": textwrap.wrap(text, WIDTH, subsequent_indent=indent))
    for ranked, rows in groups:
        if rows and not ranked:
            lines.append("evaluated apart (not comparable with the ranking above):")
        for row, record in zip(rows, [r for r in records if r["ranked"] == ranked]):
            lines.append(line(row))
            if notes[record["method"]]:
                lines += wrap(f"  note: {notes[record['method']]}", "        ")
        if ranked:
            for note in (best_note(records), shift_note(records)):
                lines += wrap(note, "  ") if note else []
    return "\n".join(lines)


def _narrow_rows(records: list[dict], ranked: bool) -> list[list[str]]:
    return [[r["method"], str(r["n"]), *[_cell(r, m) for m, _ in NARROW], _p(r["p_delong_holm"], r.get("best")),
             _cost(r)[0]] for r in records if r["ranked"] == ranked]


def _cell(r, metric) -> str:
    value, ci = r.get(metric), r.get(f"{metric}_ci")
    if value is None:
        return "–"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{value:.3f}"


def _p(value, is_best) -> str:
    if is_best:
        return BEST_MARK
    if value is None:
        return "–"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _cost(r) -> list[str]:
    per_image = r["predict_seconds_per_image"]
    return ["–" if r["train_seconds"] is None else f"{r['train_seconds']:.1f}",
            "–" if per_image is None else f"{per_image * 1000:.3f}",
            "–" if r.get("size_bytes") is None else f"{r['size_bytes'] / 1e6:.2f}"]
