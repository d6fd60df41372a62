"""featx's fine-tuning loop from image files vs a bare train step on ready tensors, in one run.

Same model (the registry's backbone + dropout + linear), batch size, optimizer, loss, gradient
clipping and device. The bare loop trains on normalised tensors already in memory, so the
ratio is what decoding, augmentation and the loop's bookkeeping cost:
  (a) bare train step on ready tensors
  (b) featx.finetune's training epochs (from files, X-ray augmentation, one decode worker)
The target is b/a >= 0.85 on a CPU.

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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="examples/chest_xray")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--train", type=int, default=256, help="training images per epoch")
    parser.add_argument("--val", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
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
        result = featx.finetune(subset, args.backbone, weights=args.weights, epochs=args.epochs, batch_size=batch,
                                workers=args.workers,
                                cache_dir=tmp / "cache", progress=False, log=lambda m: None, patience=args.epochs)
        rates = [h["images_per_second"] for h in result.history]
        a = bare(args.backbone, args.weights, args.train, batch, device, len(result.metrics["train"]["confusion_matrix"]))
    b = max(rates)  # the first epoch also warms up allocators: report the steady one
    print(f"(a) bare train step, ready tensors   {a:7.1f} images/s")
    print(f"(b) featx finetune, from files        {b:7.1f} images/s  (epochs: {', '.join(f'{r:.1f}' for r in rates)})")
    print(f"b/a = {b / a:.2f}   target >= 0.85")


if __name__ == "__main__":
    main()
