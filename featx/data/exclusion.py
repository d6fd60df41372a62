"""`--exclude FILE`: training images not to train on (e.g. the labels featx audit flagged), as one value.

The file is a CSV with a `path` column (featx audit's own output is one) or a text file with one path per
line, paths as featx lists them (relative to the data folder). Every path must be a train image of the
data: a path featx does not know is refused, and so is an image of a split that evaluates or chooses
(val, test): those are never cleaned. What a model or study unit learned from changes with the list, so
its identity holds the list's fingerprint (the sorted paths), never the file's name.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

from .._core.errors import FeatxError


@dataclass(frozen=True)
class Exclusion:
    """Train images left out, by path; `source` names the file for people only."""

    paths: frozenset[str]
    source: str = ""

    @property
    def key(self) -> str:
        """The fingerprint of the list: the same paths give the same key, whatever the file is called."""
        return hashlib.sha256("\n".join(sorted(self.paths)).encode()).hexdigest()[:16]

    def record(self) -> dict:
        return {"images": len(self.paths), "sha256": self.key, "file": Path(self.source).name}

    def describe(self) -> str:
        return f"{len(self.paths)} train images excluded by {Path(self.source).name}"

    @classmethod
    def read(cls, file, paths, splits) -> "Exclusion | None":
        """The exclusion `file` names, checked against a dataset's `paths` and their `splits`; None for no file."""
        if file is None:
            return None
        if isinstance(file, Exclusion):
            named = set(file.paths)
            source = file.source
        else:
            named, source = _paths_in(Path(file)), str(file)
        where = dict(zip(paths, splits))
        unknown = sorted(p for p in named if p not in where)
        if unknown:
            raise FeatxError(f"--exclude {Path(source).name}: {len(unknown)} paths are not images of this data "
                             f"(e.g. {unknown[0]}); name them as featx lists them, relative to the data folder")
        judged = sorted(p for p in named if where[p] != "train")
        if judged:
            raise FeatxError(f"--exclude {Path(source).name}: {len(judged)} paths are {where[judged[0]]} images (e.g. "
                             f"{judged[0]}); only train images can be excluded: the images that evaluate stay as "
                             "they are")
        return cls(frozenset(named), source)


def _paths_in(file: Path) -> set[str]:
    """The paths a CSV (with a `path` column) or a text file (one per line) names."""
    try:
        text = file.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise FeatxError(f"--exclude: file not found: {file}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FeatxError(f"--exclude: cannot read {file}: {exc}") from None
    lines = text.splitlines()
    if lines and "path" in [c.strip().lower() for c in next(csv.reader([lines[0]]))]:
        rows = csv.DictReader(lines)
        column = next(c for c in rows.fieldnames if c.strip().lower() == "path")
        named = {(row[column] or "").strip() for row in rows}
    else:
        named = {line.strip() for line in lines}
    named.discard("")
    if not named:
        raise FeatxError(f"--exclude {file.name} names no image")
    return named
