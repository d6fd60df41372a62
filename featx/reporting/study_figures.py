"""What `featx study` shows: a table of every size that fits a terminal, the learning curves (ROC-AUC and
balanced accuracy against the number of labelled images, log axis, one line per method), the full-size
comparison as `featx compare` shows it, and a report (report.html, report.md) holding them with the verdict."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from .._core.atomic import atomic_path, write_csv_atomic, write_text_atomic
from ..data.budgets import size_order
from .comparison import csv_rows, paired_tests, scored
from .document import html_document, markdown_document
from .figures import colours, png


def by_method(records: list[dict]) -> dict[str, list[tuple]]:
    """method -> [(mean images, mean AUC, band low, band high, mean balanced accuracy, its min, its max,
    mean training seconds, mean training images/s, repeats)] by size, ascending. The AUC band spans every repeat's 95% bootstrap interval,
    so it holds both which images were drawn and which were evaluated."""
    cells = defaultdict(list)
    for r in records:
        cells[(r["method"], r["n"])].append(r)
    out = defaultdict(list)
    for (method, _), rows in cells.items():
        auc = [r["roc_auc"] for r in rows if r["roc_auc"] is not None]
        low = [r["roc_auc_low"] for r in rows if r["roc_auc_low"] is not None]
        high = [r["roc_auc_high"] for r in rows if r["roc_auc_high"] is not None]
        bal = [r["balanced_accuracy"] for r in rows]
        out[method].append((float(np.mean([r["n_images"] for r in rows])), np.mean(auc) if auc else None,
                            min(low) if low else None, max(high) if high else None, float(np.mean(bal)),
                            float(min(bal)), float(max(bal)), float(np.mean([r["train_seconds"] for r in rows])),
                            float(np.mean([r.get("images_per_second") or r["n_images"] / max(r["train_seconds"], 1e-9)
                                           for r in rows])), len(rows)))
    return {m: sorted(v) for m, v in out.items()}


def study_lines(records: list[dict]) -> list[str]:
    """One row per method and size, within 100 columns: the mean over repeats, the band, the cost."""
    lines = [f"{'method':<34} {'images':>6} {'ROC-AUC (band over repeats)':>27} {'bal. acc':>8} {'train s':>7} "
             f"{'img/s':>7}"]
    for method, rows in by_method(records).items():
        for images, auc, low, high, bal, *_, seconds, rate, repeats in rows:
            shown = "–" if auc is None else f"{auc:.3f} [{low:.3f}, {high:.3f}]"
            name = method if len(method) <= 34 else method[:33] + "…"
            lines.append(f"{name:<34} {images:>6.0f} {shown:>27} {bal:>8.3f} {seconds:>7.1f} {rate:>7.0f}")
    return lines


def full_size_records(records: list[dict], split: str, n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """The largest size's first repeat as `featx compare` records (metrics with intervals, DeLong and McNemar
    against the best, Holm-adjusted), best first; methods evaluated on other images are listed apart."""
    largest = max((r["n"] for r in records), key=size_order, default=None)
    rows = [r for r in records if r["n"] == largest and r["repeat"] == 0]
    if not rows:
        return []
    main = max({r["eval_images"] for r in rows}, key=[r["eval_images"] for r in rows].count)
    out, predictions = [], []
    for r in rows:
        y, proba = np.asarray(r["y"]), np.asarray(r["proba"])
        ranked = r["eval_images"] == main
        base = {"method": r["method"], "kind": "finetune" if r["method_id"].finetuned else "head",
                "split": split, "ranked": ranked, "note": "" if ranked else "evaluated on other images",
                "threshold": r["threshold"], "classes": r["classes"], "train_seconds": r["train_seconds"],
                "predict_seconds_per_image": None, "size_bytes": None, "artifact": r.get("artifact", ""),
                "p_delong": None, "p_mcnemar": None,
                "p_delong_holm": None, "p_mcnemar_holm": None}
        out.append(scored(base, y, proba, n_boot=n_boot, seed=seed))
        predictions.append({"y": y, "proba": proba})
    ranked = [i for i, r in enumerate(out) if r["ranked"]]
    paired_tests([out[i] for i in ranked], [predictions[i] for i in ranked])
    return sorted(out, key=lambda r: (not r["ranked"], -(r["roc_auc"] if r["roc_auc"] is not None else -1)))


def _spread(sizes: list[int], ratio: float = 1.15) -> list[int]:
    """Tick positions on a log axis, each at least `ratio` times the one before: sizes as close as 19 and 20
    (random draws of whole patients beside a strategy's exact count) get one label, not two overprinted."""
    kept = []
    for size in sizes:
        if not kept or size >= ratio * kept[-1]:
            kept.append(size)
    return kept


def plot_learning_curves(plt, records: list[dict]) -> bytes:
    """Two panels against the number of labelled images (log axis): ROC-AUC with its band, and balanced
    accuracy with the range of its repeats."""
    methods = by_method(records)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for colour, (method, rows) in zip(colours(plt, len(methods)), methods.items()):
        x = np.array([r[0] for r in rows])
        auc = np.array([np.nan if r[1] is None else r[1] for r in rows], float)
        axes[0].plot(x, auc, "o-", color=colour, label=method)
        axes[0].fill_between(x, [np.nan if r[2] is None else r[2] for r in rows],
                             [np.nan if r[3] is None else r[3] for r in rows], color=colour, alpha=0.15)
        axes[1].plot(x, [r[4] for r in rows], "o-", color=colour, label=method)
        axes[1].fill_between(x, [r[5] for r in rows], [r[6] for r in rows], color=colour, alpha=0.15)
    sizes = _spread(sorted({round(r[0]) for rows in methods.values() for r in rows}))
    for ax, title in zip(axes, ("ROC-AUC (band: every repeat's 95% interval)", "Balanced accuracy (band: repeats)")):
        ax.set_xscale("log")
        ax.set_xticks(sizes, [str(s) for s in sizes])  # the sizes studied, written out
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.set_xlabel("labelled training images (log scale)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return png(fig, plt)


def plot_site_transfer(plt, transfer: list[dict]) -> bytes:
    """Per method, ROC-AUC and balanced accuracy on the site's undrawn images against the site labels drawn
    (log axis), one line per option (mean over the draws, band: ± one standard deviation)."""
    methods = list(dict.fromkeys(r["method"] for r in transfer))
    fig, axes = plt.subplots(len(methods), 2, figsize=(12, 3.6 * len(methods)), squeeze=False)
    options = list(dict.fromkeys(r["option"] for r in transfer))
    for row, method in zip(axes, methods):
        mine = [r for r in transfer if r["method"] == method]
        sizes = sorted({r["k"] for r in mine})
        for colour, option in zip(colours(plt, len(options)), options):
            for ax, metric in zip(row, ("roc_auc", "balanced_accuracy")):
                values = [[r[metric] for r in mine if r["k"] == k and r["option"] == option and r[metric] is not None]
                          for k in sizes]
                mean = np.array([np.mean(v) if v else np.nan for v in values])
                sd = np.array([np.std(v) if v else np.nan for v in values])
                ax.plot(sizes, mean, "o-", color=colour, label=option)
                ax.fill_between(sizes, mean - sd, mean + sd, color=colour, alpha=0.15)
        for ax, name in zip(row, ("ROC-AUC", "Balanced accuracy")):
            ax.set_xscale("log")
            ax.set_xticks(sizes, [str(k) for k in sizes])
            ax.xaxis.set_minor_formatter(plt.NullFormatter())
            ax.set_xlabel("site labels drawn, k (log scale)")
            ax.set_title(f"{method}: {name} on the site's other images", fontsize=10)
            ax.grid(alpha=0.3, which="both")
        row[0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return png(fig, plt)


def document_parts(records: list[dict], full: list[dict], *, split: str, verdict: list[str], title: str,
                   transfer: list[dict] | None = None):
    """(title, records, figures, blocks) of the study's report, for reporting.document's writers."""
    from .._core.plotting import pyplot

    largest = full[0]["n"] if full else 0
    figures = {"learning_curves.png": ("Learning curves: ROC-AUC and balanced accuracy against the labelled "
                                       "training images (mean over repeats)", plot_learning_curves(pyplot(), records))}
    if transfer:
        figures["site_transfer.png"] = (f"Site transfer to {transfer[0]['site']}: what k labelled images of the site "
                                        "buy (mean over draws, band: ± sd; as is and re-thresholded share a ROC-AUC: "
                                        "a threshold does not change the ranking)", plot_site_transfer(pyplot(), transfer))
    blocks = [("Verdict", "\n".join(verdict)), ("Every size (study.csv holds every metric and repeat)",
                                                "\n".join(study_lines(records)))]
    return f"{title}: the full pool, evaluated on the {largest} {split} images", full, figures, blocks


def write_study_outputs(records: list[dict], full: list[dict], out, *, split: str, verdict: list[str],
                        title: str, transfer: list[dict] | None = None) -> dict[str, Path]:
    """learning_curves.png (and site_transfer.png), report.html, report.md and the full-size comparison.csv
    (`full`: full_size_records) beside study.csv in `out`."""
    out = Path(out)
    title, full, figures, blocks = document_parts(records, full, split=split, verdict=verdict, title=title,
                                                  transfer=transfer)
    for name, (_, image) in figures.items():
        with atomic_path(out / name) as tmp:
            Path(tmp).write_bytes(image)
    write_csv_atomic(out / "comparison.csv", csv_rows(full))
    write_text_atomic(out / "report.md", markdown_document(title, full, figures, blocks))
    write_text_atomic(out / "report.html", html_document(title, full, figures, blocks))
    return {"curves": out / "learning_curves.png", "html": out / "report.html", "markdown": out / "report.md"}
