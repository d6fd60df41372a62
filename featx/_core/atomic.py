"""Atomic file writes: a file is either its old complete version or its new complete version.

Write to a temporary file in the same folder, fsync, then os.replace. A kill or a full disk
mid-write leaves the old file untouched and, at worst, a stray `*.tmp-<pid>` file.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import os
from pathlib import Path

from .errors import FeatxError


@contextlib.contextmanager
def atomic_path(target):
    """Yield a temporary path to write; on success it replaces `target` in one step."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except OSError as exc:
        _remove(tmp)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise FeatxError(f"no space left on the device writing {target}; the previous version is unchanged") from None
        raise
    except BaseException:
        _remove(tmp)
        raise


def write_text_atomic(target, text: str) -> None:
    with atomic_path(target) as tmp:
        Path(tmp).write_text(text)


def write_csv_atomic(target, rows: list[dict]) -> None:
    """Rows of dicts as a CSV file with a header (the first row's keys)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(target, buffer.getvalue())


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can open a directory
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
