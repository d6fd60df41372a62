"""A study's plan: its units in one order, what of them is done, and how long the rest should take.

A study is a list of units, numbered in one order: one extraction per frozen backbone, then one fit per
head x budget, then one fine-tune per backbone x budget (a budget: n labelled images of one repeat,
featx.data.budgets). Each unit is named by what it is made of (the features' identity or the fine-tune's
options, the images' bytes, the method, n, the repeat, the evaluation split, the seed and the threshold
rule), so a unit already saved under its name is done. The evaluation split is `test` when the data has
one, else the validation split cut once from train (`val_fraction`), which then leaves the pool.
Estimates come from rates measured on this machine (studies.estimates). studies.study runs the plan.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from functools import cached_property
from pathlib import Path

import numpy as np

from .._core.errors import FeatxError
from .._core.hashing import images_fingerprint, record_hash
from .._core.options import feature_variant
from ..artifacts.sidecar import CLEANED, MethodId
from ..data.budgets import Budget, label_budgets
from ..data.datasets import DEFAULT_GROUP_PATTERN, Dataset, load_dataset
from ..data.exclusion import Exclusion
from ..data.files import file_contents
from ..data.leakage import check_dataset_copies
from ..evaluation.sets import EvaluationSet, evaluation_split
from ..features.recipe import DEFAULTS
from ..features.reuse import finished_cache
from ..features.target import Target, TargetListing
from ..finetuning.config import FinetuneConfig
from ..heads.selection import SELECTION_RULES
from ..models.numerics import Numerics
from ..models.weight_files import weights_identity
from .estimates import Throughput
from .spec import StudySpec
from .strategy_gains import strategy_note


class UnitKind(Enum):
    EXTRACT = "extract"
    FIT = "fit"
    FINETUNE = "finetune"


class UnitState(Enum):
    PLANNED = "planned"
    DONE = "done"  # its record (or, for an extraction, its cache) is complete on disk


@dataclass(frozen=True)
class Unit:
    """One piece of a study's work; `index` is its number for `--unit`."""

    index: int
    kind: UnitKind
    backbone: str
    method: MethodId | None = None  # what a fit or fine-tune trains; None for an extraction
    budget: Budget | None = None
    key: str | None = None          # names its saved record; None until its features exist (fits)
    state: UnitState = UnitState.PLANNED
    seconds: float | None = None    # estimated time left; None: not estimated

    @property
    def done(self) -> bool:
        return self.state is UnitState.DONE

    @property
    def name(self) -> str:
        return self.backbone if self.kind is UnitKind.EXTRACT else self.method.label

    def describe(self) -> str:
        if self.kind is UnitKind.EXTRACT:
            return f"extract {self.backbone}"
        return f"{self.kind.value} {self.name} n={self.budget.n or 'all'} repeat {self.budget.repeat}"


def _state(done: bool) -> UnitState:
    return UnitState.DONE if done else UnitState.PLANNED


class Plan:
    """A study's units in order, what of them is done, and how long the rest should take."""

    @classmethod
    def of(cls, spec: StudySpec, cache_dir: Path, out: Path, workers=None, dry_run: bool = False) -> Plan:
        """The plan of `spec`: its data listed once (a dry run stores no validation cut), its units checked
        against what `out` and the cache hold."""
        ds = load_dataset(spec.data, val_fraction=spec.val_fraction, group_pattern=spec.group_pattern,
                          seed=spec.seed, cache_dir=cache_dir, store_split=not dry_run)
        return cls(spec, ds, cache_dir, out, workers)

    def __init__(self, spec: StudySpec, ds: Dataset, cache_dir: Path, out: Path, workers=None):
        self.spec, self.ds, self.cache_dir, self.out, self.workers = spec, ds, cache_dir, out, workers
        # what every unit is named by besides its own parts: patients grouped otherwise draw other budgets
        self.record = {**spec.record, **({"group_pattern": self.ds.group_pattern}
                                         if self.ds.group_pattern != DEFAULT_GROUP_PATTERN else {})}
        self.evaluate_on = evaluation_split(self.ds.splits, spec.eval_split, where=str(self.ds.root))
        self.pool = np.array([i for i, s in enumerate(self.ds.splits) if s == "train"])
        self.eval_rows = [i for i, s in enumerate(self.ds.splits) if s == self.evaluate_on]
        self.sizes = spec.sizes(len(self.pool))
        self.budgets = sorted(label_budgets(self.ds.labels[self.pool], [self.ds.groups[i] for i in self.pool],
                                            self.sizes, repeats=spec.repeats, seed=spec.seed,
                                            classes=self.ds.classes),
                              key=lambda b: (b.n is None, b.n or 0, b.repeat))  # every size checked before any work
        # the whole pool (n = all, or a size that takes every image): one draw, as its repeats would be identical
        whole = {b.n for b in self.budgets if b.n is not None and len(b.rows) == len(self.pool)}
        self.budgets = [b for b in self.budgets if (b.n is not None and b.n not in whole) or b.repeat == 0]
        self.notes = [f"n={n} takes the whole pool of {len(self.pool)} images: one draw, not {spec.repeats} identical "
                      "repeats" for n in sorted(whole)] if spec.repeats > 1 else []
        self.exclusion = Exclusion.read(spec.exclude, self.ds.paths, self.ds.splits) if spec.exclude else None
        self.target = self._target()  # the target site's images, listed and checked before any work
        self.draws = self._draws()  # label source (MethodId.labels) -> its budgets, rows as positions in the pool
        self.throughput = Throughput(cache_dir)
        self.units = self._units()

    @cached_property
    def evaluation(self) -> EvaluationSet:
        """The evaluation split's images by path and content: every unit found under its key was scored on
        exactly these (a unit's key holds them), so the verdict pairs units by this value."""
        paths = [self.ds.paths[i] for i in self.eval_rows]
        _, _, sha1s = file_contents(self.ds.root, paths, self.ds.content, skip=self.ds.problems)
        return EvaluationSet.of(self.evaluate_on, paths, sha1s)

    def _target(self) -> TargetListing | None:
        """The --target images, hashed and refused where they are the study's training or validation images
        (every image outside the evaluation split may train or choose something)."""
        if self.spec.target is None:
            return None
        listing = TargetListing.of(Target(self.spec.target, self.spec.target_group_pattern), self.cache_dir)
        shown = [i for i, s in enumerate(self.ds.splits) if s != self.evaluate_on]
        _, _, sha1s = file_contents(self.ds.root, [self.ds.paths[i] for i in shown], self.ds.content,
                                    skip=self.ds.problems)
        listing.check(self.ds.classes, {h: self.ds.splits[i] for i, h in zip(shown, sha1s) if h})
        labelled = int((listing.ds.labels >= 0).sum())
        if self.spec.target_sizes and max(self.spec.target_sizes) >= labelled:
            raise FeatxError(f"--target-sizes {max(self.spec.target_sizes)}: the target has {labelled} labelled images, "
                             "and a transfer curve scores on the ones it does not draw")
        self.notes.append(f"target site {listing.target.name}: {len(listing.ds)} images ({labelled} labelled), never "
                          "trained on; the shift to it is measured on each backbone's features" +
                          ("; every unit is also scored on its labelled images" if labelled else
                           "; without labels there, no unit can be scored at the target") +
                          (f"; heads adapted to its unlabelled features: {', '.join(self.spec.adapt)}"
                           if self.spec.adapt else "") +
                          (f"; transfer curves of each head trained on the whole pool with k = "
                           f"{', '.join(map(str, self.spec.target_sizes))} site labels ({self.spec.repeats} draws)"
                           if self.spec.target_sizes else ""))
        return listing

    # -- the plan --------------------------------------------------------------------------------------
    def _draws(self) -> dict:
        """Each label source's budgets: random draws (None), random draws without the excluded images
        (CLEANED), and each strategy's sizes below the whole pool, whose images it chooses once the
        features exist (rows empty until then)."""
        draws = {None: self.budgets} if "random" in self.spec.strategies else {}
        for strategy in (s for s in self.spec.strategies if s != "random"):
            draws[strategy] = [Budget(b.n, b.repeat, np.empty(0, int)) for b in self.budgets
                               if b.n is not None and b.n_images < len(self.pool)]
        if self.exclusion:
            kept = np.array([self.ds.paths[i] not in self.exclusion.paths for i in self.pool])
            positions = np.flatnonzero(kept)
            cleaned = label_budgets(self.ds.labels[self.pool][kept], [self.ds.groups[i] for i in self.pool[kept]],
                                    [n if n == "all" or n <= len(positions) else "all" for n in self.sizes],
                                    repeats=self.spec.repeats, seed=self.spec.seed, classes=self.ds.classes)
            draws[CLEANED] = sorted([Budget(b.n, b.repeat, positions[b.rows]) for b in cleaned
                                     if b.n is not None or b.repeat == 0], key=lambda b: (b.n is None, b.n or 0, b.repeat))
            self.notes.append(f"{self.exclusion.describe()}: each method also runs on budgets drawn without them "
                              "(\"flagged removed\"), evaluated on the same untouched split")
        self.notes += [strategy_note(s, self.sizes) for s in draws if s not in (None, CLEANED)]
        return draws

    def _units(self) -> list[Unit]:
        units = [Unit(i, UnitKind.EXTRACT, b) for i, b in enumerate(self.spec.backbones if self.spec.heads else ())]
        self.finished = stores = {}  # backbone -> its complete cache when planned, else None
        for u in list(units):
            stores[u.backbone] = self._finished(u.backbone)
            units[u.index] = replace(u, state=_state(stores[u.backbone] is not None),
                                     seconds=None if stores[u.backbone] else self._extract_seconds(u.backbone))
        for backbone in (self.spec.backbones if self.spec.heads else ()):
            store = stores[backbone]
            images = store_images(store, self.evaluate_on) if store else None
            for head, adapted, (source, budgets) in self._fit_methods():
                for budget in budgets:
                    method = MethodId(backbone, head, self.compute_words, labels=source, adapted=adapted)
                    key = self.fit_key(store, images, method, budget) if store else None
                    done = key is not None and (self.out / "units" / f"{key}.json").is_file()
                    seconds = None if done else self.throughput.fit_seconds(head, budget.n or budget.n_images)
                    units.append(Unit(len(units), UnitKind.FIT, backbone, method, budget, key, _state(done), seconds))
        if self.spec.finetune:
            self.sha1s = sha1s = check_dataset_copies(self.ds)
            images = images_fingerprint((self.ds.paths[i], sha1s[i]) for i in [*self.pool, *self.eval_rows])
        sizes = self.spec.finetune_sizes or self.sizes
        for backbone in self.spec.finetune:
            for (recipe, options), source in ((r, s) for r in self.spec.recipes().items() for s in self.draws):
                method = replace(MethodId.finetune(backbone, options, recipe=recipe), labels=source)
                for budget in [b for b in self.draws[source] if (b.n or "all") in sizes]:
                    key = self.finetune_key(method, images, budget, options)
                    done = (self.out / "units" / f"{key}.json").is_file()
                    units.append(Unit(len(units), UnitKind.FINETUNE, backbone, method, budget, key, _state(done),
                                      None if done else self._finetune_seconds(backbone, budget, options)))
        return units

    def _fit_methods(self):
        """(head, adaptation, (label source, budgets)) of every head curve: each head on each label source, and
        each head adapted to the target (on random draws; prior only for logreg)."""
        for head in self.spec.heads:
            for source, budgets in self.draws.items():
                yield head, None, (source, budgets)
            for adapted in self.spec.adapt:
                if None in self.draws and (adapted != "prior" or head == "logreg"):
                    yield head, adapted, (None, self.draws[None])

    def fit_key(self, store, images: str, method: MethodId, budget: Budget) -> str:
        adapted = {"adapted": method.adapted, "target": self.target.fingerprint} if method.adapted else {}
        return record_hash({"features": store.config["config_hash"], "images": images, "head": method.head,
                            "rules": SELECTION_RULES, "n": budget.n, "repeat": budget.repeat, "eval": self.evaluate_on,
                            **self.record, **self._labels_record(method.labels, budget), **adapted}, 16)

    def finetune_key(self, method: MethodId, images: str, budget: Budget, options: dict) -> str:
        """Named by what the fine-tune is made of, not by its recipe's name: two studies (or two names) asking
        the same options share the unit."""
        return record_hash({"finetune": method.backbone, "weights": weights_identity(self.spec.weights),
                            "options": options, "images": images, "n": budget.n, "repeat": budget.repeat,
                            "eval": self.evaluate_on, **self.record, **self._labels_record(method.labels, budget)}, 16)

    def _labels_record(self, source: str | None, budget: Budget) -> dict:
        """How a unit's labels were chosen, for its key ({} for random draws, so their keys never change): the
        exclusion list's fingerprint, or the strategy and its rounds up to this size (a strategy chooses on
        the features of the method's backbone, which a fit's key already names; a fine-tune's key names the
        backbone, and its cache follows from the study's extraction defaults)."""
        if source is None:
            return {}
        if source == CLEANED:
            return {"labels": source, "excluded": self.exclusion.key}
        return {"labels": source, "rounds": [n for n in self.sizes if n != "all" and n <= budget.n]}

    def _finished(self, backbone: str):
        """The backbone's cache as the study extracts it (extract's defaults), when complete for these images."""
        return finished_cache(self.ds, backbone, weights=self.spec.weights, layer=DEFAULTS["layer"],
                              variant=feature_variant(), tta=DEFAULTS["tta"], decode=DEFAULTS["decode"],
                              dtype=DEFAULTS["dtype"], numerics=Numerics.asked("cpu", "auto", self.spec.precision),
                              cache_dir=self.cache_dir)

    @cached_property
    def compute_words(self) -> tuple[str, ...]:
        """How the study's features name themselves in its methods, as extract (device auto) will make them: a
        CPU's bfloat16 by its engine; nothing for float32, or where a GPU may run them (autocast)."""
        numerics = Numerics.for_device("auto", "auto", self.spec.precision)
        return Numerics.words(numerics.recipe()) if numerics else ()

    def _extract_seconds(self, backbone: str) -> float:
        return len(self.ds) / self.throughput.images_per_second("extract", backbone)

    def _finetune_seconds(self, backbone: str, budget: Budget, options: dict) -> float:
        """An upper bound: every epoch run (early stopping only shortens it), then every image predicted."""
        size = options.get("image_size")
        train = self.throughput.images_per_second("train", backbone, size)
        evaluate = self.throughput.images_per_second("eval", backbone, size)
        epochs = FinetuneConfig(**options).epochs
        images = budget.n_images or budget.n  # a strategy's images are chosen later: about n
        n_val = int(round(0.2 * images))
        return epochs * ((images - n_val) / train + n_val / evaluate) + (images + len(self.eval_rows)) / evaluate

    def unit(self, index: int) -> Unit:
        if not 0 <= index < len(self.units):
            raise FeatxError(f"--unit {index}: this study has units 0 to {len(self.units) - 1} "
                             "(featx study --dry-run lists them)")
        return self.units[index]

    def seconds_left(self, units=None) -> tuple[float, int]:
        """(estimated seconds of the units not done, how many of them have no estimate)."""
        units = [u for u in (self.units if units is None else units) if not u.done]
        return sum(u.seconds or 0.0 for u in units), sum(u.seconds is None for u in units)

    def say(self, log) -> None:
        """The plan: each unit, grouped by method and size (their numbers for --unit), what is done, the time."""
        ds, pool = self.ds, len(self.pool)
        for note in [*ds.notes(), *self.notes]:
            log(note)
        log(f"study of {ds.root}: budgets drawn from the {pool} train images ({', '.join(self._sizes())}; "
            f"{self.spec.repeats} repeats), every unit evaluated on the {len(self.eval_rows)} {self.evaluate_on} "
            "images")
        groups: dict[tuple, list[Unit]] = {}
        for u in self.units:
            groups.setdefault((u.kind, u.name, u.budget.n if u.budget else None), []).append(u)
        for (kind, name, n), units in groups.items():
            numbers = f"{units[0].index}" + (f"-{units[-1].index}" if len(units) > 1 else "")
            done = sum(u.done for u in units)
            seconds, unknown = self.seconds_left(units)
            what = f"{kind.value} {name}" + ("" if kind is UnitKind.EXTRACT else f" n={n or 'all'} x{len(units)}")
            state = "done" if done == len(units) else (f"{done}/{len(units)} done, " if done else "") + \
                ("not estimated" if unknown and not seconds else self._bound(kind, units[0].backbone) +
                 f"~{duration(seconds)}")
            log(f"  unit {numbers:<9} {what:<58} {state}")
        seconds, unknown = self.seconds_left()
        timed = sorted({name + (f"@{size}" if size else "") for _, name, size in self.throughput.timed})
        log(f"plan: {len(self.units)} units ({sum(u.done for u in self.units)} done): {self._count(UnitKind.EXTRACT)} "
            f"extraction(s), {self._count(UnitKind.FIT)} fits, {self._count(UnitKind.FINETUNE)} fine-tunes; "
            + (f"the rest ~{duration(seconds)}" + (f" (+{unknown} units not yet measured on this machine, not "
                                                     "estimated)" if unknown else "") if seconds or not unknown else
               f"the rest: not estimated ({unknown} units not yet measured on this machine)")
            + (f"; {', '.join(timed)} timed on a few batches, decoding not included" if timed else ""))

    def _bound(self, kind: UnitKind, backbone: str) -> str:
        """How an estimate errs: a fine-tune's, from rates measured here, runs every epoch (early stopping only
        shortens it); an extraction's rate timed on random inputs leaves decoding out."""
        timed = {(k, name) for k, name, _ in self.throughput.timed}
        if kind is UnitKind.FINETUNE:
            return "" if ("train", backbone) in timed else "at most "
        return "at least " if kind is UnitKind.EXTRACT and ("extract", backbone) in timed else ""

    def _count(self, kind: UnitKind) -> int:
        return sum(u.kind == kind for u in self.units)

    def _sizes(self) -> list[str]:
        return [str(n or "all") for n in dict.fromkeys(b.n for b in self.budgets)]

    def check_budget(self, seconds: float, log) -> None:
        """Refuse a plan estimated over `seconds`, naming the units that fit in it (in order); say which units
        it could not check, having no estimate."""
        need, unknown = self.seconds_left()
        if need <= seconds:
            if unknown:
                log(f"--budget {duration(seconds)}: {unknown} units have no estimate on this machine, so the budget "
                    "was checked on the others only")
            return
        fit, total = [], 0.0
        for u in self.units:
            if u.done:
                continue
            if total + (u.seconds or 0.0) > seconds:
                break
            total += u.seconds or 0.0
            fit.append(u.index)
        within = f"units {fit[0]}-{fit[-1]} fit within it (--unit K for each)" if fit else "no unit fits within it"
        raise FeatxError(f"the plan's estimate is {duration(need)}, over --budget {duration(seconds)}: {within}; "
                         "or drop sizes, repeats or methods")


def store_images(store, evaluate_on: str) -> str:
    return images_fingerprint((p, h) for split in ("train", evaluate_on)
                              for p, h in zip(store.paths(split), store.sha1s(split)))


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
