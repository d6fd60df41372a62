"""The comparison report: one self-contained HTML file (images inlined) and a Markdown twin.

Contents: the compare table with 95% intervals and p-values; ROC and precision-recall curves
of every ranked method on shared axes; confusion matrices; calibration curves; fine-tuning
curves; the best method's most confident mistakes; class activation heatmaps for a few of
them; and, where `featx shift` and `featx robustness` measured this split, the map of the shift,
the images most unlike the first split, and ROC-AUC under corruption. Plots need matplotlib
(pip install 'featx[report]').
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np

from .._core.atomic import atomic_path, write_csv_atomic, write_text_atomic
from .._core.console import silent
from .._core.errors import FeatxError
from .._core.plotting import pyplot
from ..finetuning.curves import plot_history
from .comparison import (
    HEADER,
    best_note,
    compare,
    csv_rows,
    format_table,
    ranked_shift,
    shift_note,
    table_rows,
)
from .figures import colours, png, thumbnail


def report(data=None, *, split: str = "test", out="featx-report", models_dir=None, cache_dir=None,
           n_boot: int = 1000, seed: int = 0, heatmaps: int = 4, log=None) -> dict:
    """Compare every model of a dataset on `split` and write report.html, report.md and the PNGs to `out`."""
    log = log or silent
    records = compare(data, split=split, models_dir=models_dir, cache_dir=cache_dir, n_boot=n_boot, seed=seed,
                      keep_predictions=True)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ranked = [r for r in records if r["ranked"]]
    figures = {}  # file name -> (caption, png bytes)
    plt = pyplot()
    binary = len(ranked[0]["classes"]) == 2 and all(r["roc_auc"] is not None for r in ranked)
    if binary:
        figures["roc_pr.png"] = ("ROC and precision-recall curves (positive class: "
                                 f"{ranked[0]['classes'][1]}); dots mark each method's stored threshold",
                                 _roc_pr(plt, ranked))
        figures["calibration.png"] = ("Calibration: predicted probability vs observed frequency (10 quantile bins)",
                                      _calibration(plt, ranked))
    figures["confusion.png"] = ("Confusion matrices at each method's stored threshold", _confusion(plt, ranked))
    for r in ranked:
        if r.get("history"):
            name = f"training-{_slug(r['method'])}.png"
            figures[name] = (f"Fine-tuning curves: {r['method']}", _history(plt, r["history"], r.get("best_epoch")))
    best = next(r for r in ranked if r.get("best", len(ranked) == 1))
    mistakes = _mistakes(best)
    if mistakes:
        figures["mistakes.png"] = (f"Most confident mistakes of the best method ({best['method']})",
                                   _mistake_grid(plt, best, mistakes))
    heat = _heatmaps(plt, ranked, mistakes, heatmaps, log) if heatmaps else None
    if heat:
        figures["heatmaps.png"] = heat

    blocks = _shift_and_robustness(plt, figures, records, split, models_dir, cache_dir)
    for name, (_, image) in figures.items():
        with atomic_path(out / name) as tmp:
            Path(tmp).write_bytes(image)
    write_csv_atomic(out / "comparison.csv", csv_rows(records))
    title = f"featx compare: {split} split of {ranked[0].get('data_root')}"
    write_text_atomic(out / "report.md", markdown_document(title, records, figures, blocks))
    write_text_atomic(out / "report.html", html_document(title, records, figures, blocks))
    for r in records:
        r.pop("predictions", None)
        r.pop("history", None)
    return {"records": records, "html": out / "report.html", "markdown": out / "report.md", "csv": out / "comparison.csv",
            "figures": [out / n for n in figures]}


def _shift_and_robustness(plt, figures: dict, records, split: str, models_dir, cache_dir) -> list[tuple[str, str]]:
    """Add the figures of `featx shift` and `featx robustness` results for this split, where they exist;
    return the text blocks (title, text) that go with them."""
    from .._core.paths import default_cache_dir
    from ..studies.measurements import saved_robustness
    from .robustness_plot import plot_robustness
    from .shift_figures import shift_figures

    ranked = [r for r in records if r["ranked"]]
    found = ranked_shift(records, with_map=True)
    if found:
        start, score, r = found
        figures.update(shift_figures(plt, score, (start, split), r["classes"], r.get("data_root")))
    models_dir = Path(models_dir) if models_dir else Path(cache_dir or default_cache_dir()) / "models"
    result = saved_robustness(models_dir, split)
    if result is None or not any(result.rows_of(r["sha256"]) for r in ranked):  # measured on other models
        return []
    figures["robustness.png"] = (f"Robustness: ROC-AUC under corruption, {len(result.corruptions)} corruptions at "
                                 f"severities {', '.join(map(str, result.severities))} (featx robustness)",
                                 plot_robustness(plt, result))
    lines = result.lines()
    missing = [r["method"] for r in ranked if r["method"] not in result.methods]
    if missing:
        lines.append(f"note: measured {result.created}, before {', '.join(missing)}; run featx robustness again "
                     "to include them (it computes only what is new)")
    return [("Robustness to corruption (featx robustness)", "\n".join(lines))]


# --- figures -------------------------------------------------------------------------------------

def _roc_pr(plt, ranked) -> bytes:
    from sklearn.metrics import precision_recall_curve, roc_curve

    fig, (roc, pr) = plt.subplots(1, 2, figsize=(12, 5.2), constrained_layout=True)
    for r, colour in zip(ranked, colours(plt, len(ranked))):
        p = r["predictions"]
        y, s = p["y"], p["proba"][:, 1]
        fpr, tpr, _ = roc_curve(y, s)
        line, = roc.plot(fpr, tpr, lw=1.5, color=colour, label=f"{r['method']} ({r['roc_auc']:.3f})")
        precision, recall, _ = precision_recall_curve(y, s)
        pr.plot(recall, precision, lw=1.5, color=line.get_color(), label=f"{r['method']} ({r['pr_auc']:.3f})")
        t = r["threshold"] if r["threshold"] is not None else 0.5
        pred = s >= t
        roc.plot([1 - r["specificity"]], [r["sensitivity"]], "o", color=line.get_color(), ms=5)
        if pred.any():
            pr.plot([r["sensitivity"]], [float(y[pred].mean())], "o", color=line.get_color(), ms=5)
    roc.plot([0, 1], [0, 1], ":", color="grey", lw=1)
    # Good methods crowd the top-left corner: zoom in when every curve lives there.
    zoom = min(r["roc_auc"] for r in ranked) > 0.95
    roc.set(xlabel="1 - specificity (false positive rate)", ylabel="sensitivity (true positive rate)",
            title="ROC (AUC in legend)" + (", top-left corner" if zoom else ""),
            xlim=(0, 0.4) if zoom else (0, 1), ylim=(0.6, 1.005) if zoom else (0, 1.01))
    prevalence = float(np.mean(ranked[0]["predictions"]["y"]))
    pr.axhline(prevalence, ls=":", color="grey", lw=1)
    zoom_pr = min(r["pr_auc"] for r in ranked) > 0.95
    pr.set(xlabel="recall (sensitivity)", ylabel="precision",
           title="Precision-recall (AP in legend)" + (", top-right corner" if zoom_pr else ""),
           xlim=(0.6, 1.005) if zoom_pr else (0, 1), ylim=(0.6, 1.005) if zoom_pr else (0, 1.01))
    for ax in (roc, pr):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right" if ax is roc else "lower left")
    return png(fig, plt)


def _calibration(plt, ranked) -> bytes:
    from sklearn.calibration import calibration_curve

    fig, ax = plt.subplots(figsize=(7.5, 5.2), constrained_layout=True)
    for r, colour in zip(ranked, colours(plt, len(ranked))):
        p = r["predictions"]
        observed, predicted = calibration_curve(p["y"], p["proba"][:, 1], n_bins=10, strategy="quantile")
        ax.plot(predicted, observed, "o-", ms=3, lw=1.2, color=colour, label=r["method"])
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=1, label="perfectly calibrated")
    ax.set(xlabel=f"predicted probability of {ranked[0]['classes'][1]}", ylabel="observed frequency",
           xlim=(0, 1), ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return png(fig, plt)


def _confusion(plt, ranked) -> bytes:
    n = len(ranked)
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.1 * rows), constrained_layout=True, squeeze=False)
    classes = ranked[0]["classes"]
    for ax, r in zip(axes.flat, ranked):
        p = r["predictions"]
        k = len(classes)
        if k == 2 and r["threshold"] is not None:
            pred = (p["proba"][:, 1] >= r["threshold"]).astype(int)
        else:
            pred = p["proba"].argmax(1)
        cm = np.zeros((k, k), int)
        np.add.at(cm, (p["y"], pred), 1)
        ax.imshow(cm, cmap="Blues")
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                        color="white" if cm[i, j] > cm.max() / 2 else "black", fontsize=10)
        ax.set_xticks(range(k), classes, fontsize=7)
        ax.set_yticks(range(k), classes, fontsize=7)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
        ax.set_title(r["method"], fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    return png(fig, plt)


def _history(plt, history, best_epoch=None) -> bytes:
    return png(plot_history(plt, history, best_epoch), plt)


def _mistakes(record, limit: int = 8) -> list[int]:
    """Rows the method got wrong, most confident first."""
    p = record["predictions"]
    proba, y = p["proba"], p["y"]
    if proba.shape[1] == 2 and record["threshold"] is not None:
        pred = (proba[:, 1] >= record["threshold"]).astype(int)
    else:
        pred = proba.argmax(1)
    wrong = np.flatnonzero(pred != y)
    confidence = proba[wrong, pred[wrong]]
    return wrong[np.argsort(-confidence, kind="stable")][:limit].tolist()


def _mistake_grid(plt, record, rows: list[int]) -> bytes:
    p = record["predictions"]
    classes = record["classes"]
    cols = min(4, len(rows))
    lines = (len(rows) + cols - 1) // cols
    fig, axes = plt.subplots(lines, cols, figsize=(3 * cols, 3.3 * lines), constrained_layout=True, squeeze=False)
    root = Path(record.get("data_root") or ".")
    for ax, i in zip(axes.flat, rows):
        proba = p["proba"][i]
        pred = int(proba.argmax()) if len(classes) != 2 or record["threshold"] is None else \
            int(proba[1] >= record["threshold"])
        try:
            ax.imshow(thumbnail(root / str(p["path"][i])), cmap="gray")
        except Exception as exc:  # the image may have moved since training: say so in the grid
            ax.text(0.5, 0.5, f"cannot show:\n{type(exc).__name__}", ha="center", va="center", fontsize=7)
        ax.set_title(f"{Path(str(p['path'][i])).name[:28]}\ntrue {classes[p['y'][i]]}, "
                     f"said {classes[pred]} (p={proba[pred]:.3f})", fontsize=7)
        ax.axis("off")
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    return png(fig, plt)


def _heatmaps(plt, ranked, mistakes, limit: int, log):
    """Heatmaps of the best explainable method on its mistakes (or its first images)."""
    from ..artifacts.predictors import load
    from ..artifacts.explaining import LINEAR_HEADS, explain  # torch: only when heatmaps are asked for
    from .heatmaps import draw

    usable = [r for r in ranked if r["head"] == "finetune" or r["head"] in LINEAR_HEADS]
    reasons = []
    for r in usable:  # ranked is sorted best first; a linear head on ViT tokens has no exact map: the next one
        p = r["predictions"]
        root = Path(r.get("data_root") or ".")
        order = [i for i in mistakes if i < len(p["path"])] + list(range(len(p["path"])))
        chosen = list(dict.fromkeys(order))[:limit]
        try:
            model = load(r["artifact"])
            results = [(root / str(p["path"][i]), explain(model, root / str(p["path"][i]))) for i in chosen]
            break
        except FeatxError as exc:  # e.g. weights or images no longer available: the report still gets written
            reasons.append(f"{r['method']}: {exc}")
    else:
        if reasons:
            more = f" (and {len(reasons) - 1} more methods)" if len(reasons) > 1 else ""
            log(f"no heatmaps in the report: {reasons[0]}{more}")
        return None
    fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 3.6), constrained_layout=True,
                             squeeze=False)
    for ax, (path, res), i in zip(axes.flat, results, chosen):
        draw(ax, path, res, f"{path.name[:26]} (true {r['classes'][p['y'][i]]})\n"
                            f"evidence for {res['target']}: {res['proba'].max():.3f}")
    return (f"Where the evidence lies: {results[0][1]['method']}, {r['method']}", png(fig, plt))


# --- documents -----------------------------------------------------------------------------------

def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


FOOTNOTE = ("Metrics at each method's stored threshold, with stratified bootstrap 95% intervals. p-values compare "
            "each method with the best (highest ROC-AUC) on the same images: DeLong's test for ROC-AUC, McNemar's "
            "test for accuracy, each Holm-adjusted over its comparisons. Train seconds: selection and training only (feature extraction, shared by all heads "
            "of a backbone, is not included). Predict ms/img: the head alone for heads; the whole network for "
            "fine-tunes. Size: the artifact file.")


def markdown_document(title: str, records, figures, blocks=()) -> str:
    lines = [f"# {title}", "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(records, True)]
    lines += ["", best_note(records), "", shift_note(records), "", FOOTNOTE, ""]
    apart = [r for r in records if not r["ranked"]]
    if apart:
        lines += ["## Evaluated apart (not comparable with the ranking)", ""]
        lines += [f"- {r['method']}: {r['note']}" for r in apart]
        lines.append("")
    notes = [r for r in records if r["ranked"] and r["note"]]
    lines += [f"- {r['method']}: {r['note']}" for r in notes]
    for name, (caption, _) in figures.items():
        lines += ["", f"## {caption}", "", f"![{caption}]({name})"]
    for heading, text in blocks:
        lines += ["", f"## {heading}", "", "```", text, "```"]
    lines += ["", "```", format_table(records), "```", ""]
    return "\n".join(lines)


def html_document(title: str, records, figures, blocks=()) -> str:
    """A self-contained page: the body below with its style."""
    esc = html.escape
    style = ("body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1500px}"
             "table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ccc;padding:4px 7px;"
             "text-align:right;white-space:nowrap}th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}"
             "tbody tr:first-child{background:#eef6ee}.note{font-size:12px;color:#555;max-width:1100px}"
             "small{color:#666}.wide{overflow-x:auto}figure{margin:2em 0}img{max-width:100%;border:1px solid #eee}figcaption{font-size:13px;color:#444}")
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<style>{style}</style></head><body>{html_body(title, records, figures, blocks)}</body></html>\n")


def html_body(title: str, records, figures, blocks=()) -> str:
    """The report's content as HTML without a page or a style of its own (a notebook cell shows it as is):
    the table, its notes, the figures inline and the text blocks."""
    esc = html.escape

    def cell(text: str) -> str:
        value, _, ci = text.partition(" [")  # the interval goes on a second, smaller line
        return esc(value) + (f"<br><small>[{esc(ci)}</small>" if ci else "")

    def table(rows):
        head = "".join(f"<th>{esc(h)}</th>" for h in HEADER)
        body = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in row) + "</tr>" for row in rows)
        return f"<div class='wide'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"

    parts = [f"<h1>{esc(title)}</h1>", table(table_rows(records, True)),
             f"<p class='note'>{esc(best_note(records))}</p>", f"<p class='note'>{esc(shift_note(records))}</p>",
             f"<p class='note'>{esc(FOOTNOTE)}</p>"]
    notes = [r for r in records if r["ranked"] and r["note"]]
    if notes:
        parts.append("<ul>" + "".join(f"<li>{esc(r['method'])}: {esc(r['note'])}</li>" for r in notes) + "</ul>")
    apart = [r for r in records if not r["ranked"]]
    if apart:
        parts.append("<h2>Evaluated apart (not comparable with the ranking)</h2>")
        parts.append(table(table_rows(records, False)))
        parts.append("<ul>" + "".join(f"<li>{esc(r['method'])}: {esc(r['note'])}</li>" for r in apart) + "</ul>")
    for caption, image in figures.values():
        data = base64.b64encode(image).decode()
        parts.append(f"<figure><img alt='{esc(caption)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{esc(caption)}</figcaption></figure>")
    for heading, text in blocks:
        parts.append(f"<h2>{esc(heading)}</h2><pre>{esc(text)}</pre>")
    return "".join(parts)
