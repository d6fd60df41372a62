"""featx extract's CPU engines against the loops users write, whole processes, side by side in one run (issue #40).

For each backbone, every run below is a fresh process over the same images (imports, model build and
hashing included), each into an empty cache:
  notebook     torchvision ImageFolder + timm's eval transform, DataLoader(num_workers=0), the NCHW model
               under no_grad: what the public pneumonia notebooks do
  eager loop   the best an eager user writes: decoding in one DataLoader worker, inference_mode, batch 16
  featx ...    `featx extract --engine E [--precision bf16]`; auto runs its race (an empty engines.json)
Then, in this process:
  agreement    each featx cache's features against featx eager float32 (least cosine over the images), and
               the eager loop's against featx eager
  peak         a 2048² matrix product's GFLOP/s in float32 and bfloat16 (torch.mm on every core, best of 5),
               and the share of it each engine reaches: the backbone's FLOPs per image (torch's
               FlopCounterMode, 2 per multiply-add) × images/s of the bare forward on ready tensors
  decode share the time to decode and resize an image (ImageFiles, one process) against the bare forward's
               time per image, before (RGB files resized as three channels, eager) and after (one channel,
               the fastest engine)
  int8         static quantization considered: onnxruntime's QDQ, calibrated on 256 of the images (per-channel
               weights), run by onnxruntime and by OpenVINO: speed and least cosine to float32

    python benchmarks/cpu_engines.py --data ../shared/data/chest_xray/train --limit 1000 \\
        --backbone efficientnet_lite0,dinov2_vits14

Set FEATX_WEIGHTS_DIR (lite0) and run ../shared/tools/dinov2_small_weights.sh DIR first (DINOv2: weights in DIR).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RUNS = [("featx eager", ["--engine", "eager"]), ("featx onnxruntime", ["--engine", "onnxruntime"]),
        ("featx openvino", ["--engine", "openvino"]), ("featx auto (race included)", []),
        ("featx eager bf16", ["--engine", "eager", "--precision", "bf16"]),
        ("featx openvino bf16", ["--engine", "openvino", "--precision", "bf16"])]


def baseline(kind: str, data: str, backbone: str, out: str) -> None:
    """The notebook loop or the best-practice eager loop (run in a fresh process by `--baseline`)."""
    import timm
    import torch
    import torchvision

    import featx

    bb = featx.create_backbone(backbone, "imagenet")
    model = bb.model.eval()
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in bb.data_config.items()}
    transform = timm.data.create_transform(**cfg, is_training=False)
    images = torchvision.datasets.ImageFolder(data, transform=transform)
    loader = torch.utils.data.DataLoader(images, batch_size=16, num_workers=0 if kind == "notebook" else 1)
    feats = []
    with torch.no_grad() if kind == "notebook" else torch.inference_mode():
        for x, _ in loader:
            feats.append(model(x).numpy())
    np.save(out, np.concatenate(feats))


def whole(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def peak_gflops() -> dict:
    import torch

    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
        torch.mm(a, b)
        best = min(_timed(lambda: torch.mm(a, b)) for _ in range(5))
        out[name] = 2 * 2048 ** 3 / best / 1e9
    return out


def _timed(f) -> float:
    start = time.perf_counter()
    f()
    return time.perf_counter() - start


def flops_per_image(bb) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros((1, *bb.data_config["input_size"]))
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        bb.model.eval()(x)
    return float(counter.get_total_flops())


def bare_rates(bb, images, engines) -> dict:
    """Images/s of each engine (float32, and bf16 where named "E bf16") on ready uint8 batches of 16."""
    import torch

    from featx.models.engines import frozen_forward
    from featx.models.numerics import Numerics

    out = {}
    for name in engines:
        engine, _, precision = name.partition(" ")
        forward = frozen_forward(bb.model, bb.data_config, torch.device("cpu"),
                                 Numerics("cpu", engine, precision or "fp32"))
        batch = images[:16]
        forward(batch)
        calls, start = 0, time.perf_counter()
        while calls < 5 or time.perf_counter() - start < 3:
            forward(batch)
            calls += 1
        out[name] = calls * 16 / (time.perf_counter() - start)
    return out


def decode_seconds(paths: list[str], data_config: dict, as_rgb: bool) -> float:
    """Seconds per image to read, decode, resize and crop, as featx's loader does (as_rgb: the old rule)."""
    from featx.data.images import load_image
    from featx.data.transforms import EvalTransform

    transform = EvalTransform(data_config)
    start = time.perf_counter()
    for p in paths:
        image = load_image(p)
        transform(image.convert("RGB") if as_rgb else image)
    return (time.perf_counter() - start) / len(paths)


def int8_trials(bb, images, calibration) -> list[str]:
    """onnxruntime's static QDQ quantization of the float32 graph, run by onnxruntime and by OpenVINO."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from featx.models.engines import min_cosine, model_graph

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(np.array_split(calibration, max(1, len(calibration) // 16)))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"image": np.ascontiguousarray(batch.transpose(0, 2, 3, 1))}

    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        fp32.write_bytes(model_graph(bb.model, bb.data_config))
        quantize_static(str(fp32), str(int8), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        x = np.ascontiguousarray(images[:16].numpy().transpose(0, 2, 3, 1))
        runners = {"float32 onnxruntime": _ort(ort, fp32), "int8 onnxruntime": _ort(ort, int8),
                   "int8 openvino": _openvino(int8)}
        reference = runners["float32 onnxruntime"](x)
        for name, run in runners.items():
            run(x)
            calls, start = 0, time.perf_counter()
            while calls < 5 or time.perf_counter() - start < 3:
                out = run(x)
                calls += 1
            lines.append(f"{name:22s} {calls * 16 / (time.perf_counter() - start):7.1f} img/s, least cosine to "
                         f"float32 {min_cosine(out, reference):.4f}")
    return lines


def _ort(ort, path: Path):
    import torch

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.log_severity_level = torch.get_num_threads(), 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"image": x})[0]


def _openvino(path: Path):
    import openvino
    import torch

    core = openvino.Core()
    compiled = core.compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": torch.get_num_threads(),
                                                       "PERFORMANCE_HINT": "LATENCY"})
    return lambda x: compiled([x])[0]


def measure(data: Path, backbone: str, tmp: Path, peak: dict) -> None:
    import torch

    import featx
    from featx.data.loading import ImageFiles, collate
    from featx.data.transforms import EvalTransform
    from featx.models.engines import min_cosine

    n = sum(1 for _ in data.rglob("*.*"))
    print(f"\n{backbone}: {n} images, {torch.get_num_threads()} threads")
    times, caches = {}, {}
    for kind in ("notebook", "eager loop"):
        times[kind] = whole([sys.executable, __file__, "--baseline", kind.split()[0], "--data", str(data),
                             "--backbone", backbone, "--out", str(tmp / f"{backbone}-{kind.split()[0]}.npy")])
    for name, options in RUNS:
        cache = tmp / f"cache-{backbone}-{name.replace(' ', '_')}"
        times[name] = whole([sys.executable, "-m", "featx", "extract", "--data", str(data), "--backbone", backbone,
                             "--device", "cpu", "--cache", str(cache), "--no-progress", *options])
        caches[name] = featx.FeatureStore(next(cache.rglob("*.h5")))
    reference = caches["featx eager"]
    order = np.argsort(reference.row_table().path)  # ImageFolder's order: class folders, then names, sorted
    loop = np.load(tmp / f"{backbone}-eager.npy")
    print(f"  {'run':28s} {'wall s':>7s} {'img/s':>7s} {'x notebook':>10s} {'x eager loop':>12s}  features")
    for name, seconds in times.items():
        store = caches.get(name)
        agree = (f"cache {store.path.name}, least cosine to featx eager "
                 f"{min_cosine(store.arrays()[0], reference.arrays()[0]):.6f}" if store else
                 f"least cosine to featx eager {min_cosine(loop, reference.arrays()[0][order]):.6f}"
                 if name == "eager loop" else "")
        print(f"  {name:28s} {seconds:7.1f} {n / seconds:7.1f} {times['notebook'] / seconds:10.2f} "
              f"{times['eager loop'] / seconds:12.2f}  {agree}")
    bb = featx.create_backbone(backbone, "imagenet")
    paths = [str(data / p) for p in reference.row_table().path]
    sample = ImageFiles("/", paths[:64], EvalTransform(bb.data_config))
    images = collate([sample[i] for i in range(64)]).images
    flops = flops_per_image(bb)
    engines = ["eager", "openvino", "onnxruntime", "eager bf16", "openvino bf16"]
    rates = bare_rates(bb, images, engines)
    print(f"  bare forward on ready batches of 16 ({flops / 1e9:.2f} GFLOP per image; matrix-product peak "
          f"fp32 {peak['fp32']:.0f}, bf16 {peak['bf16']:.0f} GFLOP/s):")
    for name, rate in rates.items():
        top = peak["bf16" if "bf16" in name else "fp32"]
        print(f"    {name:16s} {rate:7.1f} img/s  {rate * flops / 1e9:6.1f} GFLOP/s = {rate * flops / 1e9 / top:5.0%} "
              f"of the {'bf16' if 'bf16' in name else 'fp32'} peak")
    before, after = decode_seconds(paths[:300], bb.data_config, True), decode_seconds(paths[:300], bb.data_config, False)
    fastest = max((e for e in rates if "bf16" not in e), key=rates.get)
    for label, decode, engine in (("before", before, "eager"), ("after", after, fastest)):
        forward = 1 / rates[engine]
        print(f"  decode share {label:6s}: decode {decode * 1e3:.2f} ms, forward ({engine}) {forward * 1e3:.2f} ms "
              f"per image: decode {decode / (decode + forward):.0%} of the time")
    calibration = collate([ImageFiles("/", paths[64:320], EvalTransform(bb.data_config))[i]
                           for i in range(min(256, len(paths) - 64))]).images.numpy()
    print("  int8 considered (static QDQ by onnxruntime, calibrated on 256 of these images):")
    for line in int8_trials(bb, images, calibration):
        print("    " + line)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="DIR/<class>/*.jpeg")
    parser.add_argument("--limit", type=int, default=1000, help="about this many images, spread evenly")
    parser.add_argument("--backbone", default="efficientnet_lite0,dinov2_vits14")
    parser.add_argument("--baseline", choices=("notebook", "eager"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline:
        return baseline(args.baseline, str(args.data), args.backbone, args.out)
    import torch

    from featx._core.accelerators import cpu_has_bf16, cpu_name

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        n = subset(args.data, args.limit, data)
        print(f"{n} images from {args.data}; CPU: {cpu_name()}, {os.cpu_count()} cores, native bf16: {cpu_has_bf16()}, "
              f"torch {torch.__version__}")
        peak = peak_gflops()
        for backbone in args.backbone.split(","):
            measure(data, backbone, Path(tmp), peak)


def subset(src: Path, limit: int, dst: Path) -> int:
    """`limit` images, each class in its share, evenly spaced in name order, symlinked into a fresh folder."""
    classes = {d.name: sorted(f for f in d.iterdir() if f.suffix.lower() in (".jpeg", ".jpg", ".png"))
               for d in sorted(src.iterdir()) if d.is_dir()}
    total = sum(map(len, classes.values()))
    for name, files in classes.items():
        (dst / name).mkdir(parents=True)
        for i in np.linspace(0, len(files) - 1, round(limit * len(files) / total)).astype(int):
            (dst / name / files[i].name).symlink_to(files[i].resolve())
    return sum(1 for _ in dst.rglob("*.*"))


if __name__ == "__main__":
    main()
