"""What kind of file a path names, asked before it is opened: a FIFO, a socket or a device blocks or
never ends when read, so featx reads only regular files (and links to them) and gives a reason for the rest."""

from __future__ import annotations

import os
import stat

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
    from concurrent.futures import ThreadPoolExecutor

    from .._core.hashing import file_sha1

    paths = list(paths)
    if len(paths) < 2:
        return [file_sha1(p) for p in paths]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(file_sha1, paths))
