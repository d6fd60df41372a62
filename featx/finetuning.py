"""`featx finetune`: train the registry's backbone end to end, comparable with the heads.

The model is `create_backbone(...)` (the very code extract uses) plus dropout and a linear
layer. Same preprocessing, same stored splits, same metrics, threshold rules and artifact
format as `featx fit`. Every epoch ends with atomic checkpoints: `last.pt` (everything needed
to resume) and, when validation loss improved, `best_weights.pt`. At the end the best weights
become the artifact `model.pt`, and `best_weights.pt` is removed (a resumed run that improves on
nothing more starts from `model.pt`). An epoch
is seeded by (seed, epoch) and each image's augmentation by (seed, epoch, image), so a resumed
CPU run equals an uninterrupted one, whatever the number of loader workers.

Under `torchrun --nproc_per_node N -m featx finetune ...` the model is wrapped in
DistributedDataParallel (gloo on CPU, nccl on GPUs, one GPU per process). `--batch-size` stays
the global batch: every process takes its share of each batch of the single-process schedule
and the loss is normalised by the whole batch's class weights, so the gradient step is the
single-process one. Differences left: float summation order, dropout masks, and BatchNorm
batch statistics on CPU (on GPUs BatchNorm is synchronised; SyncBatchNorm has no CPU kernel).
Validation and test are split between processes and gathered; only rank 0 logs and writes.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from .artifacts import save_checkpoint_artifact
from .atomic import atomic_path, write_text_atomic
from .backbones import Backbone, create_backbone
from .data import SPLITS, default_cache_dir, file_safe, load_dataset
from .console import log_line
from .errors import FeatxError
from .extraction import default_batch_size, default_workers, resolve_device, sha1_file
from .imaging import AUGMENTATIONS, DECODE_POLICY, EvalTransform, ImageError, Normalize, TrainTransform, load_image
from .metrics import choose_threshold, evaluate, parse_threshold

SCHEDULES = ("cosine", "onecycle")


class ImageClassifierNet(nn.Module):
    """Backbone -> dropout -> linear: the fine-tuned model. `backbone` is exactly extract's module."""

    def __init__(self, backbone: nn.Module, num_features: int, num_classes: int, dropout: float = 0.2):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(num_features, num_classes)

    def forward(self, x):
        return self.head(self.dropout(self.backbone(x)))


@dataclass
class FinetuneResult:
    artifact: Path                 # model.pt, with its model.json sidecar
    metrics: dict                  # split -> featx.evaluate metrics, with the best weights
    history: list                  # one dict per epoch
    best_epoch: int
    threshold: float | None
    train_seconds: float
    stopped: str                   # why training ended


def finetune(
    data,
    backbone: str = "xception",
    *,
    weights: str = "imagenet",
    epochs: int = 10,
    unfreeze: str = "all",
    warmup_epochs: int = 0,
    init_head_from=None,
    lr: float = 1e-4,
    head_lr: float = 1e-3,
    weight_decay: float = 0.05,
    schedule: str = "cosine",
    clip_grad: float = 1.0,
    label_smoothing: float = 0.0,
    class_weight: str = "balanced",
    dropout: float = 0.2,
    patience: int = 3,
    augment: str = "xray",
    image_size: int | None = None,
    limit_train: int | None = None,
    batch_size: int | None = None,
    threshold: str | float = 0.5,
    seed: int = 0,
    device: str = "auto",
    workers: int | None = None,
    val_fraction: float | None = None,
    group_pattern: str | None = None,
    cache_dir=None,
    out_dir=None,
    resume: bool = False,
    progress: bool = True,
    log=None,
) -> FinetuneResult:
    """Fine-tune `backbone` on `data`, select the epoch on validation loss, evaluate every split.

    unfreeze: "all", "none" (a linear probe trained by SGD), or "last:N" (the top N of timm's
    coarse parameter groups: blocks or stages). warmup_epochs trains the head alone first.
    init_head_from: a featx logreg artifact on this backbone's features (linear probe, then
    fine-tune; Kumar et al. 2022). limit_train and image_size make quick CPU runs possible.
    """
    log = log or log_line
    args = dict(backbone=backbone, weights=weights, epochs=epochs, unfreeze=unfreeze, warmup_epochs=warmup_epochs,
                init_head_from=str(init_head_from) if init_head_from else None, lr=lr, head_lr=head_lr,
                weight_decay=weight_decay, schedule=schedule, clip_grad=clip_grad, label_smoothing=label_smoothing,
                class_weight=class_weight, dropout=dropout, patience=patience, augment=augment, image_size=image_size,
                limit_train=limit_train, batch_size=batch_size, seed=seed)
    _check_args({**args, "threshold": threshold})
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    ds = load_dataset(data, val_fraction=val_fraction, group_pattern=group_pattern, seed=seed, cache_dir=cache_dir)
    if "val" not in ds.splits:
        raise FeatxError(f"{ds.root} has no validation split: fine-tuning selects its epoch on one; "
                         "add --val-fraction 0.2 (cut by patient) or a val/ folder")
    rank, n_ranks, local_rank = distributed.world()
    if n_ranks > 1:  # under torchrun: one GPU per process; rank 0 logs and writes
        if device in ("auto", "cuda") and torch.cuda.is_available():
            device = f"cuda:{local_rank}"
            torch.cuda.set_device(local_rank)
        distributed.init("nccl" if device.startswith("cuda") else "gloo")
        if rank:
            log, progress = (lambda message: None), False
    torch_device = resolve_device(device)
    batch_size = batch_size or default_batch_size(torch_device)
    if batch_size < n_ranks:
        raise FeatxError(f"--batch-size is the global batch and must be at least the {n_ranks} processes, "
                         f"got {batch_size}")
    if workers is None:  # on a CPU a decode process competes with training for cores: 0.79x vs 1.02x of bare
        workers = 0 if torch_device.type == "cpu" else default_workers(torch_device)

    bb = create_backbone(backbone, weights, frozen=False)
    if image_size:
        bb.data_config = {**bb.data_config, "input_size": [3, image_size, image_size]}
    k = len(ds.classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = ImageClassifierNet(bb.model, bb.num_features, k, dropout)
    groups = _parameter_groups(bb.model)
    n_top = _check_unfreeze(unfreeze, len(groups), backbone)
    if init_head_from:
        _init_head(net, bb, init_head_from, ds.classes)

    rows = {s: [i for i, sp in enumerate(ds.splits) if sp == s] for s in SPLITS if s in ds.splits}
    if limit_train and limit_train < len(rows["train"]):
        rng = np.random.default_rng(seed)
        rows["train"] = sorted(rng.choice(rows["train"], size=limit_train, replace=False).tolist())
    labels = np.asarray(ds.labels)
    config = {**args, "identity": {**bb.identity(), "data_config": bb.data_config}, "classes": ds.classes,
              "data_root": str(ds.root), "train_rows": _digest(rows["train"]), "val_rows": _digest(rows["val"])}
    config_hash = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]
    out = Path(out_dir) if out_dir else cache_dir / "models" / f"{file_safe(bb.spec.name)}-finetune-{config_hash}"
    out.mkdir(parents=True, exist_ok=True)

    if n_ranks > 1 and torch_device.type == "cuda":  # batch statistics over the global batch, as in one process
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    net = net.to(torch_device)
    if torch_device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    normalize = Normalize(bb.data_config).to(torch_device)
    train_set = _Images(ds, rows["train"], TrainTransform(bb.data_config, augment), seed=seed)
    eval_tf = EvalTransform(bb.data_config)
    weight = _class_weights(labels[rows["train"]], k) if class_weight == "balanced" else torch.ones(k)
    loss_fn = _Loss(weight.to(torch_device), label_smoothing)
    head_params = list(net.head.parameters())
    optimizer = torch.optim.AdamW([{"params": list(net.backbone.parameters()), "lr": lr, "name": "backbone"},
                                   {"params": head_params, "lr": head_lr, "name": "head"}], weight_decay=weight_decay)
    steps_per_epoch = len(_epoch_batches(len(rows["train"]), batch_size, seed, 0))
    scheduler = _scheduler(optimizer, schedule, epochs * steps_per_epoch, [lr, head_lr])
    precision = "fp32"
    if torch_device.type == "cuda":
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")

    state = {"epoch": 0, "history": [], "best_val_loss": math.inf, "best_epoch": 0, "bad_epochs": 0}
    last = out / "last.pt"
    if not resume and last.exists():
        raise FeatxError(f"{out} already holds a run of this configuration; add --resume to continue it, "
                         "or delete the folder to start over")
    if resume:
        state = _resume(last, config_hash, net, optimizer, scheduler, scaler)
    log(f"fine-tuning {bb.spec.name} ({bb.weights_source}) on {torch_device}"
        + (f" x {n_ranks} processes" if n_ranks > 1 else "") + f": {len(rows['train'])} train / "
        f"{len(rows['val'])} val images, {bb.data_config['input_size'][1]} px, batch {batch_size}, "
        f"unfreeze {unfreeze}, {epochs} epochs -> {out}" + (f"; resuming after epoch {state['epoch']}" if resume else ""))
    if rank == 0:
        write_text_atomic(out / "config.json", json.dumps({**config, "config_hash": config_hash}, indent=2) + "\n")
    skipped: dict[str, str] = {}
    stopped = f"ran all {epochs} epochs"
    trainer, trains = net, None
    for epoch in range(state["epoch"], epochs):
        head_only = epoch < warmup_epochs
        _freeze(net, groups, "none" if head_only else unfreeze, n_top)
        if n_ranks > 1 and trains != (now := [p.requires_grad for p in net.parameters()]):
            trainer, trains = _ddp(net, torch_device), now  # DDP syncs the parameters that train when wrapped
        t0 = time.perf_counter()
        train_loss, train_acc, seen = _train_epoch(trainer, net, train_set, loss_fn, optimizer, scheduler, scaler,
                                                   normalize, torch_device, precision, batch_size, workers, seed,
                                                   epoch, clip_grad, progress, f"epoch {epoch + 1}/{epochs}", skipped)
        seconds = time.perf_counter() - t0
        if not math.isfinite(train_loss):
            if rank == 0:
                _write_history(out, state["history"])
            best = f"the best checkpoint (epoch {state['best_epoch']}) is kept in {out}" if state["best_epoch"] else \
                "no checkpoint was kept"
            raise FeatxError(f"the training loss became {train_loss} in epoch {epoch + 1}; stopped. Lower --lr or "
                             f"--head-lr; {best}")
        val_proba, val_y, _ = _predict(net, _Images(ds, rows["val"], eval_tf), normalize, torch_device, precision,
                                       batch_size * 2, workers, skipped)
        val = evaluate(val_y, val_proba, ds.classes)
        row = {"epoch": epoch + 1, "train_loss": train_loss, "train_accuracy": train_acc, "val_loss": val["log_loss"],
               "val_accuracy": val["accuracy"], "val_roc_auc": val["roc_auc"],
               "lr_backbone": optimizer.param_groups[0]["lr"], "lr_head": optimizer.param_groups[1]["lr"],
               "seconds": seconds, "images_per_second": seen / max(seconds, 1e-9),
               "phase": "head only" if head_only else f"unfreeze {unfreeze}"}
        state["history"].append(row)
        improved = val["log_loss"] < state["best_val_loss"]
        if improved:
            state.update(best_val_loss=val["log_loss"], best_epoch=epoch + 1, bad_epochs=0)
            if rank == 0:
                with atomic_path(out / "best_weights.pt") as tmp:
                    torch.save(_cpu_state(net), tmp)
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch + 1
        if rank == 0:
            _save_last(last, config_hash, net, optimizer, scheduler, scaler, state)
            _write_history(out, state["history"])
        auc = "-" if val["roc_auc"] is None else f"{val['roc_auc']:.3f}"
        log(f"epoch {epoch + 1}/{epochs}: train loss {train_loss:.4f}, val loss {val['log_loss']:.4f}, "
            f"val acc {val['accuracy']:.3f}, val AUC {auc}, {row['images_per_second']:.1f} img/s"
            + (" (best)" if improved else ""))
        if state["bad_epochs"] >= patience and epoch + 1 < epochs:
            stopped = f"early stop: validation loss did not improve for {patience} epochs"
            break
    train_seconds = sum(h["seconds"] for h in state["history"])  # resumed epochs included

    # Evaluate the best weights on every split, choose the threshold on validation, save the artifact.
    distributed.barrier()  # rank 0 has written best_weights.pt
    best = out / "best_weights.pt"
    if not best.exists():  # a finished run resumed: its best weights are already the artifact
        best = out / "model.pt"
    net.load_state_dict(torch.load(best, map_location=torch_device, weights_only=True))
    probas, predictions = {}, {}
    predict_started = time.perf_counter()
    for split in rows:
        proba, y, done = _predict(net, _Images(ds, rows[split], eval_tf), normalize, torch_device, precision,
                                  batch_size * 2, workers, skipped)
        probas[split] = (proba, y)
        predictions[split] = {"path": [ds.paths[r] for r in done], "y": y, "proba": proba}
    predict_seconds = (time.perf_counter() - predict_started) / max(1, sum(len(p[1]) for p in probas.values()))
    skipped = {path: reason for part in distributed.gather(skipped) for path, reason in part.items()}
    cut = _threshold(threshold, probas["val"], k)
    metrics = {s: evaluate(y, p, ds.classes, cut if cut is not None else 0.5) for s, (p, y) in probas.items()}
    result = FinetuneResult(out / "model.pt", metrics, state["history"], state["best_epoch"], cut, train_seconds,
                            stopped)
    if rank:
        return result
    for p in predictions.values():
        p["sha1"] = [sha1_file(ds.absolute(rel)) for rel in p["path"]]
    _plot_curves(out, state["history"], log)
    info = {
        "kind": "finetune",
        "head": "finetune",
        "params": {k_: v for k_, v in args.items() if k_ not in ("backbone", "weights")},
        "classes": ds.classes,
        "threshold": cut,
        "threshold_rule": threshold if isinstance(parse_threshold(threshold), str) else "fixed",
        "features": {"config": {**bb.identity(), "data_config": bb.data_config, "tta": "none",
                                "decode": train_set.decode_policy, "weights_source": bb.weights_source,
                                "data_root": str(ds.root)},
                     "num_features": bb.num_features},
        "metrics": metrics,
        "best_epoch": state["best_epoch"],
        "stopped": stopped,
        "history": state["history"],
        "train_seconds": train_seconds,
        "predict_seconds_per_image": predict_seconds,  # decoding included
        "config_hash": config_hash,
        "skipped": skipped,
    }
    artifact = save_checkpoint_artifact(out / "model.pt", _cpu_state(net), info, predictions)
    (out / "best_weights.pt").unlink(missing_ok=True)  # model.pt now holds the same weights
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    if skipped:
        log(f"skipped {len(skipped)} unreadable images: " + "; ".join(f"{p}: {r}" for p, r in list(skipped.items())[:5]))
    log(f"best epoch {state['best_epoch']} ({stopped}); model -> {artifact}")
    return result


# --- pieces ---------------------------------------------------------------------------------------


def _digest(values) -> str:
    return hashlib.sha256(json.dumps(list(map(int, values))).encode()).hexdigest()[:16]


def _check_args(a: dict) -> None:
    if a["epochs"] < 1:
        raise FeatxError(f"--epochs must be at least 1, got {a['epochs']}")
    if a["schedule"] not in SCHEDULES:
        raise FeatxError(f"--schedule must be one of {', '.join(SCHEDULES)}, not {a['schedule']!r}")
    if a["augment"] not in AUGMENTATIONS:
        raise FeatxError(f"--augment must be one of {', '.join(AUGMENTATIONS)}, not {a['augment']!r}")
    if a["class_weight"] not in ("balanced", "none"):
        raise FeatxError(f"--class-weight must be balanced or none, not {a['class_weight']!r}")
    for name in ("lr", "head_lr", "weight_decay", "clip_grad", "label_smoothing", "dropout"):
        if a[name] < 0:
            raise FeatxError(f"--{name.replace('_', '-')} must not be negative, got {a[name]}")
    if not 0 <= a["dropout"] < 1 or not 0 <= a["label_smoothing"] < 1:
        raise FeatxError("--dropout and --label-smoothing must lie in [0, 1)")
    if a["image_size"] is not None and a["image_size"] < 32:
        raise FeatxError(f"--image-size must be at least 32, got {a['image_size']}")
    if a["limit_train"] is not None and a["limit_train"] < 2:
        raise FeatxError(f"--limit-train must be at least 2, got {a['limit_train']}")
    parse_threshold(a["threshold"])


def _parameter_groups(model: nn.Module) -> list[list[str]]:
    """timm's coarse parameter groups (stem, blocks or stages, final layers), bottom to top."""
    from timm.models import group_parameters

    matcher = getattr(model, "group_matcher", None)
    if matcher is None:
        return [[name for name, _ in model.named_parameters()]]
    grouped = group_parameters(model, matcher(coarse=True))
    return [names for _, names in sorted(grouped.items())]


def _check_unfreeze(unfreeze: str, n_groups: int, backbone: str) -> int:
    if unfreeze in ("all", "none"):
        return n_groups if unfreeze == "all" else 0
    if unfreeze.startswith("last:"):
        try:
            n = int(unfreeze.split(":", 1)[1])
        except ValueError:
            n = -1
        if not 1 <= n <= n_groups:
            raise FeatxError(f"--unfreeze {unfreeze}: {backbone} has {n_groups} blocks (timm's coarse groups); "
                             f"choose last:1 to last:{n_groups}, all or none")
        return n
    raise FeatxError(f"--unfreeze must be all, none or last:N, not {unfreeze!r}")


def _freeze(net: ImageClassifierNet, groups: list[list[str]], unfreeze: str, n_top: int) -> None:
    """Only the top `n_top` groups (all, none) of the backbone train; the head always does."""
    trainable = set()
    if unfreeze != "none":
        for names in groups[len(groups) - n_top:]:
            trainable.update(names)
    for name, p in net.backbone.named_parameters():
        p.requires_grad_(name in trainable)
    net.head.requires_grad_(True)


def _train_mode(net: ImageClassifierNet) -> None:
    """Train mode, except BatchNorm layers that are frozen: they keep their ImageNet statistics."""
    net.train()
    for module in net.backbone.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if not any(p.requires_grad for p in module.parameters(recurse=False)):
                module.eval()


def _class_weights(y: np.ndarray, k: int) -> torch.Tensor:
    counts = np.bincount(y, minlength=k).astype(np.float64)
    return torch.tensor(len(y) / (k * np.maximum(counts, 1)), dtype=torch.float32)


def _scheduler(optimizer, schedule: str, total_steps: int, peaks: list[float]):
    if schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peaks, total_steps=max(total_steps, 2),
                                                   pct_start=0.1)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))


def _init_head(net: ImageClassifierNet, bb: Backbone, artifact, classes: list[str]) -> None:
    """Copy a fitted logistic-regression head (scaler folded in) into the linear layer."""
    from .artifacts import ImageClassifier, load

    model = load(artifact)
    if not isinstance(model, ImageClassifier) or model.info.get("head") != "logreg":
        raise FeatxError(f"--init-head-from needs a logreg artifact from featx fit, not {artifact}")
    fc = model.feature_config
    if (fc.get("backbone"), fc.get("weights_sha256"), fc.get("layer")) != (bb.spec.name, bb.weights_sha256, "pooled"):
        raise FeatxError(f"--init-head-from {artifact} was trained on other features ({fc.get('backbone')}, "
                         f"weights {str(fc.get('weights_sha256'))[:12]}); fit a logreg head on this backbone's features")
    if list(model.classes_) != list(classes):
        raise FeatxError(f"--init-head-from {artifact} has classes {list(model.classes_)}, the data has {classes}")
    pipe = model.head
    if "pca" in pipe.named_steps:
        raise FeatxError("--init-head-from needs a logreg head fitted without --pca")
    clf = pipe[-1]
    coef, intercept = clf.coef_.astype(np.float64), clf.intercept_.astype(np.float64)
    if "scale" in pipe.named_steps:
        scaler = pipe.named_steps["scale"]
        scale = np.where(scaler.scale_ == 0, 1, scaler.scale_)
        intercept = intercept - (coef * scaler.mean_ / scale).sum(1)
        coef = coef / scale
    if coef.shape[0] == 1:  # binary: logits [0, z] give the same softmax as sigmoid(z)
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    with torch.no_grad():
        net.head.weight.copy_(torch.from_numpy(coef).float())
        net.head.bias.copy_(torch.from_numpy(intercept).float())


class _Images(torch.utils.data.Dataset):
    """Row -> (uint8 image or None, label, row, reason if unreadable).

    With a seed, each image's random augmentation is seeded by (seed, epoch, row): the same in
    any loader worker and any process, so the number of either does not change the result.
    """

    decode_policy = DECODE_POLICY

    def __init__(self, ds, rows: list[int], transform, seed: int | None = None):
        self.ds, self.rows, self.transform, self.seed, self.epoch = ds, rows, transform, seed, 0

    def part(self, rank: int, size: int) -> "_Images":
        return _Images(self.ds, self.rows[rank::size], self.transform, self.seed)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        row = self.rows[i]
        path = self.ds.absolute(self.ds.paths[row])
        try:
            raw = path.read_bytes()
            if not raw:
                raise ImageError("empty file (0 bytes)")
            image = load_image(io.BytesIO(raw))
            if self.seed is None:
                return self.transform(image), int(self.ds.labels[row]), row, None
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(((self.seed * 1_000_003 + self.epoch) * 10_000_019 + row) % 2**63)
                return self.transform(image), int(self.ds.labels[row]), row, None
        except ImageError as exc:
            return None, int(self.ds.labels[row]), row, str(exc)
        except OSError as exc:
            return None, int(self.ds.labels[row]), row, f"cannot read file: {exc.strerror or exc}"


def _collate(items):
    good = [it for it in items if it[0] is not None]
    images = torch.stack([it[0] for it in good]) if good else None
    labels = torch.tensor([it[1] for it in good], dtype=torch.long)
    return images, labels, [it[2] for it in good], [(it[2], it[3]) for it in items if it[0] is None]


def _loader(dataset, batches: list[list[int]], workers):
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=_collate,
                                       pin_memory=torch.cuda.is_available(),
                                       prefetch_factor=4 if workers > 0 else None)


class _Loss:
    """Class-weighted cross-entropy summed over this process's images and divided by the weight of
    the whole (global) batch: the single-process mean, split into parts that add up across ranks."""

    def __init__(self, weight: torch.Tensor, label_smoothing: float):
        self.weight, self.label_smoothing = weight, label_smoothing

    def parts(self, logits, y):
        """(summed weighted loss, summed weight) of these images."""
        losses = F.cross_entropy(logits.float(), y, weight=self.weight, label_smoothing=self.label_smoothing,
                                 reduction="none")
        return losses.sum(), self.weight[y].sum()


def _ddp(net: nn.Module, device: torch.device) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)


def _autocast(device, precision):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _prepare(images, normalize, device):
    x = normalize(images.to(device, non_blocking=True))
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


def _epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The epoch's shuffled batches. A last batch under half a batch joins the one before: one
    image alone would make a full-size AdamW step, and no process of a torchrun is left empty."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) < batch_size / 2:
        batches[-2] += batches.pop()
    return batches


def _train_epoch(trainer, net, dataset, loss_fn, optimizer, scheduler, scaler, normalize, device, precision,
                 batch_size, workers, seed, epoch, clip_grad, progress, desc, skipped):
    """One epoch; its batches, augmentation and dropout depend only on (seed, epoch).

    `trainer` is `net`, or `net` in DistributedDataParallel. Each process takes its share of
    every batch; one all-reduce per step gives the global batch's weight (the loss divisor),
    and steps where a process has no readable image are skipped by all, so none waits forever.
    """
    rank, size, _ = distributed.world()
    torch.manual_seed(seed * 100_003 + epoch + 7919 * rank)  # dropout: its own stream per process
    batches = [batch[rank::size] for batch in _epoch_batches(len(dataset), batch_size, seed, epoch)]
    dataset.epoch = epoch
    _train_mode(net)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    total_loss, correct, seen = 0.0, 0, 0
    bar = tqdm(total=len(dataset), desc=desc, unit="img", disable=None if progress else True, dynamic_ncols=True,
               file=sys.stderr, leave=False)
    started = time.perf_counter()
    with bar:
        for images, labels, rows, problems in _loader(dataset, batches, workers):
            for row, reason in problems:
                skipped[dataset.ds.paths[row]] = reason
            if images is None:
                empty, loss_sum, weight_sum, hits = 1.0, torch.zeros((), device=device), 0.0, 0
            else:
                x, y = _prepare(images, normalize, device), labels.to(device)
                with _autocast(device, precision):
                    logits = trainer(x)
                loss_sum, weight_sum = loss_fn.parts(logits, y)
                empty, hits = 0.0, int((logits.argmax(1) == y).sum())
            g_empty, g_loss, g_weight, g_n, g_hits, g_problems = distributed.all_sum(
                [empty, float(loss_sum.detach()), float(weight_sum), 0 if images is None else len(images), hits,
                 len(problems)], device)
            bar.update(int(g_n + g_problems))
            optimizer.zero_grad(set_to_none=True)
            if g_empty:  # some process has nothing to learn from: every process skips the step
                scheduler.step()
                continue
            if not math.isfinite(g_loss):
                return g_loss, 0.0, seen
            scaler.scale(loss_sum / g_weight * size).backward()  # DDP averages over processes
            if clip_grad:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], clip_grad)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            total_loss += g_loss / g_weight * g_n
            correct += int(g_hits)
            seen += int(g_n)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", img_s=f"{seen / (time.perf_counter() - started):.1f}")
    return total_loss / max(seen, 1), correct / max(seen, 1), seen


def _predict(net, dataset, normalize, device, precision, batch_size, workers, skipped):
    """Softmax probabilities, labels and dataset rows of the readable images of `dataset`.

    Under torchrun each process predicts its share and every process gets the whole, in order.
    """
    rank, size, _ = distributed.world()
    part = dataset.part(rank, size)
    net.eval()
    probas, labels, done = [], [], []
    batches = [list(range(i, min(i + batch_size, len(part)))) for i in range(0, len(part), batch_size)]
    with torch.inference_mode(), _autocast(device, precision):
        for images, y, rows, problems in _loader(part, batches, workers):
            for row, reason in problems:
                skipped[dataset.ds.paths[row]] = reason
            if images is not None:
                probas.append(torch.softmax(net(_prepare(images, normalize, device)).float(), 1).cpu().numpy())
                labels.append(y.numpy())
                done += rows
    pieces = distributed.gather((probas, labels, done))
    probas = [p for piece in pieces for p in piece[0]]
    if not probas:
        raise FeatxError("no readable images in a split being evaluated")
    labels, done = [y for piece in pieces for y in piece[1]], [r for piece in pieces for r in piece[2]]
    position = {row: i for i, row in enumerate(dataset.rows)}
    order = np.argsort([position[row] for row in done], kind="stable")
    return np.concatenate(probas)[order], np.concatenate(labels)[order], [done[i] for i in order]


def _threshold(threshold, val, k: int):
    if k != 2:
        return None
    value = parse_threshold(threshold)
    if not isinstance(value, str):
        return value
    proba, y = val
    return choose_threshold(y, proba[:, 1], value)


def _cpu_state(net: nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}


def _save_last(path: Path, config_hash, net, optimizer, scheduler, scaler, state) -> None:
    with atomic_path(path) as tmp:
        torch.save({"config_hash": config_hash, "model": _cpu_state(net), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "state": state}, tmp)


def _resume(path: Path, config_hash, net, optimizer, scheduler, scaler) -> dict:
    if not path.exists():
        raise FeatxError(f"--resume: no checkpoint to resume at {path}; run without --resume to start")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FeatxError(f"--resume: cannot read {path}: {exc}") from None
    if saved.get("config_hash") != config_hash:
        raise FeatxError(f"--resume: {path} is from another configuration ({saved.get('config_hash')}, "
                         f"asked {config_hash}); use the same options, or start a new run without --resume")
    net.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    scaler.load_state_dict(saved["scaler"])
    return saved["state"]


def _write_history(out: Path, history: list[dict]) -> None:
    if not history:
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    write_text_atomic(out / "history.csv", buffer.getvalue())


def _plot_curves(out: Path, history: list[dict], log) -> None:
    """Loss and accuracy per epoch (needs matplotlib: pip install featx[report])."""
    from .heatmaps import pyplot
    from .reporting import plot_history

    try:
        plt = pyplot()
    except FeatxError:
        log("matplotlib is not installed: no curves.png (pip install 'featx[report]')")
        return
    fig = plot_history(plt, history)
    with atomic_path(out / "curves.png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
