"""What featx takes from DICOM headers: each file's patient, as a keyed hash, and two facts for the log.

The patient is the PatientID tag, else StudyInstanceUID, hashed with HMAC-SHA256 under a random
key made once per dataset and kept in its cache folder (`dicom-group-key`), never inside a cache
file: a cache, a split file or a log holds only hashes, and whoever holds a shared cache cannot
recover short IDs (MRNs) by trying them all. No other header field is kept. What was read is
remembered per file (`dicom-headers.json`, by size and mtime), so a command re-reads only the
files that changed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path
from typing import NamedTuple

from .._core.atomic import write_text_atomic

GROUP_KEY_FILE = "dicom-group-key"
HEADERS_FILE = "dicom-headers.json"
HEADERS_VERSION = 1  # of what HEADERS_FILE holds per file
GROUP_TAGS = ("PatientID", "StudyInstanceUID")


class HeaderFacts(NamedTuple):
    group: str | None  # "patient-<hash>" or "study-<hash>"; None without either tag or when unreadable
    multi_frame: bool  # featx reads the first frame
    no_window: bool  # grayscale without a VOI LUT or window: the default window is the min-max


def read_facts(path, key: bytes) -> HeaderFacts:
    """The facts of one file's header (no pixels read); unreadable files give no group."""
    import pydicom

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[
            *GROUP_TAGS, "NumberOfFrames", "PhotometricInterpretation", "WindowCenter", "VOILUTSequence"])
    except Exception:  # not DICOM, or unreadable: its group falls back to the file name
        return HeaderFacts(None, False, False)
    group = None
    for tag, kind in zip(GROUP_TAGS, ("patient", "study")):
        value = str(header.get(tag, "") or "").strip()
        if value:
            group = f"{kind}-{hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:16]}"
            break
    gray = str(header.get("PhotometricInterpretation", "MONOCHROME2")).startswith("MONOCHROME")
    return HeaderFacts(group, int(header.get("NumberOfFrames", 1) or 1) > 1,
                       gray and "WindowCenter" not in header and "VOILUTSequence" not in header)


def header_facts(root: Path, paths: list[str], folder: Path) -> tuple[list[HeaderFacts], bytes]:
    """The facts of each file (paths relative to `root`), read only for files new or changed since the
    last call with this `folder`; and the dataset's key."""
    key = group_key(folder)
    record = Path(folder) / HEADERS_FILE
    known = _known(record, key)
    facts, changed = [], False
    for rel in paths:
        try:
            st = os.stat(Path(root) / rel)
        except OSError:
            facts.append(HeaderFacts(None, False, False))
            continue
        entry = known.get(rel)
        if entry and entry[:2] == [st.st_size, st.st_mtime_ns]:
            facts.append(HeaderFacts(*entry[2:]))
            continue
        found = read_facts(Path(root) / rel, key)
        known[rel], changed = [st.st_size, st.st_mtime_ns, *found], True
        facts.append(found)
    if changed:
        write_text_atomic(record, json.dumps({"version": HEADERS_VERSION, "key": key_id(key), "files": known}))
    return facts, key


def _known(record: Path, key: bytes) -> dict:
    """The remembered facts, if made with this key and version (else none: all are read again)."""
    try:
        saved = json.loads(record.read_text())
    except (OSError, ValueError):
        return {}
    fits = isinstance(saved, dict) and saved.get("version") == HEADERS_VERSION and saved.get("key") == key_id(key)
    return dict(saved.get("files", {})) if fits else {}


def group_key(folder: Path) -> bytes:
    """The dataset's secret for hashing patient IDs, made once (random, 32 bytes) and kept in `folder`."""
    path = Path(folder) / GROUP_KEY_FILE
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, secrets.token_hex(32))
        os.chmod(path, 0o600)
    return path.read_bytes().strip()


def key_id(key: bytes) -> str:
    """Names a key without revealing it, so that caches can say which key hashed their groups."""
    return hashlib.sha256(b"featx-group-key:" + key).hexdigest()[:12]
