"""A study's verdict: at each label budget, which method leads and whether its lead is significant, and for
each method the labels it needs to come within 0.01 ROC-AUC of its own full-data value (of its value at
its largest size, for a method not run on the whole pool).

The test compares the mean ROC-AUC over the repeats (studies.pairing): its variance holds which images were
evaluated (DeLong for two classes, a paired bootstrap of the macro one-vs-rest ROC-AUC for more) and which
were drawn (the spread of the per-repeat differences), so a lead that a new draw of the budgets would erase
is not called significant. The leader is tested against every other method, Holm-adjusted over them. A
comparison that cannot be made says why (other evaluation images; a single draw).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from ..data.budgets import size_order
from ..evaluation.significance import holm
from .pairing import contrast

WITHIN = 0.01  # "labels needed": the smallest n within this of the method's ROC-AUC at its largest size


def verdict(records: list[dict]) -> list[str]:
    """The verdict paragraph, one line per size and one for the labels needed."""
    cells = defaultdict(list)
    for r in records:
        cells[(r["n"], r["method"])].append(r)
    sizes = sorted({n for n, _ in cells}, key=size_order)
    lines = []
    for n in sizes:
        here = {m: rows for (size, m), rows in cells.items() if size == n and _auc(rows) is not None}
        if len(here) < 2:
            continue
        ranked = sorted(here, key=lambda m: -_auc(here[m]))
        leader, others = ranked[0], ranked[1:]
        tests = [contrast(here[m], here[leader], whole_pool=_whole_pool(n, here, records)) for m in others]
        p = holm([t.p for t in tests])
        parts = [f"{m} by {_auc(here[leader]) - _auc(here[m]):.3f} ({_p(q, t.why)})"
                 for m, q, t in zip(others, p, tests)]
        lines.append(f"n={n} ({_images(here)}): {leader} leads, ROC-AUC {_auc(here[leader]):.3f} "
                     f"(mean of {len(here[leader])}); ahead of " + ", ".join(parts) + ".")
    tested = bool(lines)  # a size with two methods or more: its p-values need their line below
    needed = labels_needed(cells, sizes)
    if needed:
        lines.append(f"Labels needed (the smallest n within {WITHIN} ROC-AUC of the method's value at its largest n): "
                     + "; ".join(needed) + ".")
    if tested:
        lines.append("p: the difference of mean ROC-AUC over the repeats, against the variation of which images "
                     "were evaluated (DeLong for two classes, a paired bootstrap of the macro one-vs-rest ROC-AUC for "
                     "more) plus that of which images were drawn (the per-repeat differences' spread); Holm-adjusted "
                     "over the methods behind the leader.")
    return lines


def labels_needed(cells: dict, sizes: list) -> list[str]:
    """'method: n (its AUC there, of its AUC at its largest size)' for each method."""
    out = []
    for method in sorted({m for _, m in cells}):
        measured = [n for n in sizes if _auc(cells.get((n, method), [])) is not None]
        if not measured:
            continue
        full = _auc(cells[(measured[-1], method)])
        peak = max(measured, key=lambda n: _auc(cells[(n, method)]))
        if _auc(cells[(peak, method)]) > full + WITHIN:
            out.append(f"{method}: not defined, its curve is not monotone (it peaks at n={peak} with "
                       f"{_auc(cells[(peak, method)]):.3f}, above its {full:.3f} at n={measured[-1]})")
            continue
        n = next(n for n in measured if _auc(cells[(n, method)]) >= full - WITHIN)
        out.append(f"{method}: {n} ({_auc(cells[(n, method)]):.3f}, of {full:.3f} at n={measured[-1]})")
    return out


def _whole_pool(n, here: dict, records: list[dict]) -> bool:
    """Whether the units at size n trained on the whole pool (n = all, or a size as large), so no draw varies."""
    pool = {r["n_images"] for r in records if r["n"] == "all"}
    return n == "all" or (bool(pool) and {r["n_images"] for rows in here.values() for r in rows} <= pool)


def _images(here: dict) -> str:
    """How many labelled images the units at one size saw: one number, or the range where draws differ."""
    counts = sorted({int(r["n_images"]) for rows in here.values() for r in rows})
    return f"{counts[0]} images" if len(counts) == 1 else f"{counts[0]}-{counts[-1]} images"


def _auc(rows: list[dict]) -> float | None:
    values = [r["roc_auc"] for r in rows if r.get("roc_auc") is not None]
    return float(np.mean(values)) if values else None


def _p(p: float | None, why: str | None) -> str:
    if p is None:
        return f"not tested: {why}"
    if p < 0.001:
        return "p<0.001"
    return f"p={p:.3f}" + ("" if p < 0.05 else ", not significant")
