"""What `featx robustness` writes: robustness.csv, and the figure of ROC-AUC against severity, one panel
per corruption, one line per method."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._core.atomic import atomic_path, write_csv_atomic
from ..studies.measurements import COLUMNS, Robustness
from .figures import colours, png


def plot_robustness(plt, result) -> bytes:
    """PNG bytes of `result` (a studies.robustness.Robustness): severity 0 is the clean split; the
    last panel is the mean over corruptions. Shaded bands (up to four methods): 95% intervals."""
    panels = [*result.corruptions, "mean over corruptions"]
    cols = min(4, len(panels))
    lines = -(-len(panels) // cols)
    fig, axes = plt.subplots(lines, cols, figsize=(3.4 * cols, 2.7 * lines + 0.9), sharex=True, sharey=True,
                             squeeze=False, constrained_layout=True)
    severities = [0, *result.severities]
    palette = colours(plt, len(result.methods))
    lowest = 1.0
    for ax, panel in zip(axes.flat, panels):
        for k, method in enumerate(result.methods):
            auc, low, high = _curve(result, method, panel, severities)
            ax.plot(severities, auc, "o-", ms=3, lw=1.4, color=palette[k], label=method)
            if len(result.methods) <= 4 and not np.isnan(low).all():  # more bands hide the lines
                ax.fill_between(severities, low, high, color=palette[k], alpha=0.12, lw=0)
            lowest = min(lowest, np.nanmin(np.r_[auc, low]) if not np.isnan(auc).all() else lowest)
        ax.set_title(panel.replace("_", " "), fontsize=9)
        ax.grid(alpha=0.3)
        ax.axhline(0.5, ls=":", color="grey", lw=0.8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    floor = max(0.0, min(0.5, np.floor(lowest * 20) / 20 - 0.02))
    for ax in axes[:, 0]:
        ax.set_ylabel("ROC-AUC")
        ax.set_ylim(floor, 1.005)
    for ax in axes[-1, :]:
        ax.set_xlabel("severity (0: clean)")
        ax.set_xticks(severities)
    fig.suptitle(f"Robustness to corruption: ROC-AUC on the {result.split} split ({_n(result)} images)", fontsize=11)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(3, len(labels)), fontsize=8)
    return png(fig, plt)


def _curve(result, method: str, panel: str, severities: list[int]):
    """(AUC, low, high) at each severity of one method in one panel; the mean panel averages the
    corruptions' AUCs and has no interval."""
    def at(corruption, severity, key):
        corruption = "none" if severity == 0 else corruption
        found = [r[key] for r in result.rows if (r["method"], r["corruption"], r["severity"]) ==
                 (method, corruption, severity)]
        return np.nan if not found or found[0] is None else found[0]

    if panel != "mean over corruptions":
        return tuple(np.array([at(panel, s, key) for s in severities], float)
                     for key in ("roc_auc", "roc_auc_low", "roc_auc_high"))
    mean = np.array([np.nanmean([at(c, s, "roc_auc") for c in result.corruptions]) for s in severities])
    return mean, np.full(len(severities), np.nan), np.full(len(severities), np.nan)


def _n(result) -> str:
    counts = {r["n"] for r in result.rows if r["corruption"] == "none"}
    return str(counts.pop()) if len(counts) == 1 else "/".join(str(c) for c in sorted(counts))


def write_outputs(result: Robustness, out) -> dict:
    """robustness.csv (COLUMNS) and robustness.png (ROC-AUC against severity, a panel per corruption) in `out`."""
    from .._core.plotting import pyplot
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = {"csv": out / "robustness.csv"}
    write_csv_atomic(written["csv"], [{k: r[k] for k in COLUMNS} for r in result.rows])
    png = plot_robustness(pyplot(), result)
    with atomic_path(out / "robustness.png") as tmp:
        Path(tmp).write_bytes(png)
    written["png"] = out / "robustness.png"
    return written
