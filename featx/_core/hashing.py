"""Digests, each computed one way: of files, of JSON-able records, of lists of lines."""

from __future__ import annotations

import hashlib
import json
import os
import stat


def file_digest(path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in 1 MiB blocks (raises OSError if unreadable)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha1(path) -> str:
    """sha1 of a file's bytes, the name featx gives an image's content; '' if it cannot be read or is
    not a regular file (a FIFO would block the read forever)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return ""
        return file_digest(path, "sha1")
    except OSError:
        return ""


def bytes_sha1(raw: bytes) -> str:
    return hashlib.sha1(raw).hexdigest()


def record_hash(record, length: int = 64) -> str:
    """A short, stable name for a JSON-able record (dict keys sorted): caches, runs and artifacts."""
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:length]


def lines_hash(lines, *, ordered: bool = True) -> str:
    """sha256 of text lines; `ordered=False` names the set of lines, whatever their order."""
    lines = list(lines) if ordered else sorted(lines)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def images_fingerprint(items) -> str:
    """Names an exact set of images, (relative path, sha1 of bytes) pairs, whatever their order."""
    return lines_hash((f"{p}\t{h}" for p, h in items), ordered=False)
