"""Heatmaps drawn: the image in gray with the map `featx explain` computed (artifacts.explaining) over the
part the model saw; `overlay` writes it as a PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._core.atomic import atomic_path
from .._core.plotting import pyplot
from ..data.images import load_image


def draw(ax, image, result: dict, title: str | None = None) -> None:
    """The image in gray with the heatmap over the part the model saw."""
    img = np.asarray(load_image(image).convert("L"))
    left, top, right, bottom = result["box"]
    outside = np.ones(result["heatmap"].shape, bool)
    outside[top:bottom, left:right] = False
    heat = np.ma.masked_array(result["heatmap"], mask=outside)
    ax.imshow(img, cmap="gray")
    ax.imshow(heat, cmap="jet", alpha=0.35, vmin=0, vmax=1)
    probs = ", ".join(f"{c} {p:.3f}" for c, p in zip(result["classes"], result["proba"]))
    ax.set_title(title or f"evidence for {result['target']}\n({probs})", fontsize=9)
    ax.axis("off")


def overlay(image, result: dict, out, *, title: str | None = None) -> Path:
    """Write the image with its heatmap on top (needs matplotlib: pip install 'featx[report]')."""
    plt = pyplot()

    h, w = result["heatmap"].shape
    fig, ax = plt.subplots(figsize=(6, 6 * h / w + 0.4), constrained_layout=True)
    draw(ax, image, result, title)
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return out
