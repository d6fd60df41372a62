"""Label budgets for learning curves (the base of `featx study`, #25): which training images a method may
see when it is given n labels.

For each repeat, the pool's patient groups are put in one seeded order: `min_groups` rounds of one
patient of each class, then the class furthest below its share of the pool each time, so every start
of the order holds every class and keeps the pool's proportions as it grows; the subset of size n is the longest start of that order holding at most
n images. So subsets are made of whole patient groups (no patient on both sides of a cut made inside
them), stratified by class, nested (the n = 50 subset of a repeat lies inside its n = 100 subset) and
reproducible from (seed, repeat). Every subset holds at least `min_groups` patients of each class,
so a head can still cross-validate by patient inside it; a size too small for that is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._core.errors import FeatxError


@dataclass(frozen=True)
class Budget:
    """One subset: its nominal size (None: the whole pool), its repeat, and its rows of the pool."""

    n: int | None
    repeat: int
    rows: np.ndarray

    @property
    def n_images(self) -> int:
        return len(self.rows)


def label_budgets(labels, groups, sizes, *, repeats: int = 3, seed: int = 0, min_groups: int = 2,
                  classes=None) -> list[Budget]:
    """Budget per (size, repeat), sizes ascending then "all" (None) once per repeat. `labels`: class index
    per pool image; `groups`: patient group per image; `classes`: names for messages."""
    labels, groups = np.asarray(labels), np.asarray(groups).astype(str)
    sizes = _checked_sizes(sizes, len(labels))
    if repeats < 1:
        raise FeatxError(f"--repeats must be at least 1, not {repeats}")
    out = []
    for repeat in range(repeats):
        order = _group_order(labels, groups, np.random.default_rng([seed, repeat]), min_groups)
        for n in sizes:
            rows = _rows_within(order, n, len(labels))
            _check_holds_classes(labels[rows], groups[rows], labels, n, min_groups, classes)
            out.append(Budget(n, repeat, np.sort(rows)))
    return out


def _checked_sizes(sizes, pool: int) -> list[int | None]:
    """Distinct sizes, ascending, "all" (or None) last; each a positive number no larger than the pool."""
    parsed = []
    for size in sizes:
        if size in (None, "all"):
            parsed.append(None)
            continue
        if not isinstance(size, (int, np.integer)) or size < 1:
            raise FeatxError(f"--train-sizes takes positive numbers of images or 'all', not {size!r}")
        if size > pool:
            raise FeatxError(f"--train-sizes {size} is larger than the pool of {pool} labelled training images; "
                             "use 'all' for the whole pool")
        parsed.append(int(size))
    if not parsed:
        raise FeatxError("--train-sizes names no size")
    numbers = sorted(set(s for s in parsed if s is not None))
    return numbers + ([None] if None in parsed else [])


def _group_order(labels: np.ndarray, groups: np.ndarray, rng: np.random.Generator,
                 rounds: int) -> list[np.ndarray]:
    """The pool's groups (as row arrays) in one order: each class's groups shuffled; `rounds` rounds of one
    group per class, then each time a group of the class furthest below its share so far."""
    names, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(names))]
    majority = np.array([np.bincount(labels[m]).argmax() for m in members])
    queues = {c: list(rng.permutation(np.flatnonzero(majority == c))) for c in np.unique(majority)}
    share = {c: float(np.mean(labels == c)) for c in queues}
    taken = {c: 0 for c in queues}
    order, total = [], 0
    first = [c for _ in range(rounds) for c in queues]
    while any(queues.values()):
        open_classes = [c for c in queues if queues[c]]
        while first and not queues[first[0]]:
            first.pop(0)
        c = first.pop(0) if first else min(open_classes, key=lambda k: (taken[k] - share[k] * total, k))
        rows = members[queues[c].pop(0)]
        order.append(rows)
        taken[c] += len(rows)
        total += len(rows)
    return order


def _rows_within(order: list[np.ndarray], n: int | None, pool: int) -> np.ndarray:
    """The rows of the longest start of `order` holding at most n images (all of them for None)."""
    limit = pool if n is None else n
    chosen, count = [], 0
    for rows in order:
        if count + len(rows) > limit:
            break
        chosen.append(rows)
        count += len(rows)
    return np.concatenate(chosen) if chosen else np.empty(0, int)


def _check_holds_classes(labels: np.ndarray, groups: np.ndarray, pool_labels: np.ndarray, n, min_groups: int,
                         classes) -> None:
    """Refuse a subset that lacks a class, or holds fewer than `min_groups` patients of one."""
    for c in np.unique(pool_labels):
        patients = len(set(groups[labels == c].tolist()))
        if patients < min_groups:
            name = classes[c] if classes is not None else f"class {c}"
            raise FeatxError(f"--train-sizes {n or 'all'}: a subset of {n or len(pool_labels)} images holds {patients} {name} patient(s); "
                             f"choosing a head by patient-grouped CV inside it needs at least {min_groups} "
                             "of each class: use a larger size")


def held_out(budget: Budget, labels, groups, fraction: float = 0.2, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A budget's rows as (train, validation), the validation part whole patients of each class, about
    `fraction` of the class's images and at least one patient: how a fine-tune on n labels early-stops
    and chooses its threshold on images of those n, never on the evaluation split. Seeded by (seed, repeat, n)."""
    labels, groups = np.asarray(labels)[budget.rows], np.asarray(groups).astype(str)[budget.rows]
    rng = np.random.default_rng([seed, budget.repeat, budget.n or 0, 1])
    val = np.zeros(len(budget.rows), bool)
    for c in np.unique(labels):
        names = rng.permutation(np.unique(groups[labels == c]))
        want = fraction * np.sum(labels == c)
        for name in names[:-1]:  # the last patient of a class always stays in train
            val |= (groups == name) & (labels == c)
            if np.sum(val & (labels == c)) >= want:
                break
    val |= np.isin(groups, groups[val])  # a patient with images of several classes stays whole
    return budget.rows[~val], budget.rows[val]


def size_order(n) -> tuple:
    """The sort key of a budget's size as tables and verdicts list them: numbers ascending, "all" last."""
    return (n == "all", n if n != "all" else 0)
