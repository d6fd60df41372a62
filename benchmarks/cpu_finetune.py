"""Fine-tuning on a CPU before and after issue #40, side by side in one run.

  before       float32, the network in NCHW (what featx did before: channels-last only on CUDA)
  channels-last float32, channels-last (featx's default now, for CNNs)
  bf16         channels-last with bfloat16 autocast (`--precision bf16`, on a CPU that has it natively)

Speed: one epoch on --train images (featx.finetune end to end: decoding, augmentation, the steps), each
setting run --rounds times alternately; the epoch's training images/s from the run's history.
Quality: each setting trained for --epochs on the same images, scored on --val held-out images (ROC-AUC
with featx's bootstrap 95% interval): bf16 must stay within the intervals of float32.
Bare step (--bare): the train step alone on a ready batch of 16 (forward, loss, backward, AdamW) per setting, and
with --compile also under torch.compile (first two steps' seconds, the compile, reported apart).

    python benchmarks/cpu_finetune.py --data ../shared/data/chest_xray [--backbone efficientnet_lite0]

Set FEATX_WEIGHTS_DIR for the ImageNet weights.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import featx
import featx.finetuning.runner as runner

SETTINGS = {"before": ("fp32", False), "channels-last": ("fp32", True), "bf16": ("bf16", True)}


@contextmanager
def memory_format(channels_last: bool):
    """featx's rule for channels-last, or the rule before it (never on a CPU)."""
    rule = runner.channels_last
    runner.channels_last = rule if channels_last else (lambda net, device: device.type == "cuda" and rule(net, device))
    try:
        yield
    finally:
        runner.channels_last = rule


def tune(data: Path, args, setting: str, epochs: int, out: Path):
    precision, channels_last = SETTINGS[setting]
    with memory_format(channels_last):
        return featx.finetune(data, args.backbone, weights=args.weights, epochs=epochs, precision=precision,
                              batch_size=16, device="cpu", progress=False, out_dir=out, cache_dir=out.parent / "cache",
                              patience=epochs, log=lambda m: None)


def bare_steps(backbone: str, weights: str, compile: bool) -> None:
    import time

    import torch

    from featx.models.network import FinetuneNetwork

    bb = featx.create_backbone(backbone, weights, frozen=False)
    x0, y = torch.randn(16, *bb.data_config["input_size"]), torch.arange(16) % 2
    settings = [(name, *SETTINGS[name], False) for name in SETTINGS]
    settings += [(f"{name} compiled", *SETTINGS[name], True) for name in ("channels-last", "bf16")] if compile else []
    print("bare train step on a ready batch of 16, images/s:")
    for name, precision, channels_last, compiled in settings:
        net = FinetuneNetwork(bb.model, bb.num_features, 2).train()
        net = net.to(memory_format=torch.channels_last) if channels_last else net
        x = x0.contiguous(memory_format=torch.channels_last) if channels_last else x0
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)

        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = torch.nn.functional.cross_entropy(net(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        run = torch.compile(step) if compiled else step
        start = time.perf_counter()
        run(), run()
        first = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(6):
            run()
        print(f"  {name:24s} {96 / (time.perf_counter() - start):6.1f}   (first two steps {first:.1f} s)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/chest_xray")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--train", type=int, default=250)
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the one-epoch runs (0: none)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of the quality runs (0: speed only)")
    parser.add_argument("--bare", action="store_true", help="also the bare train step per setting")
    parser.add_argument("--compile", action="store_true", help="with --bare: also under torch.compile")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from finetune_speed import manifest

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = manifest(args.data, args.train, args.val, tmp)
        print(f"{args.backbone}, {args.train} training and {args.val} validation images of {args.data}, batch 16, "
              f"{__import__('torch').get_num_threads()} threads")
        rates = {s: [] for s in SETTINGS}
        for r in range(args.rounds):
            for setting in SETTINGS:
                result = tune(data, args, setting, 1, tmp / f"speed-{setting}-{r}")
                rates[setting].append(result.history[0]["images_per_second"])
        if args.rounds:
            report_rates(rates)
        if args.bare:
            bare_steps(args.backbone, args.weights, args.compile)
        if not args.epochs:
            return
        quality(data, args, tmp)


def report_rates(rates: dict) -> None:
    base = max(rates["before"])
    print("one epoch, training images/s (best of the rounds; every round):")
    for setting, values in rates.items():
        print(f"  {setting:14s} {max(values):6.1f}  x{max(values) / base:4.2f}   " + ", ".join(f"{v:.1f}" for v in values))


def quality(data: Path, args, tmp: Path) -> None:
    print(f"quality: {args.epochs} epochs, the epoch chosen on validation loss, validation ROC-AUC [95% CI]:")
    for setting in SETTINGS:
        result = tune(data, args, setting, args.epochs, tmp / f"quality-{setting}")
        val = result.metrics["val"]
        low, high = val["ci"]["roc_auc"]
        print(f"  {setting:14s} {val['roc_auc']:.3f} [{low:.3f}, {high:.3f}]  best epoch {result.best_epoch}, "
              f"{result.train_seconds:.0f} s of training")


if __name__ == "__main__":
    main()
