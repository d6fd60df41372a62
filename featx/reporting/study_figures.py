"""What `featx study` shows: a summary table that fits a terminal, and the learning curves (ROC-AUC and
balanced accuracy against the number of labelled images, log axis, one line per method)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from .._core.atomic import atomic_path
from .figures import colours, png


def by_method(records: list[dict]) -> dict[str, list[tuple]]:
    """method -> [(mean images, mean AUC, band low, band high, mean balanced accuracy, its min, its max,
    mean fit seconds, repeats)] by size, ascending. The AUC band spans every repeat's 95% bootstrap interval,
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
                            len(rows)))
    return {m: sorted(v) for m, v in out.items()}


def study_lines(records: list[dict]) -> list[str]:
    """One row per method and size, within 100 columns."""
    lines = [f"{'method':<36} {'images':>7} {'ROC-AUC (band over repeats)':>29} {'bal. acc':>9} {'fit s':>6}"]
    for method, rows in by_method(records).items():
        for images, auc, low, high, bal, *_, seconds, repeats in rows:
            shown = "–" if auc is None else f"{auc:.3f} [{low:.3f}, {high:.3f}]"
            lines.append(f"{method[:36]:<36} {images:>7.0f} {shown:>29} {bal:>9.3f} {seconds:>6.1f}")
    return lines


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
    sizes = sorted({round(r[0]) for rows in methods.values() for r in rows})
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


def write_study_outputs(records: list[dict], out) -> Path:
    """learning_curves.png beside study.csv in `out`."""
    from .._core.plotting import pyplot

    target = Path(out) / "learning_curves.png"
    with atomic_path(target) as tmp:
        Path(tmp).write_bytes(plot_learning_curves(pyplot(), records))
    return target
