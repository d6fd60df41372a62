"""Where featx puts things by default, and names safe to use in file names."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    return Path(os.environ.get("FEATX_CACHE_DIR", "cache"))


def file_safe(name: str) -> str:
    """A backbone name usable in a file name (timm:x -> timm_x)."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
