"""Where featx's progress lines go: stderr, through tqdm so that they do not break a progress bar."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def log_line(message: str) -> None:
    tqdm.write(message, file=sys.stderr)
