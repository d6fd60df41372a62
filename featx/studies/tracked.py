"""A study's units as tracked runs (`--track mlflow`, _core.tracking): one run per unit, named by its method,
n and repeat, with what the unit measured, its file, and a fine-tune's curves and epochs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from .._core.hashing import lines_hash
from .._core.tracking import Run, Tracking, log_runs
from .label_curves import COLUMNS
from .plan import Unit, UnitKind

METRICS = tuple(c for c in COLUMNS if c not in ("method", "n", "n_images", "repeat", "params"))
TARGET = ("roc_auc", "roc_auc_low", "roc_auc_high", "balanced_accuracy", "sensitivity", "specificity")
EPOCHS = ("train_loss", "val_loss", "val_roc_auc", "ema_val_loss", "ema_val_roc_auc")


def study_tracking(spec, out: Path) -> Tracking | None:
    """The study's tracking: one experiment per study folder ("featx study PARENT/NAME")."""
    folder = Path(out).resolve()
    return Tracking.asked(spec.track, spec.tracking_uri, f"featx study {folder.parent.name}/{folder.name}")


def track_units(tracking: Tracking, out: Path, gathered: list[tuple[Unit, dict]], spec) -> int:
    """Log every gathered unit not logged before; how many were logged now."""
    return log_runs(tracking, out, [_run(u, record, Path(out), spec) for u, record in gathered])


def track_study(result, files) -> None:
    """The gathered study as one run beside its units' (when its spec tracks): its table, file, report and
    curves (`files`), keyed by its table, so a study whose results changed is logged again."""
    tracking = study_tracking(result.spec, result.out)
    if tracking is None:
        return
    out = Path(result.out)
    table = out / "study.csv"
    params = {"units": len(result.records), "split": result.split, "leader": result.leader and Path(result.leader).name}
    log_runs(tracking, out, [Run(f"study:{lines_hash(table.read_text().splitlines())}", "study", params, {},
                                 (table, out / "study.toml", *files), {"featx.kind": "study"})])


def _run(u: Unit, record: dict, out: Path, spec) -> Run:
    m, chosen = u.method, dict(record["params"])
    outcome = {k: chosen.pop(k) for k in ("best_epoch", "epochs_run") if k in chosen}  # a fine-tune's, not its recipe
    params = {"method": m.label, "backbone": m.backbone, "head": m.head, "n": u.budget.n or "all",
              "n_images": record["n_images"], "repeat": u.budget.repeat, "strategy": m.labels or "random",
              "recipe": m.recipe, "adapted": m.adapted, "eval_split": record.get("eval_split"), "seed": spec.seed,
              "threshold_rule": spec.threshold, "unit": u.index, "unit_key": u.key,
              ("options" if m.finetuned else "chosen"): json.dumps(chosen, sort_keys=True), **outcome}
    metrics = {k: record.get(k) for k in METRICS}
    metrics.update({f"target_{k}": record["target"].get(k) for k in TARGET if record.get("target")})
    artifacts, history = [out / "units" / f"{u.key}.json"], {}
    if u.kind is UnitKind.FINETUNE:
        folder = out / "finetunes" / u.key
        artifacts.append(folder / "curves.png")
        history = _epochs(folder / "history.csv")
    return Run(f"unit:{u.key}", f"{m.label} n={u.budget.n or 'all'} r{u.budget.repeat}", params, metrics,
               tuple(artifacts), {"featx.study": str(out.resolve()), "featx.kind": u.kind.value}, history)


def _epochs(path: Path) -> dict[str, list[float]]:
    """A fine-tune's epochs (history.csv) as stepped metrics."""
    if not path.is_file():
        return {}
    rows = list(csv.DictReader(open(path)))
    return {k: [float(r[k]) if r.get(k) not in (None, "") else float("nan") for r in rows]
            for k in EPOCHS if rows and k in rows[0]}
