"""`featx study`: frozen backbones x heads, and fine-tunes, at every label budget, in one command.

The plan (studies.plan) is said before any work, with what is done and the estimated time of the rest;
`dry_run` stops there, and a plan over `budget_seconds` is refused. Then each unit runs: an extraction,
a head chosen and fitted on one budget (studies.label_curves), or a fine-tune on it; each fit or
fine-tune is saved as it finishes under `out/units/`. A killed study resumes (a fine-tune from its last
epoch), a re-run computes nothing, adding a size or a head computes only that, and `unit=K` runs unit K
alone, so that a scheduler can spread a study over machines; a run with every unit done only gathers the
records into a StudyResult and keeps the leader at n=all as a model to use. No choice of any unit sees the
evaluation split.
"""

from __future__ import annotations

import json
import os
import socket
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from .._core.atomic import write_csv_atomic, write_text_atomic
from .._core.console import counted, log_line, progress_bar
from .._core.errors import FeatxError
from .._core.hashing import images_fingerprint, record_hash
from .._core.paths import default_cache_dir
from ..artifacts.model_card import forget_choice, record_choice, write_model_card
from ..artifacts.sidecar import CLEANED, MethodId
from ..data.budgets import Budget, held_out
from ..evaluation.sets import EvaluationSet
from ..evaluation.significance import point_metrics
from ..finetuning.config import FinetuneConfig
from ..heads.adaptation import SiteFit
from ..heads.selection import SELECTION_RULES, select_head
from ..labelling.strategies import nested_selection
from .label_curves import COLUMNS, Curve, Pool, unit_record
from .execution import (Outcome, check_available, check_shared, local_parallelism, one_line, run_jobs,
                        set_threads)
from .plan import Plan, Unit, UnitKind, UnitState, duration, store_images
from .result import StudyResult
from .spec import StudySpec
from .site_transfer import TransferSetting, cached_transfer, transfer_records
from .target_site import StudySite
from .tracked import study_tracking, track_units


# A fine-tune unit's name for the study's evaluation images: its test split, held out from every choice of the
# run (its validation part, cut from the budget, chose the epoch and threshold), whatever the dataset calls them.
HELD_OUT = "test"


def run_study(data=None, *, spec: StudySpec | None = None, out="featx-study", cache_dir=None, dry_run: bool = False,
              unit: int | None = None, gather: bool = False, budget_seconds: float | None = None, workers=None,
              progress: bool = False, log=None, **options) -> StudyResult:
    """The study's result: every (method, n, repeat) record (label_curves.COLUMNS, its MethodId and the
    evaluation predictions), also written to `out/study.csv`, with `out/study.toml`, and the leader kept at
    n=all; no records after a dry run or one `unit`. The units not done run on the spec's executor
    (studies.execution; extractions first: here, or as Slurm jobs of `resources.extract_tasks` tasks).
    `gather`: compute nothing, gather what is in and name what is missing. `options`: StudySpec's fields
    (backbones, heads, finetune, train_sizes, repeats, eval_split, val_fraction, weights, seed, threshold,
    n_boot, finetune_options, finetune_recipes, executor, jobs, resources, ray_address, track, tracking_uri,
    ...)."""
    log = log or log_line
    spec = spec or StudySpec(data=data, **options)
    out = Path(out)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    study_tracking(spec, out)  # its package, checked before any work
    if gather and unit is not None:
        raise FeatxError("--gather computes nothing and --unit computes one unit: give one of them")
    if not (dry_run or gather or unit is not None):
        check_available(spec.executor, spec.resources)
        check_shared(spec.executor, spec.resources, out, cache_dir)
    plan = StudyRun.of(spec, cache_dir, out, workers, dry_run=dry_run)
    chosen = plan.unit(unit) if unit is not None else None  # a unit it does not have: refused before the plan
    said = []
    plan.say(lambda line: (said.append(line), log(line)))
    if budget_seconds is not None and not gather:
        plan.check_budget(budget_seconds, log)
    result = StudyResult([], plan.evaluate_on, out, spec.n_boot, plan=said, spec=spec)
    if dry_run:
        return result
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "study.toml", spec.to_toml(relative_to=out))
    started = time.perf_counter()
    todo = [chosen] if chosen is not None else [] if gather else [u for u in plan.units if not u.done]
    if chosen is not None or spec.executor == "local" and spec.jobs == 1:
        computed = plan.run(todo, progress, log)
    else:
        computed = plan.run_elsewhere(todo, progress, log)
    if unit is not None:
        left = sum(not u.done for u in plan.units)
        log(f"unit {unit} done ({time.perf_counter() - started:.1f} s); {left} of {len(plan.units)} units left")
        return result
    return _gathered(plan, result, computed, started, gather, log)


def _gathered(plan: StudyRun, result: StudyResult, computed: int, started: float, partial: bool, log) -> StudyResult:
    """The records gathered into `result`, study.csv and the leader; with `partial`, what is in and what is not
    (then nothing is written: a table of some repeats is not the study's)."""
    out = plan.out
    result.records, missing = plan.gather(partial=partial)
    tracking = study_tracking(plan.spec, out)
    if tracking is not None:
        logged = track_units(tracking, out, plan.gathered, plan.spec)
        log(f"tracked: {counted(logged, 'unit')} logged now to MLflow at {tracking.where(out)}, experiment "
            f"{tracking.experiment!r} ({len(plan.gathered) - logged} logged before); see them: mlflow ui "
            f"--backend-store-uri {tracking.where(out)}")
    if missing:
        result.missing = [f"unit {u.index} ({u.describe()})" for u in missing]
        shown = ", ".join(result.missing[:5])
        log(f"gathered {counted(len(result.records), 'unit')}; {len(missing)} not in: {shown}"
            + (f" and {len(missing) - 5} more" if len(missing) > 5 else "") +
            "; featx study without --gather computes them")
        return result
    result.shifts = plan.site_shifts(log)
    result.transfer = plan.site_transfer(log)
    if result.transfer:
        write_csv_atomic(out / "site_transfer.csv", result.transfer)
    log(f"study: {computed} of {sum(u.kind is not UnitKind.EXTRACT for u in plan.units)} units computed now "
        f"({time.perf_counter() - started:.1f} s), the others read from {out / 'units'}")
    write_csv_atomic(out / "study.csv", [{**{k: _cell(r[k]) for k in COLUMNS}, **_at_target(r)} for r in result.records])
    result.leader = plan.keep_leader(log)
    return result


class StudyRun(Plan):
    """A plan being carried out: its units run in order, their records gathered, the leader kept."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._pools: dict = {}  # backbone -> its Pool, read once
        self.site = None if self.target is None else StudySite(self.target, self.out, self.cache_dir,
                                                                n_boot=self.spec.n_boot, seed=self.spec.seed)

    # -- the work --------------------------------------------------------------------------------------
    def run(self, units: list[Unit], progress: bool, log) -> int:
        """Compute `units` (fits after their backbone's extraction); returns how many were computed."""
        computed, pools = 0, self._pools
        total, _ = self.seconds_left(units)
        bar = progress_bar(len(units), progress, desc="study", position=0)
        for u in units:
            bar.set_postfix_str(f"~{duration(self.seconds_left(units)[0])} left" if total else "")
            if u.kind is UnitKind.FINETUNE:
                computed += self._finetune(u, progress, log)
            elif u.kind is UnitKind.FIT:
                if u.backbone not in pools:
                    pools[u.backbone] = self._pool(u.backbone, log)
                computed += self._fit(u, pools[u.backbone])
            else:
                pools[u.backbone] = self._pool(u.backbone, log, progress)
            self.units[u.index] = replace(self.units[u.index], state=UnitState.DONE, seconds=0.0)
            bar.update(1)
        bar.close()
        return computed

    def run_elsewhere(self, units: list[Unit], progress: bool, log) -> int:
        """Compute `units` on the spec's executor: extractions and the strategies' choices here first (once per
        backbone; every job reads them), then the fits and fine-tunes as jobs of `units_per_task` units.
        Failed units are listed, and refused as one line after the others have finished."""
        spec, here = self.spec, [u for u in units if u.kind is UnitKind.EXTRACT]
        if here and spec.resources.extract_tasks:  # a job per backbone (of several tasks: sharded, merged by task 0)
            self._submit([u.index for u in here], log, tasks=spec.resources.extract_tasks)
        self.run(here, progress, log)  # (else) extracted here; the features read once for what follows
        rest = [u.index for u in units if u.kind is not UnitKind.EXTRACT]
        if not rest:
            return 0
        self._prepare([self.units[k] for k in rest], log)
        self._submit(rest, log)
        return len(rest)

    def _submit(self, indices: list[int], log, tasks: int | None = None) -> None:
        """Units `indices` on the spec's executor, each job of `units_per_task` of them (or, extractions given
        `tasks`, one job of that many tasks each); failed units listed, then refused in one line."""
        spec, study = self.spec, (self.out / "study.toml").resolve()
        self.cache_dir.mkdir(parents=True, exist_ok=True)  # every job checks that it sees it
        per, text = (1 if tasks else spec.resources.units_per_task), study.read_text()
        tasks = tasks or 1
        env = tuple((k, v) for k, v in os.environ.items() if k.startswith("FEATX_"))
        jobs = [UnitJob(str(study), record_hash({"study": text}, 16), str(self.cache_dir.resolve()),
                        tuple(indices[i:i + per]), _threads(spec), self.workers, spec.executor == "local",
                        os.getcwd(), env, tasks > 1) for i in range(0, len(indices), per)]
        folder = self.out / "jobs" / spec.executor
        log(f"{counted(len(indices), 'unit')} to {spec.executor}" + (f" ({spec.jobs} processes)" if spec.executor ==
            "local" else f" ({tasks} tasks each)" if tasks > 1 else "") + f" as {counted(len(jobs), 'job')}; logs "
            f"under {folder}")
        left = [len(indices)]

        def tell(o: Outcome) -> None:
            left[0] -= 1
            u = self.units[o.unit]
            log(f"  unit {o.unit} ({u.describe()}) " + (f"done on {o.host} in {o.seconds:.1f} s" if o.done else
                f"FAILED: {o.error}" + (f" (log: {o.log})" if o.log else "")) + f"; {left[0]} left")

        outcomes = run_jobs(jobs, spec.executor, spec.jobs, spec.resources, spec.ray_address, folder, tell, tasks)
        _save(folder / f"outcomes-{time.strftime('%Y%m%d-%H%M%S')}.json", [asdict(o) for o in outcomes])
        failed = [o.unit for o in outcomes if not o.done]
        if failed:
            raise FeatxError(f"{len(failed)} of {len(indices)} units failed (units {', '.join(map(str, failed))}, "
                             "listed above); the others are saved: re-run the same command to submit only these, "
                             "or featx study --gather to see what is in")

    def _prepare(self, units: list[Unit], log) -> None:
        """What the jobs would otherwise each compute alike: the images each strategy chooses, and the target
        site's features on each backbone (both saved, read by every job)."""
        for u in units:
            if u.method.labels not in (None, CLEANED):
                self._chosen(u.backbone, u.method.labels, u.budget.repeat)
        if self.site is not None:
            for backbone in dict.fromkeys(u.backbone for u in units if u.kind is UnitKind.FIT):
                self.site.features(backbone, self._pool_of(backbone), log)

    def _pool(self, backbone: str, log, progress: bool = False) -> Pool:
        """The backbone's cache (extracted when needed, its rate recorded), read once for all its fits."""
        from ..features.extraction import extract

        before = self.finished.get(backbone)  # as planned: the files were checked once, there
        started = time.perf_counter()
        store = extract(self.ds, backbone, weights=self.spec.weights, cache_dir=self.cache_dir, workers=self.workers,
                        precision=self.spec.precision, progress=progress, log=log)  # the study's Dataset: listed once
        if before is None and store.n_rows >= 32:
            self.throughput.record("extract", backbone, store.n_rows / (time.perf_counter() - started))
        pool = Pool(store, "train", self.evaluate_on)
        pool.images = store_images(store, self.evaluate_on)
        pool.evaluated = EvaluationSet.of(self.evaluate_on, store.paths(self.evaluate_on), store.sha1s(self.evaluate_on))
        pool.paths, pool.sha1s = np.asarray(store.paths("train")), np.asarray(store.sha1s("train"))
        pool.index = {p: i for i, p in enumerate(pool.paths)}
        return pool

    def _pool_of(self, backbone: str) -> Pool:
        """The backbone's Pool, read once (extracted first when needed, silently)."""
        if backbone not in self._pools:
            self._pools[backbone] = self._pool(backbone, lambda line: None)
        return self._pools[backbone]

    def _pool_rows(self, budget_rows, pool: Pool) -> np.ndarray:
        """A budget's rows (positions in the study's pool) as rows of the backbone's Pool."""
        return np.array([pool.index[p] for p in self._paths(budget_rows) if p in pool.index], int)

    def _fit(self, u: Unit, pool: Pool) -> int:
        key = u.key or self.fit_key(pool.store, pool.images, u.method, u.budget)
        path = self.out / "units" / f"{key}.json"
        if path.is_file():
            return 0
        curve = Curve(pool, u.method.head, threshold=self.spec.threshold, seed=self.spec.seed, n_boot=self.spec.n_boot)
        rows = self._pool_rows(self._budget(u).rows, pool)
        adapting, also = self._at_site(u, pool)
        record = curve.fit(Budget(u.budget.n, u.budget.repeat, rows), site=adapting, also=also)
        at_target = record.pop("also_proba", None)
        record.update(_eval_predictions(pool.evaluated, curve.y_eval, record.pop("proba")),
                      classes=list(pool.store.classes), eval_split=self.evaluate_on,
                      train_images=_trained_on(pool.paths[rows], pool.sha1s[rows]))
        self.throughput.record("fit", u.method.head, (len(rows), record["train_seconds"]))
        _save(path, record)
        if at_target is not None:
            features, _ = self.site.features(u.backbone, pool, lambda line: None)
            self.site.save_scores(key, StudySite.labelled_rows(features), at_target, record["threshold"])
        return 1

    def _at_site(self, u: Unit, pool: Pool, log=lambda line: None):
        """(the adaptation the unit's head gets, the target's labelled feature rows to score), each None where
        the study has no target, the head is not adapted, or no target image has a label."""
        if self.site is None:
            return None, None
        features, shift = self.site.features(u.backbone, pool, log)
        return (self.site.adapting(u.method, features, shift),
                features.X[features.labelled] if len(features.labelled) else None)

    def _target_scores(self, u: Unit, record: dict) -> dict | None:
        """The unit's scores at the target: kept beside it, or computed now (a head re-selected and fitted by its
        unit's own protocol, the same seed: the same model; a fine-tune's network run on the images)."""
        if self.site is None or not self.site.labelled:
            return None
        found = self.site.scores(u.key)
        if found is not None:
            return found
        if u.kind is UnitKind.FINETUNE:
            from ..artifacts.predictors import load

            files, labelled = self.site.labelled_images(self.ds.classes)
            proba, _ = load(self.out / record["artifact"]).image_proba(files, workers=self.workers)
            return self.site.save_scores(u.key, labelled, proba, record["threshold"])
        pool = self._pool_of(u.backbone)
        features, shift = self.site.features(u.backbone, pool, lambda line: None)
        curve = Curve(pool, u.method.head, threshold=self.spec.threshold, seed=self.spec.seed, n_boot=self.spec.n_boot)
        rows = self._pool_rows(self._budget(u).rows, pool)
        sel, cut = curve.select(Budget(u.budget.n, u.budget.repeat, rows), self.site.adapting(u.method, features, shift))
        return self.site.save_scores(u.key, StudySite.labelled_rows(features),
                                     sel.estimator.predict_proba(features.X[features.labelled]), cut)

    def _finetune(self, u: Unit, progress: bool, log) -> int:
        """A fine-tune on the budget alone: its validation cut from the budget by patient, the evaluation
        split as its test; resumed from its last epoch when a killed study left one. The study's own
        Dataset is handed down (listed once), and the predictions come back in memory."""
        from ..finetuning.runner import finetune  # torch: only when a fine-tune runs

        path = self.out / "units" / f"{u.key}.json"
        if path.is_file():
            return 0
        train, val = held_out(self._budget(u), self.ds.labels[self.pool], [self.ds.groups[i] for i in self.pool],
                              seed=self.spec.seed)
        rows = {"train": self.pool[train].tolist(), "val": self.pool[val].tolist(), HELD_OUT: self.eval_rows}
        folder = self.out / "finetunes" / u.key
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(folder / "budget.json", json.dumps(
            {s: [self.ds.paths[i] for i in r] for s, r in rows.items() if s != HELD_OUT}, indent=0) + "\n")
        options = self.spec.recipes()[u.method.recipe]
        config = FinetuneConfig.of({"backbone": u.backbone, "weights": self.spec.weights, "seed": self.spec.seed,
                                    **options})
        result = finetune(self.ds, config=config, threshold=self.spec.threshold, cache_dir=self.cache_dir,
                          out_dir=folder, resume=(folder / "last.pt").exists(), rows=rows, workers=self.workers,
                          progress=progress, log=log)
        trained = rows["train"] + rows["val"]
        _save(path, self._finetune_record(u, result, options, trained))
        (folder / "last.pt").unlink(missing_ok=True)  # done: model.pt is the unit's network, no resume is left
        return 1

    def _finetune_record(self, u: Unit, result, options: dict, trained: list[int]) -> dict:
        """The unit's record of a finished fine-tune (its rates recorded for later plans)."""
        test, history = result.predictions[HELD_OUT], result.history
        rate = sum(h["images_per_second"] * h["seconds"] for h in history) / max(sum(h["seconds"] for h in history),
                                                                                1e-9)
        record = unit_record(u.method, u.budget.n, len(trained), u.budget.repeat, test["y"], test["proba"],
                             result.threshold, {"best_epoch": result.best_epoch, "epochs_run": len(history), **options},
                             result.train_seconds, images_per_second=rate, n_boot=self.spec.n_boot,
                             seed=self.spec.seed)
        evaluated = EvaluationSet.of(self.evaluate_on, test["path"], test["sha1"])
        record.update(_eval_predictions(evaluated, test["y"], record.pop("proba")),
                      artifact=os.path.relpath(result.artifact, self.out), classes=list(self.ds.classes),
                      eval_split=self.evaluate_on, train_images=_trained_on(
                          [self.ds.paths[i] for i in trained], [self.sha1s[i] for i in trained]))
        size = options.get("image_size")
        self.throughput.record("train", u.backbone, rate, size)
        if result.predict_seconds_per_image:
            self.throughput.record("eval", u.backbone, 1 / result.predict_seconds_per_image, size)
        return record

    def _budget(self, u: Unit) -> Budget:
        """The unit's budget, rows as positions in the pool: drawn in the plan, or chosen now by its strategy."""
        if u.method.labels in (None, CLEANED):
            return u.budget
        chosen = self._chosen(u.backbone, u.method.labels, u.budget.repeat)[u.budget.n]
        position = {self.ds.paths[i]: k for k, i in enumerate(self.pool)}
        return Budget(u.budget.n, u.budget.repeat, np.sort([position[p] for p in chosen]))

    def _chosen(self, backbone: str, strategy: str, repeat: int) -> dict[int, list[str]]:
        """The paths a strategy labels at each size of one repeat, on the backbone's features: chosen once and
        saved (out/selections/), so a resumed study trains on the very images it chose before."""
        pool = self._pool_of(backbone)
        sizes = [n for n in self.sizes if n != "all" and n < len(self.pool)]
        key = record_hash({"features": pool.store.config["config_hash"], "images": pool.images, "strategy": strategy,
                           "sizes": sizes, "repeat": repeat, "seed": self.spec.seed}, 16)
        path = self.out / "selections" / f"{key}.json"
        if path.is_file():
            return {int(n): paths for n, paths in json.loads(path.read_text()).items()}

        def fit_proba(rows):
            return select_head("logreg", pool.X[rows], pool.y[rows], pool.groups[rows],
                               seed=self.spec.seed).estimator.predict_proba(pool.X)

        chosen = nested_selection(strategy, pool.X, pool.y, pool.groups, sizes, fit_proba=fit_proba,
                                  seed=self.spec.seed * 1000 + repeat)
        found = {n: pool.paths[rows].tolist() for n, rows in chosen.items()}
        _save(path, found)
        return found

    def _paths(self, pool_rows) -> list[str]:
        return [self.ds.paths[i] for i in self.pool[np.asarray(pool_rows, int)]]

    # -- the answer ------------------------------------------------------------------------------------
    def gather(self, partial: bool = False) -> tuple[list[dict], list[Unit]]:
        """(the saved record of every fit and fine-tune, in plan order (keys of fits known once extracted), the
        units not done): a unit not done is refused in one line, or with `partial` listed."""
        records, pools, self.gathered, missing = [], {}, [], []
        for u in self.units:
            if u.kind is UnitKind.EXTRACT:
                continue
            key = u.key
            if key is None:  # planned before its features existed
                if u.backbone not in pools:
                    store = self._finished(u.backbone)
                    pools[u.backbone] = store and (store, store_images(store, self.evaluate_on))
                key = pools[u.backbone] and self.fit_key(*pools[u.backbone], u.method, u.budget)
            path = self.out / "units" / f"{key}.json"
            if not path.is_file() and partial:
                missing.append(u)
                continue
            if not path.is_file():
                raise FeatxError(f"unit {u.index} ({u.describe()}) is not done: run featx study without --unit")
            record = _completed(json.loads(path.read_text()))
            # named by this study (a unit is shared by the recipes or studies asking it): the one name, never parsed
            record.update(method=u.method.label, method_id=u.method, eval_images=self.evaluation.key)
            at_target = self._target_scores(replace(u, key=key), record)
            if at_target is not None:
                record["target"] = at_target
            records.append(record)
            self.gathered.append((replace(u, key=key), record))
        return records, missing

    def site_shifts(self, log) -> list[dict]:
        """The train -> target shift on each frozen backbone's features (measured once, then read back)."""
        if self.site is None or not self.spec.heads:
            return []
        for backbone in self.spec.backbones:
            pool = self._pool_of(backbone)
            self.site.features(backbone, pool, log)
        return self.site.shifts()

    def site_transfer(self, log) -> list[dict]:
        """The transfer curves of every head trained on the whole pool (studies.site_transfer), kept once
        computed."""
        if not self.spec.target_sizes or self.site is None:
            return []
        rule = self.spec.threshold if isinstance(self.spec.threshold, str) else "youden"
        setting = {"rule": rule, "sizes": self.spec.target_sizes, "repeats": self.spec.repeats, "seed": self.spec.seed}
        records = []
        for backbone, head in ((b, h) for b in self.spec.backbones for h in self.spec.heads):
            pool = self._pool_of(backbone)
            found, _ = self.site.features(backbone, pool, log)
            rows = found.labelled
            key = {"features": pool.store.config["config_hash"], "pool": pool.images, "target": found.fingerprint,
                   "head": head, "rules": SELECTION_RULES, **setting}

            def compute(head=head, pool=pool, found=found, rows=rows):
                curve = Curve(pool, head, threshold=self.spec.threshold, seed=self.spec.seed, n_boot=self.spec.n_boot)
                sel, cut = curve.select(Budget(None, 0, np.arange(len(pool.y))))
                return transfer_records(sel, cut, pool.X, pool.y, found.X[rows], found.y[rows],
                                        np.asarray(found.groups)[rows], TransferSetting(head, **setting))
            method = MethodId(backbone, head, self.compute_words).label
            records += [{"method": method, "site": self.site.name, **r} for r in cached_transfer(self.out, key, compute)]
        return records

    # -- the model to use ------------------------------------------------------------------------------
    def keep_leader(self, log) -> Path | None:
        """The leader on the whole pool (n = all) as a model to use: a fine-tune unit's own artifact, or the
        head re-selected and fitted by its unit's own protocol (the same seed: the same model) and saved with
        its card under out/models/. None, said, when the study has no n = all."""
        full = [(u, r) for u, r in self.gathered if u.budget.n is None and r.get("roc_auc") is not None]
        if not full:
            log("no model saved: the study has no n=all units with a ROC-AUC (add all to --train-sizes)")
            return None
        unit, record = max(full, key=lambda pair: pair[1]["roc_auc"])
        tuned = unit.kind is UnitKind.FINETUNE
        path = self.out / record["artifact"] if tuned else self._saved_head(unit)
        chose, study = len(full) > 1, str(self.out / "study.toml")  # chose among methods: its figures favour it
        if record_choice(path, split=HELD_OUT if tuned else self.evaluate_on, dataset_split=self.evaluate_on,
                         methods=len(full), study=study) if chose else forget_choice(path, study=study):
            write_model_card(path)  # a re-run that chose it again rewrites nothing
        how = (f"the leader at n=all, {record['method']} (ROC-AUC {record['roc_auc']:.3f} on the {self.evaluate_on} "
               f"split, which chose it among {len(full)} methods, so read it as optimistic)" if chose else
               f"the study's only method at n=all, {record['method']} (ROC-AUC {record['roc_auc']:.3f} on the "
               f"{self.evaluate_on} split, which chose nothing)")
        log(f"{how}, is saved as {path} with its model card; use it: featx export --model {path}, or featx demo "
            f"--model {path}")
        return path

    def _saved_head(self, unit: Unit) -> Path:
        """The unit's head as a model: saved once (out/models/leader.json names it by the unit), then reused."""
        kept = self.out / "models" / "leader.json"
        known = json.loads(kept.read_text()) if kept.is_file() else {}
        name = unit.key + (f"@{self.target.fingerprint[:16]}" if self.target else "")  # a target changes its card
        path = self.out / "models" / known.get(name, "-")
        if name not in known or not path.is_file():
            path = self._save_head(unit)
            write_text_atomic(kept, json.dumps({**known, name: path.name}, indent=1) + "\n")
        return path

    def _save_head(self, unit: Unit) -> Path:
        """The unit's head on the whole pool, selected and fitted as the unit was, saved under out/models/."""
        from ..heads.fitting import evaluate_and_save

        pool = self._pool_of(unit.backbone)
        curve = Curve(pool, unit.method.head, threshold=self.spec.threshold, seed=self.spec.seed, n_boot=self.spec.n_boot)
        rows = self._pool_rows(unit.budget.rows, pool)
        adapting, _ = self._at_site(unit, pool)
        sel, cut = curve.select(Budget(None, unit.budget.repeat, rows), adapting)
        split = self.evaluate_on
        splits = {"train": (pool.y[rows], pool.paths[rows], pool.sha1s[rows]),
                  split: (curve.y_eval, pool.store.paths(split), pool.store.sha1s(split))}
        features = {"train": pool.X[rows], split: curve.X_eval}
        key = {"pca": None, "seed": self.spec.seed, "threshold": curve.rule, "out_of_core": False,
               "images": images_fingerprint(zip(pool.paths[rows], pool.sha1s[rows]))[:16],
               **({"excluded": self.exclusion} if unit.method.labels == CLEANED else {})}
        if self.site is not None:  # the card says where the model will be used, and how it scored there
            found, shift = self.site.features(unit.backbone, pool, lambda line: None)
            paths, sha1s, y = StudySite.labelled_rows(found)
            if len(y):
                splits["target"], features["target"] = (y, paths, sha1s), found.X[found.labelled]
            key["target"] = (adapting or SiteFit(found, shift)).record(pool.store.classes)
            if adapting is not None:
                key["adapted"] = [unit.method.adapted, found.fingerprint]
        path, _ = evaluate_and_save(curve.name, pool.store, sel, curve.rule, cut, splits,
                                    lambda s: sel.estimator.predict_proba(features[s]), self.out / "models", key)
        return path


@dataclass(frozen=True)
class UnitJob:
    """Some units of a study, run in a worker (studies.execution): by path and number, so that any executor can
    pickle it. The worker reads the study file the submitter wrote (refusing one it cannot see, or another one),
    plans once per process, and runs each unit exactly as `featx study --unit K` would: the same records."""

    study: str                # the study folder's study.toml, absolute
    digest: str               # its text's hash
    cache_dir: str
    units: tuple[int, ...]
    threads: int | None = None  # None: SLURM_CPUS_PER_TASK where Slurm sets it, else the libraries' own
    workers: int | None = None  # image loader processes (fine-tunes)
    quiet: bool = False       # local processes: the submitter says each unit
    cwd: str = "."            # the submitter's: relative weights paths mean the same
    env: tuple = ()           # the submitter's FEATX_ variables (the weights folder)
    distributed: bool = False  # one task of a job of several: an extraction sharded as under torchrun

    def __call__(self) -> list[Outcome]:
        set_threads(self.threads or int(os.environ.get("SLURM_CPUS_PER_TASK", "0")) or None)
        if self.distributed:  # RANK, WORLD_SIZE, MASTER_ADDR, ... from Slurm's (or submitit's) tasks
            from submitit.helpers import TorchDistributedEnvironment

            TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        os.environ.update(dict(self.env))
        if Path(self.cwd).is_dir():
            os.chdir(self.cwd)
        host, started = socket.gethostname(), time.time()
        study = Path(self.study)
        text = study.read_text() if study.is_file() and Path(self.cache_dir).is_dir() else None
        if text is None or record_hash({"study": text}, 16) != self.digest:
            why = (f"the worker on {host} cannot see {study.parent} or {self.cache_dir}" if text is None else
                   f"{study} changed since these units were submitted")
            return [Outcome(k, False, host, started=started, error=why + ": put the study folder (--out) and the "
                            "cache (--cache) on a filesystem every worker shares") for k in self.units]
        plan, setup = _worker_plan(study, text, self.cache_dir, self.workers)
        outcomes = []
        for k in self.units:
            began = time.perf_counter()
            log = (lambda line: None) if self.quiet else (lambda line, k=k: log_line(f"unit {k}: {line}"))
            try:
                plan.run([plan.unit(k)], False, log)
            except Exception as exc:  # noqa: BLE001 - this unit failed; the job's other units go on
                if not self.quiet:  # into the job's log (local processes: the submitter lists it in one line)
                    traceback.print_exc()
                outcomes.append(Outcome(k, False, host, started=started, error=one_line(exc)))
                continue
            outcomes.append(Outcome(k, True, host, time.perf_counter() - began, setup, started=started))
            setup = 0.0
        return outcomes


def _threads(spec: StudySpec) -> int | None:
    """Each job's threads: --cpus-per-task, else this machine's cores shared by the jobs it runs at once (local
    processes, submitit's local array), else None (Slurm's SLURM_CPUS_PER_TASK; Ray sets its own)."""
    if spec.resources.cpus:
        return spec.resources.cpus
    here = spec.jobs if spec.executor == "local" else local_parallelism(spec.resources) \
        if spec.executor == "slurm" and spec.resources.cluster == "local" else None
    return max(1, (os.cpu_count() or 1) // here) if here else None


_PLANS: dict[tuple, StudyRun] = {}  # a worker's plans, made once per process (a local or Ray worker runs many jobs)


def _worker_plan(study: Path, text: str, cache_dir: str, workers) -> tuple[StudyRun, float]:
    """(the study's plan in this worker, seconds spent making it now: 0 when made before)."""
    key = (str(study), text, cache_dir)
    if key in _PLANS:
        return _PLANS[key], 0.0
    began = time.perf_counter()
    _PLANS[key] = StudyRun.of(StudySpec.from_toml(study), Path(cache_dir), study.parent, workers)
    return _PLANS[key], time.perf_counter() - began


def _eval_predictions(evaluation: EvaluationSet, y, proba) -> dict:
    """The evaluation split's labels and probabilities in path order, and the key of its images (paths and
    contents): the verdict pairs two methods only on the same images."""
    order = evaluation.order()
    return {"eval_images": evaluation.key, "y": np.asarray(y)[order].tolist(),
            "proba": np.asarray(proba, float)[order].tolist()}  # as computed: a recomputed AUC gives the saved answer


def _trained_on(paths, sha1s) -> dict:
    """The images a unit was trained on, by path and content, and their fingerprint: anyone can check from the
    unit's file that no evaluation image was among them."""
    return {"images_sha256": images_fingerprint(zip(paths, sha1s)), "paths": list(map(str, paths)),
            "sha1": list(map(str, sha1s))}


def _completed(record: dict) -> dict:
    """A saved unit with every column: one saved before a metric was added gets it from its predictions."""
    missing = [c for c in COLUMNS if c not in record]
    if missing:
        y, proba = np.asarray(record["y"]), np.asarray(record["proba"])
        record = {**point_metrics(y, proba, record["threshold"]), **record}
        record.setdefault("images_per_second", record["n_images"] / max(record["train_seconds"], 1e-9))
    return record


def _save(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(record, default=float) + "\n")


TARGET_COLUMNS = ("roc_auc", "roc_auc_low", "roc_auc_high", "balanced_accuracy", "sensitivity", "specificity")


def _at_target(record: dict) -> dict:
    """A record's scores at the target site, as study.csv columns (none without a labelled target)."""
    found = record.get("target")
    return {f"target_{k}": found.get(k) for k in TARGET_COLUMNS} if found else {}


def _cell(value):
    return json.dumps(value, sort_keys=True) if isinstance(value, dict) else value
