"""Where featx's progress goes: lines and bars on stderr, through tqdm so that one does not break the other."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def log_line(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


def silent(message: str) -> None:
    """The log of a process that does not speak (torchrun ranks above 0, quiet API calls)."""


def progress_bar(total: int, enabled: bool, **options) -> tqdm:
    """A bar on stderr when `enabled` and stderr is a terminal; a no-op otherwise."""
    return tqdm(total=total, disable=None if enabled else True, dynamic_ncols=True, file=sys.stderr, **options)


def counted(n: int, noun: str) -> str:
    """"1 unit", "3 units": a count in words (regular plurals)."""
    return f"{n} {noun}" + ("" if n == 1 else "s")
