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


def target_verdict(records: list[dict], shifts: list[dict], split: str | None) -> list[str]:
    """The verdict at a target site: the shift to it per backbone, then the same verdict on its labelled images
    (each unit's scores there), and whether the leader differs from the evaluation split's."""
    lines = [f"Shift from train to the target site: domain AUC {s['auc']:.3f} [{s['ci'][0]:.3f}, {s['ci'][1]:.3f}] on "
             f"{s['backbone']} features (0.5: no shift visible; 1: every image betrays its site)." for s in shifts]
    at = [{**r, **r["target"]} for r in records if r.get("target")]
    adapted = sorted({r["method_id"].adapted for r in records if r.get("method_id") and r["method_id"].adapted})
    if not at:
        if adapted:
            lines.append(f"Adapted without target labels ({', '.join(adapted)}): whether any adaptation helps at the "
                         "target cannot be checked until some target images are labelled; the figures above are on "
                         f"the {split} split, not at the target.")
        return lines
    site, k = at[0]["site"], len(at[0]["y"])
    lines.append(f"At the target site {site} ({k} labelled images; none trained on, none chose anything):")
    lines += [f"  {line}" for line in verdict(at) if not line.startswith("p: ")]
    lines += _leaders(records, at, split, site)
    return lines


def _leaders(records: list[dict], at: list[dict], split: str | None, site: str) -> list[str]:
    """Whether the method leading on the evaluation split leads at the target too, at the largest size both
    have; where they differ, whether the target's leader is significantly ahead, and whether any method there
    is better than chance."""
    sizes = sorted({r["n"] for r in at}, key=size_order)
    if not sizes:
        return []
    n = sizes[-1]
    here, there = _cell_rows(records, n), _cell_rows(at, n)
    if len(here) < 2 or len(there) < 2:
        return []
    first, best = max(here, key=lambda m: _auc(here[m])), max(there, key=lambda m: _auc(there[m]))
    chance = all(r.get("roc_auc_low") is not None and r["roc_auc_low"] <= 0.5 for r in there[best])
    caveat = (f" No method is better than chance at {site} (the leader's ROC-AUC interval holds 0.5); its own "
              "labels are needed there." if chance else "")
    if first == best:
        return [f"At n={n} the same method leads on the {split} split and at {site}: {first}." + caveat]
    test = contrast(there[first], there[best], whole_pool=_whole_pool(n, there, at))
    return [f"At n={n} the leader differs: {first} on the {split} split, {best} at {site} "
            f"(ahead there by {_auc(there[best]) - _auc(there[first]):.3f}, {_p(test.p, test.why)})." + caveat]


def _cell_rows(records: list[dict], n) -> dict:
    """method -> its records at size n that have a ROC-AUC."""
    out = defaultdict(list)
    for r in records:
        if r["n"] == n and r.get("roc_auc") is not None:
            out[r["method"]].append(r)
    return out


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
