"""What kind of file a path names, asked before it is opened: a FIFO, a socket or a device blocks or
never ends when read, so featx reads only regular files (and links to them) and gives a reason for the rest."""

from __future__ import annotations

import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .._core.hashing import file_sha1

_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"))


def not_regular(path) -> str | None:
    """Why `path` (followed through links) cannot be read as an image file, or None for a regular file
    and for a path that cannot be stat'ed (reading it then gives the system's own reason)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    return f"not a regular file: {kind}"


def sha1_of_files(paths, workers: int = 8) -> list[str]:
    """sha1 of each file's bytes ('' for files that cannot be read or are not regular), hashed by
    `workers` threads: hashlib releases the GIL, which helps on network disks."""
    paths = list(paths)
    if len(paths) < 2:
        return [file_sha1(p) for p in paths]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(file_sha1, paths))


def file_contents(root, paths: list[str], known: dict, skip=()) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(size, mtime_ns, sha1) of each file (`paths` relative to `root`): every file is stat'ed, and only
    those whose size or mtime differ from `known` (path -> (size, mtime_ns, sha1)) are hashed. Files that
    are gone, and those in `skip` (unreadable whatever happens, e.g. FIFOs), get -1, -1 and ''."""
    n = len(paths)
    size, mtime = np.full(n, -1, np.int64), np.full(n, -1, np.int64)
    sha1 = [""] * n
    to_hash = []
    for i, rel in enumerate(paths):
        if rel in skip:
            continue
        try:
            st = os.stat(Path(root) / rel)
        except OSError:
            continue  # gone since listing: reading it later gives the reason
        size[i], mtime[i] = st.st_size, st.st_mtime_ns
        prev = known.get(rel)
        if prev is not None and prev[0] == st.st_size and prev[1] == st.st_mtime_ns and prev[2]:
            sha1[i] = prev[2]
        else:
            to_hash.append(i)
    for i, digest in zip(to_hash, sha1_of_files(Path(root) / paths[i] for i in to_hash)):
        sha1[i] = digest
    return size, mtime, sha1
