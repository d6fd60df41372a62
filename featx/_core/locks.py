"""One writer per cache: a lock file held for the whole run, released by the OS if the process dies."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .errors import FeatxError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent writers are the user's responsibility
    fcntl = None


@contextlib.contextmanager
def exclusive_lock(target, *, wait: bool = False):
    """Hold `<target>.lock` exclusively, or refuse at once with a clear message; with `wait`, wait for
    the holder to finish instead (for short critical sections, such as cutting a split)."""
    lock_path = Path(f"{target}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(lock_path, "a+")
    try:
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                handle.seek(0)
                owner = handle.read().strip() or "another process"
                raise FeatxError(f"{target} is being written by {owner}; wait for it to finish, then re-run") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"featx pid {os.getpid()}")
        handle.flush()
        yield
    finally:
        handle.close()
