"""`featx finetune`: train the registry's backbone end to end, comparable with the heads.

The model is `create_backbone(...)` (the very code extract uses) plus dropout and a linear
layer (models.network). Same preprocessing, same stored splits, same metrics, threshold rules
and artifact format as `featx fit`. Every epoch ends with atomic checkpoints: `last.pt`
(everything needed to resume) and, when validation loss improved, `best_weights.pt`. At the end
the best weights become the artifact `model.pt`, and `best_weights.pt` is removed (a resumed run
that improves on nothing more starts from `model.pt`). An epoch is seeded by (seed, epoch) and
each image's augmentation by (seed, epoch, image), so a resumed CPU run equals an uninterrupted
one, whatever the number of loader workers.

Under `torchrun --nproc_per_node N -m featx finetune ...` the model is wrapped in
DistributedDataParallel (gloo on CPU, nccl on GPUs, one GPU per process). `--batch-size` stays
the global batch (see finetuning.training). Differences left: float summation order, dropout
masks, and BatchNorm batch statistics on CPU (on GPUs BatchNorm is synchronised; SyncBatchNorm
has no CPU kernel). Validation and test are split between processes and gathered; only rank 0
logs and writes.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .._core import distributed
from .._core.atomic import write_text_atomic
from .._core.console import log_line
from .._core.errors import FeatxError
from .._core.hashing import images_fingerprint, record_hash
from .._core.options import check_options
from .._core.paths import default_cache_dir, file_safe
from .._core.runtime import (default_batch_size, default_workers, join_ranks, resolve_device, training_precision,
                             speaking)
from ..artifacts.format import build_sidecar, save_checkpoint_artifact
from ..artifacts.model_card import write_model_card
from ..artifacts.sidecar import feature_record
from ..data.datasets import SPLITS, Dataset, load_dataset
from ..data.leakage import check_dataset_copies
from ..data.decode_policy import DecodePolicy
from ..data.loading import ImageFiles
from ..data.transforms import EvalTransform, Normalize, TrainTransform
from ..evaluation.metrics import evaluate, evaluate_with_intervals
from ..features.identity import FeatureRecipe
from ..evaluation.thresholds import parse_threshold, resolve_threshold, rule_name
from ..models.backbones import Backbone, create_backbone
from ..models.frozen import channels_last
from ..models.network import FinetuneNetwork
from ..models.weight_files import ResolvedWeights, weights_identity
from ..models.weights import state_sha256
from . import checkpoints
from .averaging import WeightAverage
from .config import FinetuneConfig
from .curves import write_curves
from .freezing import backbone_groups, check_unfreeze, freeze, parameter_groups
from .head_init import load_probe_into_head
from .mixing import Mixing
from .starting import Parent, fine_tune_named, load_parent, read_parent
from .training import (Training, WeightedLoss, class_weights, epoch_batches, make_scheduler, predict_rows,
                       train_epoch, wrap_for_ranks)


@dataclass
class FinetuneResult:
    artifact: Path                 # model.pt, with its model.json sidecar
    metrics: dict                  # split -> featx.evaluate metrics, with the best weights
    history: list                  # one dict per epoch
    best_epoch: int
    threshold: float | None
    train_seconds: float
    stopped: str                   # why training ended
    predictions: dict = field(default_factory=dict)  # split -> {"path", "sha1", "y", "proba"}, as saved
    predict_seconds_per_image: float | None = None    # decoding included


def finetune(
    data,
    backbone: str = "xception",
    *,
    config: FinetuneConfig | None = None,
    threshold: str | float = 0.5,
    device: str = "auto",
    workers: int | None = None,
    val_fraction: float | None = None,
    group_pattern: str | None = None,
    cache_dir=None,
    out_dir=None,
    resume: bool = False,
    rows: dict[str, list[int]] | None = None,
    progress: bool = True,
    log=None,
    **options,
) -> FinetuneResult:
    """Fine-tune `backbone` on `data`, select the epoch on validation loss (or ROC-AUC), evaluate every split.

    `options`: what the network learns, FinetuneConfig's fields (declared there once, with their defaults and
    limits: weights, epochs, unfreeze, lr, layer_decay, ema, select, augment, image_size, seed, ...), or a
    whole `config`. weights: "imagenet", "random", a weights file, or a featx fine-tune of this backbone
    (finetuning.starting). unfreeze: "all", "none" (a linear probe trained by SGD), or "last:N" (the top N of
    timm's coarse parameter groups). init_head_from: a featx logreg artifact on this backbone's features
    (linear probe, then fine-tune; Kumar et al. 2022).
    data: a folder or manifest, or a loaded `Dataset` (a study lists its data once and passes it);
    rows: the dataset rows of each split to use instead of its own splits (`featx study` hands a label
    budget's train and validation parts, and its evaluation split as "test"). The result holds the
    predictions of every split, as saved with the artifact.
    """
    if config is not None and options:
        raise FeatxError(f"give featx.finetune a config or its options ({', '.join(sorted(options))}), not both")
    config = config or FinetuneConfig.of({"backbone": backbone, **options})
    parse_threshold(threshold)
    check_options(device=device)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    ds = data if isinstance(data, Dataset) else load_dataset(data, val_fraction=val_fraction,
                                                             group_pattern=group_pattern, seed=config.seed,
                                                             cache_dir=cache_dir)
    if config.dicom_window != "default" and not ds.has_dicom:
        raise FeatxError(f"--dicom-window applies to DICOM files, and {ds.root} has none")
    if "val" not in (rows or ds.splits):
        raise FeatxError(f"{ds.root} has no validation split: fine-tuning selects its epoch on one; "
                         "add --val-fraction 0.2 (cut by patient) or a val/ folder")
    sha1s = check_dataset_copies(ds)
    rank, n_ranks, device = join_ranks(device, gpu_backend="nccl")
    log, progress = speaking(rank, log or log_line, progress)
    torch_device = resolve_device(device)
    training_precision(torch_device, config.precision)  # bf16 where this device has none: refused before any work
    run = _set_up(config, ds, sha1s, torch_device, workers, rank, n_ranks, out_dir, cache_dir, rows, log)
    _start(run, resume, log)
    return _finish(run, _train(run, progress, log), threshold, log)


@dataclass
class _Run:
    """One fine-tuning run: its data, network, folder and progress so far."""

    config: FinetuneConfig
    ds: Dataset
    bb: Backbone
    rows: dict[str, list[int]]     # split -> dataset rows (train limited by --limit-train)
    record: dict                   # what the run's hash names
    config_hash: str
    out: Path
    training: Training
    groups: list[list[str]]        # timm's coarse parameter groups, bottom to top
    n_top: int                     # how many of them --unfreeze trains
    rank: int
    n_ranks: int
    parent: Parent | None = None   # the fine-tune it started from (--weights)
    state: dict = field(default_factory=lambda: {"epoch": 0, "history": [], "best_val_loss": math.inf,
                                                 "best_score": None, "best_epoch": 0, "bad_epochs": 0})
    skipped: dict = field(default_factory=dict)  # path -> why it could not be read

    def train_images(self) -> ImageFiles:
        """The dataset's images augmented for training, each seeded by (seed, epoch, row)."""
        transform = TrainTransform(self.bb.data_config, self.config.augment)
        return ImageFiles(self.ds.root, self.ds.paths, transform, seed=self.config.seed, policy=self.policy)

    def eval_images(self) -> ImageFiles:
        """The dataset's images through the checkpoint's eval transform, as extract feeds them."""
        return ImageFiles(self.ds.root, self.ds.paths, EvalTransform(self.bb.data_config), policy=self.policy)

    @property
    def policy(self) -> DecodePolicy:
        return _policy(self.config)


def _policy(config: FinetuneConfig) -> DecodePolicy:
    """How a fine-tune's files become pixels: Pillow, the DICOM window asked for."""
    return DecodePolicy.for_run("pil", dicom_window=config.dicom_window)


def _set_up(config: FinetuneConfig, ds: Dataset, sha1s: list[str], device: torch.device, workers, rank: int,
            n_ranks: int, out_dir, cache_dir: Path, rows: dict[str, list[int]] | None = None, log=None) -> _Run:
    """Build the network, name the run folder (by the configuration and the images' bytes, `sha1s`), and set
    up its optimizer, schedule and loss."""
    batch_size = config.batch_size or default_batch_size(device)
    if batch_size < n_ranks:
        raise FeatxError(f"--batch-size is the global batch and must be at least the {n_ranks} processes, "
                         f"got {batch_size}")
    if workers is None:  # on a CPU a decode process competes with training for cores: 0.79x vs 1.02x of bare
        workers = 0 if device.type == "cpu" else default_workers(device)
    bb, net, parent = _network(config, ds.classes, log or log_line)
    groups = parameter_groups(bb.model)
    n_top = check_unfreeze(config.unfreeze, len(groups), config.backbone)
    if config.init_head_from:
        load_probe_into_head(net, bb, config.init_head_from, ds.classes)
    rows = {s: sorted(map(int, r)) for s, r in rows.items()} if rows else _split_rows(ds, config)
    record = {**config.hashed(), "weights": weights_identity(config.weights),  # files by their bytes, not their path
              **({"init_head_from": weights_identity(config.init_head_from)} if config.init_head_from else {}),
              "recipe": _recipe(bb, config).to_dict(),
              "classes": ds.classes, "train_rows": record_hash(rows["train"], 16),
              "val_rows": record_hash(rows["val"], 16),
              "images": images_fingerprint((ds.paths[i], sha1s[i]) for s in ("train", "val") for i in rows[s])[:16]}
    if parent is not None:
        record["started_from"] = parent.record()
    config_hash = record_hash(record, 8)  # the images' bytes too: changed data never resumes an old run
    out = Path(out_dir) if out_dir else cache_dir / "models" / f"{file_safe(bb.spec.name)}-finetune-{config_hash}"
    out.mkdir(parents=True, exist_ok=True)
    training = _training(config, net, bb, ds.labels[rows["train"]], len(ds.classes), device, batch_size, workers,
                         len(rows["train"]), n_ranks)
    return _Run(config, ds, bb, rows, record, config_hash, out, training, groups, n_top, rank, n_ranks, parent)


def _recipe(bb: Backbone, config: FinetuneConfig) -> FeatureRecipe:
    """How the network sees an image: the backbone's identity, the evaluation TTA, the decoding."""
    return FeatureRecipe.of(bb.identity(), tta=config.tta, decode=_policy(config))


def _network(config: FinetuneConfig, classes: list[str], log) -> tuple[Backbone, FinetuneNetwork, Parent | None]:
    """The registry's backbone, built as extract builds it (trainable), with a seeded dropout+linear head;
    from a featx fine-tune named by --weights, its weights loaded (head too when the classes match)."""
    named = fine_tune_named(config.weights)
    parent = read_parent(named, config.backbone) if named else None
    if parent is not None and config.image_size not in (None, parent.image_size):
        raise FeatxError(f"--weights {parent.path} was fine-tuned at {parent.image_size or 'its native'} px; "
                         f"continue it at that size (drop --image-size {config.image_size})")
    bb = create_backbone(config.backbone, "random" if parent else config.weights,
                         image_size=parent.image_size if parent else config.image_size, frozen=False,
                         drop_path=config.drop_path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        net = FinetuneNetwork(bb.model, bb.num_features, len(classes), config.dropout)
    if parent is not None:
        load_parent(net, parent, classes, log)
        bb.data_config = parent.data_config  # as the parent was fed
        bb.weights = ResolvedWeights("finetune", parent.path, parent.sha256, {}, f"featx fine-tune {parent.path}")
        bb.weights_sha256 = state_sha256(bb.model)
    return bb, net, parent


def _split_rows(ds: Dataset, config: FinetuneConfig) -> dict[str, list[int]]:
    """Each split's dataset rows; train is a seeded random subset under --limit-train."""
    rows = {s: [i for i, sp in enumerate(ds.splits) if sp == s] for s in SPLITS if s in ds.splits}
    if config.limit_train and config.limit_train < len(rows["train"]):
        rng = np.random.default_rng(config.seed)
        rows["train"] = sorted(rng.choice(rows["train"], size=config.limit_train, replace=False).tolist())
    return rows


def _training(config: FinetuneConfig, net: FinetuneNetwork, bb: Backbone, train_labels: np.ndarray, k: int,
              device: torch.device, batch_size: int, workers: int, n_train: int, n_ranks: int) -> Training:
    """The network on its device, with AdamW (backbone and head learning rates), the schedule and the loss."""
    if n_ranks > 1 and device.type == "cuda":  # batch statistics over the global batch, as in one process
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    net = net.to(device)
    if channels_last(net, device):
        net = net.to(memory_format=torch.channels_last)
    weight = class_weights(train_labels, k) if config.class_weight == "balanced" else torch.ones(k)
    groups = backbone_groups(net.backbone, config.lr, config.weight_decay, config.layer_decay)
    optimizer = torch.optim.AdamW([*groups, {"params": list(net.head.parameters()), "lr": config.head_lr,
                                             "name": "head"}], weight_decay=config.weight_decay)
    steps_per_epoch = len(epoch_batches(n_train, batch_size, config.seed, 0))
    scheduler = make_scheduler(optimizer, config.schedule, config.epochs * steps_per_epoch,
                               [g["lr"] for g in optimizer.param_groups])
    precision = training_precision(device, config.precision)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "amp-fp16")
    average = WeightAverage(net, config.ema) if config.ema else None
    mixing = Mixing(config.mixup, config.cutmix, config.label_smoothing, k) if config.mixup or config.cutmix else None
    return Training(net, optimizer, scheduler, scaler, WeightedLoss(weight.to(device), config.label_smoothing),
                    Normalize(bb.data_config).to(device), device, precision, batch_size, workers, config.seed,
                    config.clip_grad, trainer=net, average=average, mixing=mixing, tta=config.tta,
                    channels_last=channels_last(net, device))


def _start(run: _Run, resume: bool, log) -> None:
    """A new run, or the state of an interrupted one; the run's config.json (rank 0)."""
    last = run.out / "last.pt"
    if not resume and last.exists():
        raise FeatxError(f"{run.out} already holds a run of this configuration; add --resume to continue it, "
                         "or delete the folder to start over")
    checkpoints.check_space(run.out, run.training.net)  # every rank, so that all stop together
    if resume:
        run.state = checkpoints.resume(last, run.config_hash, run.training)
    c, t, bb = run.config, run.training, run.bb
    log(f"fine-tuning {bb.spec.name} ({bb.weights_source}) on {t.device}"
        + (f" x {run.n_ranks} processes" if run.n_ranks > 1 else "") + f": {len(run.rows['train'])} train / "
        f"{len(run.rows['val'])} val images, {bb.data_config['input_size'][1]} px, batch {t.batch_size}, "
        f"unfreeze {c.unfreeze}" + (f", layer decay {c.layer_decay:g}" if c.layer_decay else "")
        + f", {c.epochs} epochs, selected by {selection(c)} -> {run.out}"
        + (f"; resuming after epoch {run.state['epoch']}" if resume else ""))
    for line in run.ds.notes():
        log(line)
    if run.rank == 0:
        write_text_atomic(run.out / "config.json",
                          json.dumps({**run.record, "config_hash": run.config_hash}, indent=2) + "\n")


def _train(run: _Run, progress: bool, log) -> str:
    """Epochs until the last one or early stopping; returns why training ended."""
    train_images, val_images = run.train_images(), run.eval_images()
    trains = None
    for epoch in range(run.state["epoch"], run.config.epochs):
        head_only = epoch < run.config.warmup_epochs
        freeze(run.training.net, run.groups, "none" if head_only else run.config.unfreeze, run.n_top)
        if run.n_ranks > 1 and trains != (now := [p.requires_grad for p in run.training.net.parameters()]):
            run.training.trainer, trains = wrap_for_ranks(run.training.net, run.training.device), now
        _epoch(run, epoch, head_only, train_images, val_images, progress, log)
        if run.state["bad_epochs"] >= run.config.patience and epoch + 1 < run.config.epochs:
            return f"early stop: {selection(run.config)} did not improve for {run.config.patience} epochs"
    return f"ran all {run.config.epochs} epochs"


def _epoch(run: _Run, epoch: int, head_only: bool, train_images: ImageFiles, val_images: ImageFiles,
           progress: bool, log) -> None:
    """Train one epoch, score it on validation, checkpoint (rank 0) and log it."""
    c, t, state, epochs = run.config, run.training, run.state, run.config.epochs
    started = time.perf_counter()
    train_loss, train_acc, seen = train_epoch(t, train_images, run.rows["train"], run.ds.labels, epoch,
                                              progress=progress, desc=f"epoch {epoch + 1}/{epochs}",
                                              skipped=run.skipped)
    seconds = time.perf_counter() - started
    if not math.isfinite(train_loss):
        if run.rank == 0:
            checkpoints.write_history(run.out, state["history"])
        best = f"the best checkpoint (epoch {state['best_epoch']}) is kept in {run.out}" if state["best_epoch"] else \
            "no checkpoint was kept"
        raise FeatxError(f"the training loss became {train_loss} in epoch {epoch + 1}; stopped. Lower --lr or "
                         f"--head-lr; {best}")
    started = time.perf_counter()
    val = _validate(run, val_images, t.net)
    entry = {"epoch": epoch + 1, "train_loss": train_loss, "train_accuracy": train_acc, "val_loss": val["log_loss"],
             "val_accuracy": val["accuracy"], "val_roc_auc": val["roc_auc"]}
    chosen, selected_net = val, t.net
    if t.average is not None:  # the averaged weights, scored beside the raw ones; they are the ones selected
        chosen, selected_net = _validate(run, val_images, t.average.module), t.average.module
        entry.update(ema_val_loss=chosen["log_loss"], ema_val_accuracy=chosen["accuracy"],
                     ema_val_roc_auc=chosen["roc_auc"])
    state["history"].append({
        **entry, "lr_backbone": max(g["lr"] for g in t.optimizer.param_groups[:-1]),
        "lr_head": t.optimizer.param_groups[-1]["lr"], "seconds": seconds,
        "images_per_second": seen / max(seconds, 1e-9), "val_seconds": time.perf_counter() - started,
        "phase": "head only" if head_only else f"unfreeze {c.unfreeze}"})
    score = selection_score(c.select, chosen["log_loss"], chosen["roc_auc"])
    improved = state.get("best_score") is None or score > state["best_score"]
    if improved:
        state.update(best_score=score, best_val_loss=chosen["log_loss"], best_epoch=epoch + 1, bad_epochs=0)
        if run.rank == 0:
            checkpoints.save_weights(run.out / "best_weights.pt", selected_net)
    else:
        state["bad_epochs"] += 1
    state["epoch"] = epoch + 1
    if run.rank == 0:
        checkpoints.save_last(run.out / "last.pt", run.config_hash, t, state)
        checkpoints.write_history(run.out, state["history"])
    log(f"epoch {epoch + 1}/{epochs}: train loss {train_loss:.4f}, {_scores('val', val)}"
        + (f"; {_scores('EMA', chosen)}" if t.average is not None else "")
        + f", {state['history'][-1]['images_per_second']:.1f} img/s" + (" (best)" if improved else ""))


def _validate(run: _Run, val_images: ImageFiles, net: nn.Module) -> dict:
    proba, y, _, _ = predict_rows(run.training, val_images, run.rows["val"], run.ds.labels, run.skipped, net)
    return evaluate(y, proba, run.ds.classes)


def _scores(name: str, metrics: dict) -> str:
    auc = "-" if metrics["roc_auc"] is None else f"{metrics['roc_auc']:.3f}"
    return f"{name} loss {metrics['log_loss']:.4f}, {name} acc {metrics['accuracy']:.3f}, {name} AUC {auc}"


def selection_score(select: str, loss: float, auc: float | None) -> list[float]:
    """What an epoch is selected by, larger better: [-loss], or [ROC-AUC, -loss] (ties to the lower loss;
    an epoch without an AUC, a validation split of one class, ranks below any with one)."""
    if select == "auc":
        return [-math.inf if auc is None else float(auc), -float(loss)]
    return [-float(loss)]


def selection(config: FinetuneConfig) -> str:
    """The selection rule in words, as the sidecar and the log say it."""
    weights = "the weight average (EMA %g)" % config.ema if config.ema else "the trained weights"
    return f"validation {'ROC-AUC' if config.select == 'auc' else 'loss'} of {weights}"


def _finish(run: _Run, stopped: str, threshold, log) -> FinetuneResult:
    """Evaluate the best weights on every split, choose the threshold on validation, save the artifact."""
    t, state = run.training, run.state
    distributed.barrier()  # rank 0 has written best_weights.pt
    best = run.out / "best_weights.pt"
    if not best.exists():  # a finished run resumed: its best weights are already the artifact
        best = run.out / "model.pt"
    t.net.load_state_dict(torch.load(best, map_location=t.device, weights_only=True))
    eval_images, predictions = run.eval_images(), {}
    started = time.perf_counter()
    for split, rows in run.rows.items():
        proba, y, done, sha1 = predict_rows(t, eval_images, rows, run.ds.labels, run.skipped)
        predictions[split] = {"path": [run.ds.paths[r] for r in done], "sha1": sha1, "y": y, "proba": proba}
    predict_seconds = (time.perf_counter() - started) / max(1, sum(len(p["y"]) for p in predictions.values()))
    run.skipped = {path: reason for part in distributed.gather(run.skipped) for path, reason in part.items()}
    k = len(run.ds.classes)
    cut = resolve_threshold(threshold, predictions["val"]["y"], predictions["val"]["proba"], k)
    metrics = {s: evaluate_with_intervals(p["y"], p["proba"], run.ds.classes, cut if cut is not None else 0.5)
               for s, p in predictions.items()}
    train_seconds = sum(h["seconds"] for h in state["history"])  # resumed epochs included
    result = FinetuneResult(run.out / "model.pt", metrics, state["history"], state["best_epoch"], cut, train_seconds,
                            stopped, predictions, predict_seconds)
    if run.rank == 0:
        _save(run, threshold, cut, metrics, predictions, train_seconds, predict_seconds, stopped, log)
    return result


def _save(run: _Run, threshold, cut, metrics: dict, predictions: dict, train_seconds: float,
          predict_seconds: float, stopped: str, log) -> None:
    """The artifact (model.pt + model.json + predictions), curves.png and metrics.json; rank 0 only."""
    bb, state = run.bb, run.state
    write_curves(run.out, state["history"], log, state["best_epoch"])
    recipe = _recipe(bb, run.config)
    config = {**recipe.to_dict(), **bb.weights.record(), "backbone_options": bb.options(),
              "precision": run.training.precision, "dtype": "float32", "data_root": str(run.ds.root),
              "dataset_key": run.ds.key, "group_pattern": run.ds.group_pattern, "group_source": run.ds.group_source,
              "patients": run.ds.patients({s: list(r) for s, r in run.rows.items()})}
    features = feature_record(config, num_features=bb.num_features)
    params = {k: v for k, v in run.config.record().items() if k not in ("backbone", "weights")}
    info = build_sidecar(kind="finetune", head="finetune", params=params, classes=run.ds.classes, threshold=cut,
                         threshold_rule=rule_name(threshold), features=features, metrics=metrics,
                         train_seconds=train_seconds, predict_seconds_per_image=predict_seconds,  # decoding included
                         packages=("torch", "timm", "numpy"), best_epoch=state["best_epoch"], stopped=stopped,
                         history=state["history"], config_hash=run.config_hash, skipped=run.skipped,
                         selected_by=selection(run.config),
                         started_from=run.parent.described() if run.parent else None)
    artifact = save_checkpoint_artifact(run.out / "model.pt", checkpoints.cpu_state(run.training.net), info,
                                        predictions)
    (run.out / "best_weights.pt").unlink(missing_ok=True)  # model.pt now holds the same weights
    write_model_card(artifact)
    write_text_atomic(run.out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    if run.skipped:
        log(f"skipped {len(run.skipped)} unreadable images: "
            + "; ".join(f"{p}: {r}" for p, r in list(run.skipped.items())[:5]))
    log(f"best epoch {state['best_epoch']} ({stopped}); model -> {artifact}")
