"""Label budgets (featx.data.budgets): whole patients, stratified, nested, seeded, and refused in one line."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from featx import FeatxError
from featx.data.budgets import label_budgets


def _pool(sizes_per_class):
    """labels and groups of a pool: per class, patients with the given numbers of images."""
    labels, groups = [], []
    for c, sizes in enumerate(sizes_per_class):
        for p, k in enumerate(sizes):
            labels += [c] * k
            groups += [f"c{c}p{p}"] * k
    return np.array(labels), np.array(groups)


pools = st.lists(st.lists(st.integers(1, 4), min_size=3, max_size=40), min_size=2, max_size=3)


@given(pools, st.integers(0, 3))
def test_subsets_are_whole_patients_nested_and_stratified(per_class, seed):
    labels, groups = _pool(per_class)
    pool = len(labels)
    smallest = 4 * 2 * len(per_class)  # two rounds of one patient per class, of at most 4 images each
    sizes = sorted({s for s in (smallest, pool // 2, pool) if smallest <= s <= pool} or {pool})
    budgets = label_budgets(labels, groups, [*sizes, "all"], repeats=2, seed=seed)
    for repeat in (0, 1):
        mine = [b for b in budgets if b.repeat == repeat]
        assert [b.n for b in mine] == [*sizes, None] and len(mine[-1].rows) == pool
        for small, large in zip(mine, mine[1:]):
            assert set(small.rows) <= set(large.rows)  # nested
        for b in mine:
            held = set(groups[b.rows])
            assert all(set(np.flatnonzero(np.isin(groups, [g]))) <= set(b.rows) for g in held)  # whole patients
            assert b.n is None or b.n - 4 < b.n_images <= b.n
            for c in range(len(per_class)):  # each class within one patient's images of its pool share
                share, pool_share = np.mean(labels[b.rows] == c), np.mean(labels == c)
                assert abs(share - pool_share) <= 4 * len(per_class) / b.n_images


def test_repeats_differ_and_the_seed_reproduces_them():
    labels, groups = _pool([[2] * 30, [3] * 30])
    first = label_budgets(labels, groups, [40], repeats=2, seed=7)
    again = label_budgets(labels, groups, [40], repeats=2, seed=7)
    assert all(np.array_equal(a.rows, b.rows) for a, b in zip(first, again))
    assert not np.array_equal(first[0].rows, first[1].rows)


def test_bad_sizes_are_one_line():
    labels, groups = _pool([[2] * 10, [2] * 10])
    with pytest.raises(FeatxError, match="larger than the pool of 40"):
        label_budgets(labels, groups, [50])
    with pytest.raises(FeatxError, match="holds 1 PNEUMONIA patient|holds 1 NORMAL patient|holds 0"):
        label_budgets(labels, groups, [3], classes=["NORMAL", "PNEUMONIA"])
    with pytest.raises(FeatxError, match="positive numbers"):
        label_budgets(labels, groups, [0])
