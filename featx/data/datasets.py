"""Find a dataset's images, labels, splits and patient groups.

Layouts: `DIR/<class>/*`, `DIR/{train,val,test}/<class>/*`, or a CSV manifest with columns
`path,label[,split][,group]`. A validation split cut from train keeps each group (patient)
on one side; it is stored next to the caches and reused by every later command.

Images without a label yet (for `featx suggest`) are the rows of a manifest whose label is empty, or the
files of an `unlabelled/` folder beside the class folders (or beside the split folders). They are listed
in the split UNLABELLED with label -1: extraction caches them, and no head, budget or evaluation sees them.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .._core.errors import FeatxError
from .._core.locks import exclusive_lock
from .._core.options import CHOICES
from .._core.paths import default_cache_dir
from .dicom import DICOM_EXTENSIONS, has_dicom_preamble
from .dicom_headers import header_facts, key_id
from .files import not_regular
from .leakage import groups_across_splits, groups_in_two_classes, listed_twice, spread_groups
from .splits import cut_split, read_split, reuse_split, split_file

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}) | DICOM_EXTENSIONS
BAD_NAME = "file name is not valid UTF-8; rename the file to extract it"
SPLITS = CHOICES["split"]
UNLABELLED = "unlabelled"  # images waiting for a label: cached, never trained on or evaluated
STORED_SPLITS = (*SPLITS, UNLABELLED)  # the splits a cache's rows may be in, by their code
SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}

# Kermany et al. names: person123_bacteria_456.jpeg -> person123, IM-0115-0001.jpeg -> IM-0115,
# NORMAL2-IM-0381-0001.jpeg -> NORMAL2-IM-0381. Other names are each their own group.
DEFAULT_GROUP_PATTERN = r"^(person\d+)_|^((?:NORMAL\d*-)?IM-\d+)-\d+"


@dataclass
class Dataset:
    """Every image of a dataset with its label, split and group; paths relative to `root`."""

    root: Path
    key: str  # names the dataset's folder in the cache
    classes: list[str]
    paths: list[str]
    labels: np.ndarray  # index into classes
    splits: list[str]
    groups: list[str]
    group_pattern: str = DEFAULT_GROUP_PATTERN
    split_note: str = ""
    ignored: list[str] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)  # path -> why it cannot be read, known at listing
    group_source: str = ""  # where groups came from when not the manifest or the file names
    group_note: str = ""
    listing_notes: list[str] = field(default_factory=list)  # repeated manifest rows, groups across given splits
    copies_note: str = ""  # byte-identical copies within a split, once the files are hashed (data.leakage)
    content: dict = field(default_factory=dict)  # path -> (size, mtime_ns, sha1) of files hashed while listing
    source: str = ""  # the folder or manifest it was read from, as `--data` names it again
    given_groups: int = 0  # images whose group the manifest or a DICOM header gave (not the file name)
    validation: str = "none"  # "cut" by featx by patient, "given" by the user, or "none"

    def __len__(self) -> int:
        return len(self.paths)

    def patients(self, rows: dict[str, list[int]] | None = None, validation: str | None = None) -> dict:
        """What is true of this dataset's patient groups, as sidecars record it for model cards: where the
        groups came from, how many images found a patient (the others are each their own), the groups,
        who made the validation split, and the groups with images in two splits (with one example).
        `rows`: split -> rows, where a run uses other splits than the dataset's (a study's budget)."""
        if rows is None:
            where, across = spread_groups(self.groups, self.splits)
        else:
            pairs = [(self.groups[i], split) for split, found in rows.items() for i in found]
            where, across = spread_groups([g for g, _ in pairs], [s for _, s in pairs])
        named = sum(g != p for g, p in zip(self.groups, self.paths))
        return {"source": self.group_source or ("the manifest's group column" if self.given_groups else
                                                f"the pattern '{self.group_pattern}' on file names"),
                "images": len(self.paths), "named": named, "groups": len(where),
                "validation": validation or self.validation,
                "across_splits": len(across),
                "example": f"{across[0]}: {', '.join(s for s in SPLITS if s in where[across[0]])}" if across else None}

    def notes(self) -> list[str]:
        """What extraction says about the listing: the validation split, files that are not images."""
        lines = [line for line in (*self.listing_notes, self.group_note, self.split_note, self.copies_note) if line]
        if self.ignored:
            lines.append(f"ignored {len(self.ignored)} files that are not images by their extension "
                         f"({' '.join(sorted(IMAGE_EXTENSIONS))}), e.g. {', '.join(self.ignored[:3])}")
        return lines

    @property
    def unlabelled(self) -> list[int]:
        """Rows of the images that have no label yet."""
        return [i for i, s in enumerate(self.splits) if s == UNLABELLED]

    @property
    def has_dicom(self) -> bool:
        """Whether any image is a DICOM file."""
        return any(map(_dicom_path, self.paths))

    def absolute(self, relpath: str) -> Path:
        return self.root / relpath

    def counts(self) -> dict[str, dict[str, int]]:
        """{split: {class: n}} for the splits that exist."""
        table: dict[str, dict[str, int]] = {}
        for split, label in zip(self.splits, self.labels):
            if label < 0:
                continue
            row = table.setdefault(split, {c: 0 for c in self.classes})
            row[self.classes[label]] += 1
        return {s: table[s] for s in SPLITS if s in table}

    def subset(self, splits) -> "Dataset":
        """The images of `splits` only (e.g. the split `featx robustness` corrupts), same root and key."""
        keep = [i for i, s in enumerate(self.splits) if s in splits]
        paths = [self.paths[i] for i in keep]
        return replace(self, paths=paths, labels=self.labels[keep], splits=[self.splits[i] for i in keep],
                       groups=[self.groups[i] for i in keep], split_note="", group_note="", ignored=[],
                       listing_notes=[], copies_note="",
                       problems={p: why for p, why in self.problems.items() if p in set(paths)})


def load_dataset(
    source,
    *,
    val_fraction: float | None = None,
    group_pattern: str | None = None,
    seed: int = 0,
    cache_dir=None,
    store_split: bool = True,
) -> Dataset:
    """Read a folder or CSV manifest; cut (or reuse) a group-aware validation split if asked.
    `store_split` False: a split cut now is not stored (a dry run fixes nothing)."""
    source = Path(source).expanduser()
    if not source.exists():
        raise FeatxError(f"data not found: {source}")
    if source.is_file():
        if source.suffix.lower() != ".csv":
            raise FeatxError(f"--data must be a folder or a .csv manifest, not {source.name}")
        ds = _from_manifest(source.resolve())
    else:
        ds = _from_folders(source.resolve())
    ds.source = str(source.resolve())
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    ds.key = dataset_key(source.resolve(), cache_dir)
    stored = read_split(cache_dir, ds)
    pattern = group_pattern or (stored or {}).get("group_pattern") or DEFAULT_GROUP_PATTERN
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise FeatxError(f"--group-pattern {pattern!r} is not a valid regular expression: {exc}") from None
    ds.group_pattern = pattern
    if ds.has_dicom:
        _read_headers(ds, cache_dir, use_groups=group_pattern is None and pattern == DEFAULT_GROUP_PATTERN)
    ds.given_groups = sum(1 for g in ds.groups if g)
    ds.groups = [g if g else group_of(p, regex) for p, g in zip(ds.paths, ds.groups)]
    _check_classes(ds)
    ds.listing_notes += [note for note in [groups_across_splits(ds.groups, ds.splits), _few_groups(ds),
                                           groups_in_two_classes(*_labelled(ds))] if note]
    if "val" in ds.splits:
        ds.validation = "given"
        if val_fraction is not None:
            raise FeatxError(f"{source} already has a validation split; drop --val-fraction")
    elif stored is not None:
        reuse_split(ds, stored, val_fraction, seed, group_pattern, split_file(cache_dir, ds))
        ds.validation = "cut"
    elif val_fraction is not None:
        if store_split:
            _cut_once(ds, val_fraction, seed, group_pattern, cache_dir)
        else:
            cut_split(ds, val_fraction, seed, None)
        ds.validation = "cut"
    return ds


def _labelled(ds: Dataset) -> tuple[list[str], np.ndarray, list[str]]:
    """(groups, labels, classes) of the labelled images."""
    keep = ds.labels >= 0
    return [g for g, k in zip(ds.groups, keep) if k], ds.labels[keep], ds.classes


def _few_groups(ds: Dataset) -> str:
    """One line when the group pattern found a patient in under half of the file names it was asked about:
    those images are each their own patient, so one patient's images may land on both sides of a split."""
    asked = [p for p, given in zip(ds.paths, ds.groups) if given == p]
    from_names = len(ds.paths) - ds.given_groups
    if not from_names or len(asked) <= from_names / 2:
        return ""
    example = Path(asked[0]).name
    hint = _pattern_hint([Path(p).name for p in asked])
    return (f"the group pattern '{ds.group_pattern}' found no patient in {len(asked)} of {from_names} file names "
            f"(e.g. {example}): each of those images is its own patient, so one patient's images may fall on both "
            f"sides of a split; give --group-pattern REGEX whose first group names the patient"
            + (f" (these names suggest '{hint}')" if hint else ""))


def _pattern_hint(names: list[str]) -> str | None:
    """A pattern for names that start with a patient id before '_' or '-' (e.g. 00001280_004.png), when such
    prefixes repeat (several images per prefix); None otherwise."""
    for sep in ("_", "-"):
        prefixes = [n.split(sep, 1)[0] for n in names if sep in n]
        if len(prefixes) == len(names) and len(set(prefixes)) < 0.9 * len(names):
            digits = all(p.isdigit() for p in prefixes) and len({len(p) for p in prefixes}) == 1
            return rf"^(\d{{{len(prefixes[0])}}}){sep}" if digits else rf"^([^{sep}]+){sep}"
    return None


def _cut_once(ds: Dataset, val_fraction: float, seed: int, group_pattern, cache_dir: Path) -> None:
    """Cut the validation split under a lock: of two first runs at once, the second waits, then reuses
    the first's split (or refuses other options), so a cache's split and split.json always agree."""
    path = split_file(cache_dir, ds)
    with exclusive_lock(path, wait=True):
        stored = read_split(cache_dir, ds)
        if stored is not None:
            reuse_split(ds, stored, val_fraction, seed, group_pattern, path)
        else:
            cut_split(ds, val_fraction, seed, path)


def _read_headers(ds: Dataset, cache_dir: Path, use_groups: bool) -> None:
    """DICOM files without a manifest group get their patient from the header as a keyed hash
    (featx.data.dicom_headers), unless a --group-pattern was given; files with several frames or
    without a display window are counted for the log."""
    todo = [i for i, p in enumerate(ds.paths) if _dicom_path(p)]
    if importlib.util.find_spec("pydicom") is None:
        return  # without pydicom the files cannot be read either; extraction says so per file
    facts, key = header_facts(ds.root, [ds.paths[i] for i in todo], Path(cache_dir) / ds.key)
    multi_frame, no_window = sum(f.multi_frame for f in facts), sum(f.no_window for f in facts)
    said = [f"multi-frame DICOM files: {multi_frame}; featx reads the first frame of each" if multi_frame else "",
            f"DICOM files without a display window: {no_window}; their default window is the min-max of their "
            "values" if no_window else ""]
    ds.group_note = "; ".join(filter(None, said))
    if not use_groups:
        return
    found = [None if ds.groups[i] else f.group for i, f in zip(todo, facts)]  # a manifest's group wins
    for i, group in zip(todo, found):
        ds.groups[i] = ds.groups[i] or group or ""
    hashed = sum(1 for g in found if g)
    if hashed:
        ds.group_source = f"DICOM PatientID/StudyInstanceUID, hashed with key {key_id(key)}"
        ds.group_note = "; ".join(filter(None, [
            f"patient groups of {hashed} DICOM files from their PatientID (else StudyInstanceUID), stored only "
            f"as keyed hashes ({len(set(g for g in found if g))} patients)", ds.group_note]))


def group_of(relpath: str, regex: re.Pattern) -> str:
    """The patient (group) an image belongs to: the regex's first non-empty group, else the file itself."""
    name = Path(relpath).name
    match = regex.search(name)
    if match:
        found = next((g for g in match.groups() if g), None) if match.groups() else match.group(0)
        if found:
            return found
    return relpath


def dataset_key(source: Path, cache_dir: Path) -> str:
    """Names the dataset's folder in the cache: its name and where it lies seen from the cache folder,
    so a project folder (data and cache) moved or copied elsewhere keeps its caches."""
    where = os.path.relpath(source, Path(cache_dir).resolve())
    return f"{source.stem}-{hashlib.sha1(where.encode()).hexdigest()[:6]}"


def _list_images(folder: Path, root: Path, ignored: list[str], problems: dict | None = None) -> list[str]:
    """Image files under `folder`, sorted (a folder's files, then its subfolders'), relative to root;
    symlinked folders are not followed. FIFOs, sockets and devices named like images are listed with
    their reason in `problems` (reading one would block), never opened.

    Plain strings and os.scandir, not pathlib: listing 100k files stays well under a second.
    """
    found = []
    prefix = len(str(root)) + 1

    def visit(directory: str) -> None:
        with os.scandir(directory) as entries:
            entries = sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)
        rel_dir = directory[prefix:].replace(os.sep, "/")
        subfolders = []
        for entry in entries:
            is_dir, special = _entry_kind(entry)
            if is_dir:
                if not entry.is_symlink():
                    subfolders.append(entry.path)
                continue
            rel = _printable(f"{rel_dir}/{entry.name}" if rel_dir else entry.name)
            extension = os.path.splitext(entry.name)[1].lower()
            image = extension in IMAGE_EXTENSIONS or (not extension and not special and _dicom_file(entry.path))
            (found if image else ignored).append(rel)
            if image and special and problems is not None:
                problems[rel] = special
        for sub in subfolders:
            visit(sub)

    visit(str(folder))
    return found


def _entry_kind(entry: os.DirEntry) -> tuple[bool, str | None]:
    """(a folder?, why it is not a readable file or None). Regular files cost no stat; a broken link or a
    link loop is listed, and reading it gives the system's reason."""
    try:
        if entry.is_dir():
            return True, None
        if entry.is_file() or (entry.is_symlink() and not os.path.exists(entry.path)):
            return False, None
    except OSError:
        return False, None
    return False, not_regular(entry.path)


def _dicom_path(rel: str) -> bool:
    """A listed DICOM file: by its extension, or extension-less (listed only with the DICOM preamble)."""
    extension = os.path.splitext(rel)[1].lower()
    return extension in DICOM_EXTENSIONS or not extension


def _dicom_file(path: str) -> bool:
    """An extension-less file with the DICOM preamble (as PACS exports often name them)."""
    try:
        with open(path, "rb") as handle:
            return has_dicom_preamble(handle.read(132))
    except OSError:
        return False


def _printable(rel: str) -> str:
    """Names the filesystem gave as undecodable bytes get a visible escape (e.g. caf\\xe9.png)."""
    try:
        rel.encode("utf-8")
        return rel
    except UnicodeEncodeError:
        return rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def image_files(targets) -> list[Path]:
    """Image files named directly or found under folders, for prediction (no class folders needed)."""
    found = []
    for target in map(Path, targets):
        if target.is_dir():
            found += [target / rel for rel in _list_images(target, target, [])]
        elif target.exists() or target.is_symlink():
            found.append(target)  # named explicitly: read it, and report it if it is not an image
        else:
            raise FeatxError(f"image or folder not found: {target}")
    if not found:
        raise FeatxError(f"no images in {', '.join(map(str, targets))} ({_extensions_hint()})")
    return found


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _from_folders(root: Path) -> Dataset:
    found = _subfolders(root)
    subdirs = [d for d in found if d.name.lower() != UNLABELLED]
    waiting = [d for d in found if d.name.lower() == UNLABELLED]
    split_dirs = {SPLIT_ALIASES[d.name.lower()]: d for d in subdirs if d.name.lower() in SPLIT_ALIASES}
    if split_dirs and "train" not in split_dirs and "test" not in split_dirs and len(split_dirs) == len(subdirs):
        raise FeatxError(f"{root} has a {', '.join(split_dirs)} folder but no train folder")
    if split_dirs and len(split_dirs) != len(subdirs):
        others = [d.name for d in subdirs if d.name.lower() not in SPLIT_ALIASES]
        raise FeatxError(
            f"{root} mixes split folders ({', '.join(d.name for d in split_dirs.values())}) "
            f"with other folders ({', '.join(others[:3])}); use DIR/<class>/* or DIR/{{train,val,test}}/<class>/*"
        )
    layout = split_dirs or ({"train": root} if subdirs or not waiting else {})
    classes_by_split = {}
    for split, folder in layout.items():
        names = [d.name for d in (subdirs if folder == root else _subfolders(folder))]
        if not names:
            raise FeatxError(
                f"no class folders in {folder}: expected {folder}/<class>/<image files>, e.g. NORMAL/ and PNEUMONIA/"
            )
        classes_by_split[split] = names
    all_classes = sorted({c for names in classes_by_split.values() for c in names})
    if len(all_classes) == 1:
        only = next(iter(layout.values())) / all_classes[0]
        nested = [d.name for d in _subfolders(only)]
        if nested and not any(p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS for p in only.iterdir()):
            raise FeatxError(
                f"{root} holds one class folder, {all_classes[0]}/, whose images are in subfolders "
                f"({', '.join(nested[:3])}); if those are the classes, use --data {only}"
            )
    for split, names in classes_by_split.items():
        missing = [c for c in all_classes if c not in names]
        if missing and split != "test":
            raise FeatxError(
                f"class folders differ across splits: {layout[split].name}/ lacks {', '.join(missing)} "
                f"(classes: {', '.join(all_classes)})"
            )
    paths, labels, splits, ignored, problems = [], [], [], [], {}
    for split in SPLITS:
        if split not in layout:
            continue
        for class_name in classes_by_split[split]:
            found = _list_images(layout[split] / class_name, root, ignored, problems)
            if not found:
                raise FeatxError(f"class folder {(layout[split] / class_name)} has no images ({_extensions_hint()})")
            paths += found
            labels += [all_classes.index(class_name)] * len(found)
            splits += [split] * len(found)
    for folder in waiting:
        found = _list_images(folder, root, ignored, problems)
        paths += found
        labels += [-1] * len(found)
        splits += [UNLABELLED] * len(found)
    problems.update({p: BAD_NAME for p in paths if "\\x" in p and not (root / p).exists()})
    return Dataset(root, "", all_classes, paths, np.asarray(labels, dtype=np.int64), splits,
                   [""] * len(paths), ignored=ignored, problems=problems)


def _from_manifest(csv_path: Path) -> Dataset:
    root = csv_path.parent
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip().lower() for c in (reader.fieldnames or [])]
        if "path" not in columns or "label" not in columns:
            raise FeatxError(f"{csv_path.name}: a manifest needs a header with 'path' and 'label' (optional: split, group)")
        rows = [{k.strip().lower(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    if not rows:
        raise FeatxError(f"{csv_path.name} lists no images")
    entries, groups, missing, problems = [], [], [], {}
    for line, row in enumerate(rows, start=2):
        path = Path(row["path"])
        full = path if path.is_absolute() else root / path
        special = None if full.is_file() else not_regular(full)
        if not full.is_file() and not special:
            missing.append(row["path"])
            continue
        split = SPLIT_ALIASES.get(row.get("split", "").lower() or "train")
        if split is None:
            raise FeatxError(f"{csv_path.name} line {line}: split '{row['split']}' is not one of train, val, test")
        if not row["label"]:
            if split != "train":
                raise FeatxError(f"{csv_path.name} line {line}: an image without a label cannot be in the {split} "
                                 "split; leave its split empty (it waits for a label) or give its label")
            split = UNLABELLED
        rel = os.path.relpath(full.resolve(), root).replace(os.sep, "/") if not path.is_absolute() else str(full)
        if special:
            problems[rel] = special
        entries.append((rel, row["label"], split, line))
        groups.append(row.get("group", ""))
    if missing:
        raise FeatxError(f"{csv_path.name}: {len(missing)} listed files do not exist (first: {missing[0]})")
    repeated, note = listed_twice(entries, csv_path.name)
    keep = [i for i in range(len(entries)) if i not in repeated]
    paths, label_names, splits = ([entries[i][k] for i in keep] for k in range(3))
    classes = sorted(set(label_names) - {""})
    labels = np.asarray([classes.index(n) if n else -1 for n in label_names], dtype=np.int64)
    return Dataset(root, "", classes, paths, labels, splits, [groups[i] for i in keep],
                   problems=problems, listing_notes=[note] if note else [])


def _check_classes(ds: Dataset) -> None:
    if not ds.paths:
        raise FeatxError(f"no images in {ds.root} ({_extensions_hint()})")
    for split in ("train", "val"):
        present = {ds.classes[l] for l, s in zip(ds.labels, ds.splits) if s == split}
        if present and len(present) < len(ds.classes):
            absent = [c for c in ds.classes if c not in present]
            raise FeatxError(f"split {split} has no images of class {', '.join(absent)}")


def _extensions_hint() -> str:
    return ("looked for " + ", ".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS)) + " in any case, and "
            "extension-less DICOM files")
