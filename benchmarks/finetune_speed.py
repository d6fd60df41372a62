"""featx's fine-tuning loop from image files vs a bare train step on ready tensors, in one run.

Same model (the registry's backbone + dropout + linear), batch size, optimizer, loss, gradient
clipping and device. The bare loop trains on normalised tensors already in memory, so the
ratio is what decoding, augmentation and the loop's bookkeeping cost:
  (a) bare train step on ready tensors
  (b) featx.finetune's training epochs (from files, X-ray augmentation, one decode worker)
  (c) the same with --ema 0.999 (timm's ModelEmaV3 updated after every step), run alternately with (b)
The targets are b/a >= 0.85 on a CPU, and c/b >= 0.97 (EMA adds at most 3% to an epoch's training). With
--ema the validation is scored twice (raw and averaged weights): its seconds are reported apart.

    python benchmarks/finetune_speed.py --data ../shared/data/chest_xray [--backbone efficientnet_lite0]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import featx
from featx._core.runtime import default_batch_size, resolve_device
from featx.data.datasets import load_dataset
from featx.finetuning.averaging import WeightAverage
from featx.finetuning.training import class_weights
from featx.models.network import FinetuneNetwork


def manifest(data: str, n_train: int, n_val: int, out: Path) -> Path:
    """A CSV manifest of n_train + n_val images of `data`, seeded, both classes in each."""
    ds = load_dataset(data, cache_dir=out / "cache")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(ds))
    lines = ["path,label,split"]
    for i, idx in enumerate(order[: n_train + n_val]):
        split = "train" if i < n_train else "val"
        lines.append(f"{ds.absolute(ds.paths[idx])},{ds.classes[ds.labels[idx]]},{split}")
    path = out / "subset.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def bare(backbone: str, weights: str, n: int, batch: int, device, classes: int) -> float:
    bb = featx.create_backbone(backbone, weights, frozen=False)
    net = FinetuneNetwork(bb.model, bb.num_features, classes).to(device).train()
    size = bb.data_config["input_size"]
    x = torch.randn(batch, *size, device=device)
    y = torch.arange(batch, device=device) % classes
    criterion = torch.nn.CrossEntropyLoss(weight=class_weights(y.cpu().numpy(), classes).to(device))
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=0.05)
    steps = max(1, n // batch)

    def step():
        loss = criterion(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - start)


def ema_update_seconds(backbone: str, weights: str, classes: int, repeats: int = 50) -> float:
    """Seconds of one weight-average update of the whole network (what --ema adds to every step)."""
    bb = featx.create_backbone(backbone, weights, frozen=False)
    net = FinetuneNetwork(bb.model, bb.num_features, classes)
    average = WeightAverage(net, 0.999)
    average.update(net)
    start = time.perf_counter()
    for _ in range(repeats):
        average.update(net)
    return (time.perf_counter() - start) / repeats


def _rates(history) -> str:
    return ", ".join(f"{h['images_per_second']:.1f}" for h in history)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="examples/chest_xray")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--train", type=int, default=256, help="training images per epoch")
    parser.add_argument("--val", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the plain and the EMA run")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None, help="decode processes for featx [default: featx's]")
    args = parser.parse_args()
    device = resolve_device("auto")
    batch = args.batch_size or default_batch_size(device)
    print(f"{args.backbone} ({args.weights}) on {device}, batch {batch}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} cores")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subset = manifest(args.data, args.train, args.val, tmp)

        def epochs(ema, out):
            result = featx.finetune(subset, args.backbone, weights=args.weights, epochs=args.epochs, batch_size=batch,
                                    workers=args.workers, ema=ema, out_dir=tmp / out, cache_dir=tmp / "cache",
                                    progress=False, log=lambda m: None, patience=args.epochs)
            return result

        runs = {"plain": [], "ema": []}
        for round_ in range(args.rounds):  # alternately, so that the machine's drift falls on both
            for name, ema in (("plain", None), ("ema", 0.999)):
                runs[name] += epochs(ema, f"{name}{round_}").history
        a = bare(args.backbone, args.weights, args.train, batch, device, 2)
        update = ema_update_seconds(args.backbone, args.weights, 2)
    # the first epoch of a run also warms up allocators: the steady epochs are the later ones
    steady = {name: [h for h in history if h["epoch"] > 1] for name, history in runs.items()}
    rate = {name: sum(h["images_per_second"] * h["seconds"] for h in hs) / sum(h["seconds"] for h in hs)
            for name, hs in steady.items()}
    val = {name: np.median([h["val_seconds"] for h in hs]) for name, hs in steady.items()}
    b, c = rate["plain"], rate["ema"]
    print(f"(a) bare train step, ready tensors   {a:7.1f} images/s")
    print(f"(b) featx finetune, from files        {b:7.1f} images/s  "
          f"(epochs: {_rates(runs['plain'])})")
    print(f"(c) featx finetune --ema 0.999        {c:7.1f} images/s  "
          f"(epochs: {_rates(runs['ema'])})")
    print(f"b/a = {b / a:.2f}   target >= 0.85")
    print(f"c/b = {c / b:.3f}   target >= 0.97 (EMA's cost per training epoch: {100 * (b / c - 1):+.1f}%)")
    print(f"one EMA update {1000 * update:.1f} ms vs one bare step of {batch} images {1000 * batch / a:.0f} ms: "
          f"{100 * update * a / batch:.2f}% of a step")
    print(f"validation of {args.val} images per epoch: {val['plain']:.1f} s plain, {val['ema']:.1f} s with EMA "
          "(raw and averaged weights both scored)")


if __name__ == "__main__":
    main()
