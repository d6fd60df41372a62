"""Figures of a split shift (`featx shift`): the 2-D map of both splits, and the images most unlike the first."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._core.atomic import atomic_path
from .figures import png, thumbnail

MARKERS = "o^sDvP*X"


def shift_map(plt, embedding: dict, splits, classes, unlike_paths=(), auc=None) -> bytes:
    """Both splits on the map (colour: split; marker: class); the images most unlike the first split ringed."""
    fig, ax = plt.subplots(figsize=(7.5, 6.2), constrained_layout=True)
    xy, which, label = embedding["xy"], embedding["split"], embedding["label"]
    colours = ("tab:blue", "tab:orange")
    for s, split in enumerate(splits):
        for c, name in enumerate(classes):
            rows = (which == s) & (label == c)
            if rows.any():
                ax.scatter(xy[rows, 0], xy[rows, 1], s=9 if len(xy) > 2000 else 16, alpha=0.55, lw=0,
                           color=colours[s], marker=MARKERS[c % len(MARKERS)], label=f"{split} {name} ({rows.sum()})")
    ringed = np.isin(embedding.get("path", np.array([], str)), list(unlike_paths)) & (which == 1)
    if ringed.any():
        ax.scatter(xy[ringed, 0], xy[ringed, 1], s=70, facecolors="none", edgecolors="black", lw=1.0,
                   label=f"{splits[1]} images most unlike {splits[0]}")
    score = "" if auc is None else f"; domain AUC {auc:.3f}"
    ax.set_title(f"{splits[0]} vs {splits[1]}: {embedding['method']} of the features{score}", fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=8, loc="best", markerscale=1.5)
    return png(fig, plt)


def unlike_grid(plt, root: Path, unlike, splits, limit: int = 8) -> bytes | None:
    """Thumbnails of the second split's images farthest from the first (`Shift.unlike` rows)."""
    unlike = list(unlike)[:limit]
    if not unlike:
        return None
    cols = min(4, len(unlike))
    lines = -(-len(unlike) // cols)
    fig, axes = plt.subplots(lines, cols, figsize=(3 * cols, 3.2 * lines), constrained_layout=True, squeeze=False)
    for ax, (path, _, ratio) in zip(axes.flat, unlike):
        try:
            ax.imshow(thumbnail(Path(root) / path), cmap="gray")
        except Exception as exc:  # moved or unreadable since: say so in the grid
            ax.text(0.5, 0.5, f"cannot show:\n{type(exc).__name__}", ha="center", va="center", fontsize=7)
        ax.set_title(f"{Path(path).name[:30]}\n{ratio:.2f}x the typical distance", fontsize=7)
        ax.axis("off")
    for ax in list(axes.flat)[len(unlike):]:
        ax.axis("off")
    fig.suptitle(f"{splits[1]} images most unlike {splits[0]} (nearest-neighbour distance in the features)",
                 fontsize=10)
    return png(fig, plt)


def shift_figures(plt, found: dict, splits, classes, root) -> dict:
    """{file name: (caption, png)} for a recorded shift (`studies.shift.recorded_shift`'s record)."""
    figures = {}
    tag = "-".join(splits)
    if found.get("embedding") is not None:
        figures[f"shift-{tag}.png"] = (
            f"Where the {splits[1]} images lie among the {splits[0]} images ({str(found['embedding']['method'])})",
            shift_map(plt, found["embedding"], splits, classes, [u[0] for u in found.get("unlike", [])], found["auc"]))
    grid = unlike_grid(plt, root, found.get("unlike", []), splits) if root else None
    if grid:
        figures[f"shift-{tag}-unlike.png"] = (f"The {splits[1]} images most unlike {splits[0]}", grid)
    return figures


def write_shift_figures(plt, result, out) -> list[Path]:
    """The map and the thumbnails of a `studies.shift.Shift` as PNG files in `out`."""
    record = {**result.record(), "embedding": result.embedding}
    figures = shift_figures(plt, record, result.splits, result.classes, result.data_root)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, (_, image) in figures.items():
        with atomic_path(out / name) as tmp:
            Path(tmp).write_bytes(image)
    return [out / name for name in figures]
