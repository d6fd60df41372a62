"""onnxruntime on exported featx models vs `featx predict`, on the same images, side by side in one run.

Set-up (not timed): Lite0 features of --data (validation cut by patient), a logreg head and every other
head (for the file sizes), a short Lite0 fine-tune on --finetune-images of them (the weights' quality
does not change its speed), and both exported with `featx export`. Then, per model, each in a fresh
process:
  start-up: from launching the process to its first prediction of one image (`featx predict --model M
            IMAGE` vs the printed onnxruntime example run as `python example.py IMAGE`)
  images/s: --images images of the validation cut, after loading and one warm-up batch: `featx.predict`
            (decoding in its workers) vs the example's PIL preprocessing and onnxruntime in batches of 32
The ratios are onnxruntime / featx. Also prints each head's file size as a joblib pickle and as skops.

    FEATX_WEIGHTS_DIR=../shared/weights python benchmarks/export_speed.py --data ../shared/data/chest_xray
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import joblib

import featx

FEATX_RUN = """
import sys, time, featx
paths = [l.strip() for l in open(sys.argv[2])]
model = featx.load(sys.argv[1])
featx.predict(model, paths[:32], device="cpu")
t = time.perf_counter(); featx.predict(model, paths, device="cpu"); print(len(paths) / (time.perf_counter() - t))
"""
ONNX_RUN = """
import sys, time, json, numpy as np, onnxruntime as ort
from featx.exporting.onnx_export import onnx_input
paths = [l.strip() for l in open(sys.argv[2])]
recipe = json.load(open(sys.argv[3]))
session = ort.InferenceSession(sys.argv[1])
def run(batch): return session.run(["probabilities"], {"image": np.concatenate([onnx_input(p, recipe) for p in batch])})
run(paths[:32])
t = time.perf_counter()
for i in range(0, len(paths), 32): run(paths[i:i + 32])
print(len(paths) / (time.perf_counter() - t))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--images", type=int, default=624)
    parser.add_argument("--finetune-images", type=int, default=200)
    parser.add_argument("--work", default=None, help="Folder for caches and models [default: a temporary one].")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp())
    cache, quiet = work / "cache", (lambda m: None)
    store = featx.extract(args.data, "efficientnet_lite0", val_fraction=0.2, cache_dir=cache, progress=False, log=quiet)
    heads = {r.head: r.artifact for r in featx.fit(store.path, head="all", cache_dir=cache, log=quiet)}
    images = [str(Path(store.config["data_root"]) / p) for p in store.paths("val")][: args.images]
    listing = work / "images.txt"
    listing.write_text("\n".join(images) + "\n")
    run_dir = _finetune(args.data, work, args.finetune_images)
    print(f"{len(images)} images of {args.data} (validation cut); heads fitted on {len(store.paths('train'))}")
    print("\nhead file sizes (KiB): joblib pickle -> skops")
    for name, path in heads.items():
        pickled = work / f"{name}.joblib"
        joblib.dump(featx.load(path).head, pickled)
        print(f"  {name:<9}{pickled.stat().st_size / 1024:10.1f} -> {path.stat().st_size / 1024:10.1f}")
    for label, model in (("Lite0 + logreg", heads["logreg"]), ("Lite0 fine-tune", run_dir / "model.pt")):
        _compare(label, model, images, listing, work)


def _finetune(data, work: Path, n: int) -> Path:
    """A one-epoch Lite0 fine-tune on n images of each class (copied into a small folder)."""
    small = work / "small"
    for label in ("NORMAL", "PNEUMONIA"):
        (small / label).mkdir(parents=True, exist_ok=True)
        for f in sorted((Path(data) / "train" / label).iterdir())[: n // 2]:
            shutil.copy(f, small / label / f.name)
    out = work / "finetune"
    featx.finetune(small, backbone="efficientnet_lite0", epochs=1, val_fraction=0.2, out_dir=out,
                   cache_dir=work / "cache", progress=False)
    return out


def _compare(label: str, model: Path, images: list[str], listing: Path, work: Path) -> None:
    exported = featx.export(model, out=work / f"{model.stem}-{label.split()[-1]}.onnx")
    example = work / "example.py"
    example.write_text(exported.example)
    featx_start = _seconds([sys.executable, "-m", "featx", "predict", "--model", str(model), "--device", "cpu", images[0]])
    onnx_start = _seconds([sys.executable, str(example), images[0]])
    featx_rate = float(_output([sys.executable, "-c", FEATX_RUN, str(model), str(listing)]))
    onnx_rate = float(_output([sys.executable, "-c", ONNX_RUN, str(exported.path), str(listing), str(exported.recipe)]))
    print(f"\n{label}: {exported.path.name} ({exported.path.stat().st_size / 2**20:.1f} MiB), onnxruntime vs featx on 2 "
          f"generated images: max |dp| {exported.max_difference:.1e}")
    print(f"  start-up to first prediction: featx predict {featx_start:.2f} s, onnxruntime {onnx_start:.2f} s "
          f"(ratio {onnx_start / featx_start:.2f})")
    print(f"  images/s on {len(images)} images: featx predict {featx_rate:.1f}, onnxruntime {onnx_rate:.1f} "
          f"(ratio {onnx_rate / featx_rate:.2f})")


def _seconds(command) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return time.perf_counter() - started


def _output(command) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]


if __name__ == "__main__":
    main()
