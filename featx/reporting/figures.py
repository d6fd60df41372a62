"""What every featx figure shares: PNG bytes from a figure, distinct colours, image thumbnails."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np


def png(fig, plt) -> bytes:
    """The figure as PNG bytes (100 dpi), closed afterwards."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def colours(plt, n: int) -> list:
    """Distinct colours: matplotlib's default ten, or tab20 beyond that."""
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i) for i in range(n)]


def thumbnail(path: Path, side: int = 256) -> np.ndarray:
    """A grayscale thumbnail of an image file."""
    from ..data.images import load_image

    img = load_image(path).convert("L")
    img.thumbnail((side, side))
    return np.asarray(img)
