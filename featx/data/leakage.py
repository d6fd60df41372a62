"""The same image twice: in two splits (a model tested on what it was trained on), with two labels,
or as copies within one split.

Checked by path when a manifest is read (`listed_twice`), and by content once the files' sha1s are
known (`check_copies`: byte-identical files under other names, which extraction, fit and fine-tuning
hash anyway). Two splits or two labels are refused in one line with the counts; copies within a
split are real (the Kermany training split holds 26) and are only reported. A patient group in two
splits the user gave is said, not refused (`groups_across_splits`): groups read from file names are
a guess, and the Kermany folders reuse patient numbers across train and test.
"""

from __future__ import annotations

from collections import defaultdict

from .._core.errors import FeatxError

_SPLIT_ORDER = ("train", "val", "test")
EMPTY_SHA1 = "da39a3ee5e6b4b0d3255bfef95601890afd80709"  # of zero bytes: empty files are unreadable, not copies


def listed_twice(entries: list[tuple[str, str, str, int]], source: str) -> tuple[set[int], str]:
    """(indices of repeated rows to drop, a note on them) for manifest rows (path, label, split, line);
    refuses a path listed in two splits or with two labels."""
    first: dict[str, tuple[str, str, int]] = {}
    repeated: set[int] = set()
    splits, labels = [], []
    for i, (path, label, split, line) in enumerate(entries):
        if path not in first:
            first[path] = (label, split, line)
            continue
        label0, split0, line0 = first[path]
        repeated.add(i)
        if split0 != split:
            splits.append(f"{path} on lines {line0} and {line}: {split0} and {split}")
        if label0 != label:
            labels.append(f"{path} on lines {line0} and {line}: {label0} and {label}")
    _refuse(source, splits, labels, split_words="are listed in two splits", label_words="are listed with two labels",
            fix="list each image once, in one split, with one label")
    note = f"{source}: {len(repeated)} repeated rows (the same path, label and split) are kept once" if repeated else ""
    return repeated, note


def check_copies(paths: list[str], labels, splits: list[str], sha1s: list[str], classes, source: str) -> str:
    """Refuse byte-identical files in two splits or with two labels; return a note on the copies
    within one split ("" when there are none). Images without a label are left out: featx suggest
    says which of them copy a labelled image."""
    by_content = defaultdict(list)
    for i, digest in enumerate(sha1s):  # an image without a label (-1) is trained on only once labelled
        if digest and digest != EMPTY_SHA1 and int(labels[i]) >= 0:
            by_content[digest].append(i)
    across, relabelled, within = [], [], []
    for rows in by_content.values():
        if len(rows) < 2:
            continue
        pair = f"{paths[rows[0]]} = {paths[rows[1]]}"
        if len({splits[i] for i in rows}) > 1:
            across.append(f"{pair}: {' and '.join(s for s in _SPLIT_ORDER if s in {splits[i] for i in rows})}")
        if len({int(labels[i]) for i in rows}) > 1:
            relabelled.append(f"{pair}: {' and '.join(sorted({classes[int(labels[i])] for i in rows}))}")
        if len({splits[i] for i in rows}) < len(rows):
            within.append((rows, pair))
    _refuse(source, across, relabelled, split_words="have byte-identical copies in another split",
            label_words="have byte-identical copies under another label", fix="keep one copy of each image")
    if not within:
        return ""
    extra = sum(len(rows) - len({splits[i] for i in rows}) for rows, _ in within)
    return (f"byte-identical copies within one split: {extra} (kept; e.g. {within[0][1]}); a validation split "
            "cut by featx keeps copies on one side")


def check_dataset_copies(ds) -> list[str]:
    """`check_copies` over every image of a dataset, hashing those not hashed while it was listed; the
    note on copies within a split goes to `ds.copies_note`. Returns each image's sha1 ('' if unreadable)."""
    from .files import file_contents

    size, mtime, sha1s = file_contents(ds.root, ds.paths, ds.content, skip=ds.problems)
    ds.content.update({p: (int(n), int(t), h) for p, n, t, h in zip(ds.paths, size, mtime, sha1s) if h})  # hashed once
    ds.copies_note = check_copies(ds.paths, ds.labels, ds.splits, sha1s, ds.classes, str(ds.root))
    return sha1s


def spread_groups(groups, values) -> tuple[dict, list]:
    """(group -> the set of `values` its images have, the groups with more than one, sorted): the one count
    behind the notes below and the patients line of a model card."""
    seen = defaultdict(set)
    for group, value in zip(groups, values):
        seen[group].add(value)
    return seen, sorted(g for g, found in seen.items() if len(found) > 1)


def groups_across_splits(groups: list[str], splits: list[str]) -> str:
    """A note when one patient group has images in several of the splits the user gave ("" if none)."""
    where, shared = spread_groups(groups, splits)
    if not shared:
        return ""
    return (f"{len(shared)} patient groups have images in two of the given splits (e.g. {shared[0]}: "
            f"{', '.join(sorted(where[shared[0]]))}); groups come from file names or the manifest: if these are "
            "the same patients, the evaluation is not independent of training")


def groups_in_two_classes(groups: list[str], labels, classes) -> str:
    """A note when one patient group has images of two classes ("" if none): possible for a patient seen
    twice, and a hint that the groups or the labels are not what they seem."""
    seen, mixed = spread_groups(groups, (int(label) for label in labels))
    if not mixed:
        return ""
    return (f"{len(mixed)} patient groups have images of two classes (e.g. {mixed[0]}: "
            f"{', '.join(classes[c] for c in sorted(seen[mixed[0]]))}): check that the groups name patients and "
            "that the labels are right")


def _refuse(source: str, splits: list[str], labels: list[str], *, split_words: str, label_words: str,
            fix: str) -> None:
    """One line for images in two splits and/or with two labels."""
    parts = []
    if splits:
        parts.append(f"{len(splits)} images {split_words} (e.g. {splits[0]}), so a model would be evaluated on "
                     "images it was trained on")
    if labels:
        parts.append(f"{len(labels)} images {label_words} (e.g. {labels[0]})")
    if parts:
        raise FeatxError(f"{source}: " + "; ".join(parts) + f"; {fix}")
