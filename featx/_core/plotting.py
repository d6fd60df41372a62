"""matplotlib, an optional dependency, loaded one way for every plot featx draws."""

from __future__ import annotations

from .errors import FeatxError


def pyplot():
    """matplotlib's pyplot on the file-only backend, or one clear line saying how to get it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise FeatxError("plots need matplotlib: pip install 'featx[report]'") from None
    return plt
