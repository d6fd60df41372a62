"""`featx.track`: a fit's heads, a fine-tune or a comparison logged as MLflow runs (`--track mlflow` on fit,
finetune and compare), the same way a study logs its units: one run per model (or per compared method), its
choices as parameters, every metric with its 95% interval, the files that make it up as artifacts."""

from __future__ import annotations

import json
from pathlib import Path

from .._core.hashing import record_hash
from .._core.tracking import Run, Tracking, log_runs
from ..studies.tracked import EPOCHS

SHOWN = ("roc_auc", "balanced_accuracy", "sensitivity", "specificity", "accuracy", "f1", "pr_auc")


def track(result, *, tracking_uri: str | None = None, experiment: str | None = None, folder=None) -> dict:
    """Log `result` (featx.fit's list of FitResult, featx.finetune's FinetuneResult, or featx.compare's
    records) to MLflow at `tracking_uri` (None: sqlite beside the models, or in `folder`), in `experiment`
    (None: "featx fit", "featx finetune" or "featx compare"): {"logged": runs logged now (a run already
    logged is not logged twice), "uri", "experiment"}."""
    from ..finetuning.runner import FinetuneResult  # torch: only where a fine-tune is tracked

    if isinstance(result, FinetuneResult):
        kind, runs, where = "finetune", [_finetune(result)], Path(result.artifact).parent.parent
    elif result and isinstance(result, list) and isinstance(result[0], dict):
        kind, runs, where = "compare", [_compared(r) for r in result], Path(result[0]["artifact"]).parent
    else:
        kind, runs = "fit", [_fit(r) for r in result]
        where = Path(result[0].artifact).parent if result else Path(".")
    tracking = Tracking.asked("mlflow", tracking_uri, experiment or f"featx {kind}")
    where = Path(folder) if folder else where
    return {"logged": log_runs(tracking, where, runs), "uri": tracking.where(where), "experiment": tracking.experiment}


def _split_metrics(metrics: dict) -> dict:
    """{split_metric, split_metric_low, split_metric_high} of featx.evaluate's metrics per split."""
    out = {}
    for split, m in metrics.items():
        for k in SHOWN:
            out[f"{split}_{k}"] = m.get(k)
            low, high = (m.get("ci") or {}).get(k, (None, None))
            out.update({f"{split}_{k}_low": low, f"{split}_{k}_high": high})
    return out


def _siblings(artifact: Path) -> tuple:
    """The model's own files: the artifact, its sidecar and its card (not its predictions)."""
    return (artifact, artifact.with_suffix(".json"), artifact.with_suffix(".md"))


def _fit(r) -> Run:
    artifact = Path(r.artifact)
    return Run(f"fit:{artifact.name}", artifact.stem, {"head": r.head, "chosen": json.dumps(r.params, sort_keys=True),
               "selection": r.selection, "threshold": r.threshold, "artifact": str(artifact)},
               {**_split_metrics(r.metrics), "train_seconds": r.train_seconds}, _siblings(artifact),
               {"featx.kind": "fit"})


def _finetune(r) -> Run:
    artifact, folder = Path(r.artifact), Path(r.artifact).parent
    history = {k: [h.get(k) for h in r.history] for k in EPOCHS if r.history and k in r.history[0]}
    params = {"best_epoch": r.best_epoch, "stopped": r.stopped, "threshold": r.threshold, "artifact": str(artifact)}
    sidecar = artifact.with_suffix(".json")
    if sidecar.is_file():
        params["options"] = json.dumps(json.loads(sidecar.read_text()).get("params", {}), sort_keys=True)
    return Run(f"finetune:{folder.name}:{r.best_epoch}:{len(r.history)}", folder.name, params,
               {**_split_metrics(r.metrics), "train_seconds": r.train_seconds}, (folder / "curves.png",
               folder / "history.csv", sidecar, artifact.with_suffix(".md")), {"featx.kind": "finetune"}, history)


def _compared(r: dict) -> Run:
    metrics = {k: r.get(k) for k in SHOWN}
    for k in SHOWN:
        low, high = r.get(f"{k}_ci") or (None, None)
        metrics.update({f"{k}_low": low, f"{k}_high": high})
    metrics.update({k: r.get(k) for k in ("p_delong", "p_delong_holm", "p_mcnemar", "p_mcnemar_holm", "train_seconds",
                                          "predict_seconds_per_image")})
    shown = {k: metrics[k] for k in metrics if metrics[k] is not None}
    key = record_hash({"artifact": str(r["artifact"]), "split": r["split"], "metrics": shown}, 16)
    return Run(f"compare:{key}", f"{r['method']} on {r['split']}", {"method": r["method"], "split": r["split"],
               "n": r.get("n"), "artifact": str(r["artifact"]), "ranked": r.get("ranked"), "note": r.get("note") or None},
               metrics, (), {"featx.kind": "compare"})
