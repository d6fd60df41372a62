"""The training loop: one epoch of steps, and predictions of a split, alike in one process and under torchrun.

An epoch's batches, augmentation and dropout depend only on (seed, epoch), so a resumed CPU run
equals an uninterrupted one. Under torchrun every process takes its share of each batch of the
single-process schedule, and the loss is divided by the whole batch's class weight, so the
gradient step is the single-process one.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._core import distributed
from .._core.console import progress_bar
from .._core.errors import FeatxError
from .._core.runtime import autocast
from ..data.loading import ImageFiles, image_loader
from ..data.transforms import Normalize
from ..models.network import FinetuneNetwork
from ..models.views import probabilities, views_mean
from .averaging import WeightAverage
from .freezing import train_mode
from .mixing import Mixing


class WeightedLoss:
    """Class-weighted cross-entropy summed over this process's images and divided by the weight of
    the whole (global) batch: the single-process mean, split into parts that add up across ranks."""

    def __init__(self, weight: torch.Tensor, label_smoothing: float):
        self.weight, self.label_smoothing = weight, label_smoothing

    def parts(self, logits, y, soft=None):
        """(summed weighted loss, summed weight) of these images; `soft`: mixed targets (mixup, cutmix), each
        image weighted by its mixture of class weights (one-hot targets give the hard-label loss)."""
        if soft is not None:
            weighted = soft * self.weight
            return -(weighted * F.log_softmax(logits.float(), 1)).sum(), weighted.sum()
        losses = F.cross_entropy(logits.float(), y, weight=self.weight, label_smoothing=self.label_smoothing,
                                 reduction="none")
        return losses.sum(), self.weight[y].sum()


def class_weights(y: np.ndarray, k: int) -> torch.Tensor:
    """Inverse class frequency, as scikit-learn's class_weight="balanced"."""
    counts = np.bincount(y, minlength=k).astype(np.float64)
    return torch.tensor(len(y) / (k * np.maximum(counts, 1)), dtype=torch.float32)


def make_scheduler(optimizer, schedule: str, total_steps: int, peaks: list[float]):
    """The learning rate per step: cosine decay, or one-cycle to `peaks`."""
    if schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peaks, total_steps=max(total_steps, 2),
                                                   pct_start=0.1)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The epoch's shuffled batches of positions 0..n-1. A last batch under half a batch joins the one
    before: one image alone would make a full-size AdamW step, and no process of a torchrun is left empty."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) < batch_size / 2:
        last = batches.pop()  # popped first: `batches[-2] += batches.pop()` would write over another batch
        batches[-1] += last
    return batches


@dataclass
class Training:
    """What every step of a run uses, set up once."""

    net: FinetuneNetwork
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    loss: WeightedLoss
    normalize: Normalize
    device: torch.device
    precision: str          # runtime.training_precision: amp-bf16, amp-fp16 or fp32
    batch_size: int         # the global batch
    workers: int
    seed: int
    clip_grad: float
    trainer: nn.Module | None = None  # `net`, or `net` in DistributedDataParallel
    average: WeightAverage | None = None  # --ema: updated after every step
    mixing: Mixing | None = None          # --mixup / --cutmix
    tta: str = "none"                     # hflip: evaluation averages the logits of both views
    channels_last: bool = False           # models.frozen.channels_last: the network's memory format

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        """A uint8 batch as the network's input on the device, in the network's memory format."""
        x = self.normalize(images.to(self.device, non_blocking=True))
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def wrap_for_ranks(net: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel; it syncs the parameters that train when it wraps, so re-wrap after (un)freezing."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)


def train_epoch(t: Training, images: ImageFiles, rows: list[int], labels: np.ndarray, epoch: int, *,
                progress: bool, desc: str, skipped: dict) -> tuple[float, float, int]:
    """One epoch over `rows`: (mean loss, accuracy, images seen); the loss is NaN or inf if it diverged.

    Each process takes its share of every batch; one all-reduce per step gives the global batch's
    weight (the loss divisor), and steps where a process has no readable image are skipped by
    all, so none waits forever. Unreadable images are added to `skipped` (path -> reason).
    """
    rank, size, _ = distributed.world()
    torch.manual_seed(t.seed * 100_003 + epoch + 7919 * rank)  # dropout: its own stream per process
    if t.mixing is not None:  # timm's Mixup draws from NumPy's global generator
        np.random.seed((t.seed * 100_003 + epoch + 7919 * rank) % 2**32)
    batches = [[rows[i] for i in batch[rank::size]] for batch in epoch_batches(len(rows), t.batch_size, t.seed, epoch)]
    images.epoch = epoch
    train_mode(t.net)
    params = [p for group in t.optimizer.param_groups for p in group["params"]]
    total_loss, correct, seen = 0.0, 0, 0
    started = time.perf_counter()
    with progress_bar(len(rows), progress, desc=desc, unit="img", leave=False) as bar:
        for batch in image_loader(images, batches, t.workers, t.device):
            skipped.update((images.paths[row], reason) for row, reason in batch.problems)
            loss_sum, weight_sum, hits = _forward(t, batch, labels)
            g_empty, g_loss, g_weight, g_n, g_hits, g_problems = distributed.all_sum(
                [batch.images is None, float(loss_sum.detach()), float(weight_sum), len(batch.rows), hits,
                 len(batch.problems)], t.device)
            bar.update(int(g_n + g_problems))
            t.optimizer.zero_grad(set_to_none=True)
            if g_empty:  # some process has nothing to learn from: every process skips the step
                t.scheduler.step()
                continue
            if not math.isfinite(g_loss):
                return g_loss, 0.0, seen
            _step(t, loss_sum / g_weight * size, params)  # DDP averages over processes
            total_loss += g_loss / g_weight * g_n
            correct += int(g_hits)
            seen += int(g_n)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", img_s=f"{seen / (time.perf_counter() - started):.1f}")
    return total_loss / max(seen, 1), correct / max(seen, 1), seen


def _forward(t: Training, batch, labels: np.ndarray):
    """(summed weighted loss, summed weight, correct) of this process's part of a batch."""
    if batch.images is None:
        return torch.zeros((), device=t.device), 0.0, 0
    y = torch.as_tensor(labels[batch.rows], dtype=torch.long).to(t.device)
    x, soft = t.inputs(batch.images), None
    if t.mixing is not None:
        x, soft = t.mixing(x, y)
    with autocast(t.device, t.precision):
        logits = t.trainer(x)
    loss_sum, weight_sum = t.loss.parts(logits, y, soft)
    return loss_sum, weight_sum, int((logits.argmax(1) == y).sum())


def _step(t: Training, loss: torch.Tensor, params: list) -> None:
    t.scaler.scale(loss).backward()
    if t.clip_grad:
        t.scaler.unscale_(t.optimizer)
        torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], t.clip_grad)
    t.scaler.step(t.optimizer)
    t.scaler.update()
    t.scheduler.step()
    if t.average is not None:
        t.average.update(t.net)


def predict_rows(t: Training, images: ImageFiles, rows: list[int], labels: np.ndarray, skipped: dict,
                 net: nn.Module | None = None):
    """(softmax probabilities, labels, rows, sha1 of the bytes read) of the readable images among `rows`,
    in the order of `rows`, by `net` (default: the network being trained; the weight average is another),
    under hflip TTA the mean logits of both views. Under torchrun each process predicts its share and every
    process gets the whole."""
    rank, size, _ = distributed.world()
    mine = rows[rank::size]
    batch_size = t.batch_size * 2  # no gradients: twice the training batch fits
    net = (net or t.net).eval()
    probas, done, sha1 = [], [], []
    batches = [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
    with torch.inference_mode(), autocast(t.device, t.precision):
        for batch in image_loader(images, batches, t.workers, t.device):
            skipped.update((images.paths[row], reason) for row, reason in batch.problems)
            if batch.images is not None:
                x = t.inputs(batch.images)
                probas.append(probabilities(views_mean(net, x, t.tta)).cpu().numpy())
                read = dict(batch.read_sha1)
                done += batch.rows
                sha1 += [read[row] for row in batch.rows]
    pieces = distributed.gather((probas, done, sha1))
    probas = [p for piece in pieces for p in piece[0]]
    if not probas:
        raise FeatxError("no readable images in a split being evaluated")
    done, sha1 = [r for piece in pieces for r in piece[1]], [h for piece in pieces for h in piece[2]]
    position = {row: i for i, row in enumerate(rows)}
    order = np.argsort([position[row] for row in done], kind="stable")
    done = [done[i] for i in order]
    return np.concatenate(probas)[order], np.asarray(labels)[done], done, [sha1[i] for i in order]
