"""Which images a method was evaluated on, as one value: compare, the study's verdict and its recipe gains
ask "the same images?" of it alone, and the split a model is judged on is chosen here alone.

Two evaluations are on the same images when their (relative path, sha1 of the bytes) pairs are the same
set: a renamed file or a re-encoded one is another image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._core.errors import FeatxError
from .._core.hashing import images_fingerprint

EVALUATED = ("test", "val")  # the splits a model is judged on, the first present first


def evaluation_split(present, asked: str | None = None, *, where: str = "the data") -> str:
    """The split to evaluate on: `asked`, else test when there is one, else val; train never."""
    present = set(present)
    if asked == "train":
        raise FeatxError("--eval-split train: the evaluation split must be one no budget is drawn from (test or val)")
    chosen = asked or next((s for s in EVALUATED if s in present), "val")
    if chosen not in present:
        hint = "" if asked else "; cut one from train with --val-fraction 0.2"
        raise FeatxError(f"{where} has no {chosen} split to evaluate on{hint}")
    return chosen


def judged_splits(present) -> list[str]:
    """The evaluated splits among `present`, in the order a card or a comparison shows them."""
    return [s for s in EVALUATED if s in set(present)]


@dataclass(frozen=True)
class EvaluationSet:
    """A split's images: names and contents, in any order."""

    split: str
    paths: tuple[str, ...]
    sha1s: tuple[str, ...]

    @classmethod
    def of(cls, split: str, paths, sha1s) -> EvaluationSet:
        return cls(split, tuple(map(str, paths)), tuple(map(str, sha1s)))

    @property
    def key(self) -> str:
        """Names the set of images: equal keys, the same images."""
        return images_fingerprint(zip(self.paths, self.sha1s))

    def order(self) -> np.ndarray:
        """Rows in path order: predictions of the same images line up."""
        return np.argsort(np.asarray(self.paths), kind="stable")
