"""The developers' study design on a CPU before and after issue #40, side by side in one run.

Lite0 and DINOv2-S frozen with logreg and LightGBM, and a Lite0 fine-tune, on --limit images of the shared
X-rays (a validation part cut by patient, every unit evaluated on it), each study into an empty cache and
folder, so extraction is counted:
  before   extraction by eager float32 (`--engine eager`), fine-tunes in float32 with NCHW networks (what
           featx did before: channels-last only on CUDA)
  after    extraction at `--precision bf16` (`featx.study(precision="bf16")`: OpenVINO where installed), fine-tunes
           channels-last in float32 (bfloat16 makes Lite0's training step slower: benchmarks/cpu_finetune.py)
Wall time of each, and the leader of each at every size.

    FEATX_WEIGHTS_DIR=DIR python benchmarks/study_speed.py --data ../shared/data/chest_xray --limit 1500

DIR holds the Lite0 and DINOv2-S weights files (../shared/tools/dinov2_small_weights.sh makes the latter).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import featx
import featx.finetuning.runner as runner


@contextmanager
def before():
    """Extraction by eager, and fine-tunes in NCHW, as featx ran them before."""
    import featx.features.extraction as extraction
    import featx.features.recipe  # noqa: F401  (reads extract's signature once, before it is wrapped)
    import featx.studies.plan  # noqa: F401

    rule, real = runner.channels_last, extraction.extract
    runner.channels_last = lambda net, device: device.type == "cuda" and rule(net, device)
    extraction.extract = lambda *a, **k: real(*a, **{**k, "engine": "eager"})
    try:
        yield
    finally:
        runner.channels_last, extraction.extract = rule, real


def run(data: Path, args, precision: str, out: Path) -> tuple[float, object]:
    options = dict(backbones=["efficientnet_lite0", "dinov2_vits14"], heads=["logreg", "lightgbm"],
                   finetune=["efficientnet_lite0"], train_sizes=args.sizes, finetune_sizes=args.finetune_sizes,
                   repeats=args.repeats, eval_split="val", val_fraction=0.25, precision=precision, n_boot=200,
                   finetune_options={"epochs": args.epochs})
    start = time.perf_counter()
    result = featx.study(data, out=out, cache_dir=out.parent / f"cache-{out.name}", report=False, progress=False,
                         log=lambda m: None, **options)
    return time.perf_counter() - start, result


def manifest(src: Path, limit: int, out: Path) -> Path:
    """A CSV manifest (path,label) of `limit` images of `src`, spread evenly over its sorted files (names keep
    their patients, so the validation cut is by patient)."""
    files = sorted(p for p in src.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    step = len(files) / limit
    chosen = [files[int(i * step)] for i in range(limit)]
    path = out / "subset.csv"
    path.write_text("path,label\n" + "".join(f"{f},{f.parent.name}\n" for f in chosen))
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/chest_xray")
    parser.add_argument("--limit", type=int, default=1500, help="images of --data, spread evenly (a manifest)")
    parser.add_argument("--sizes", default="25,50,100,250")
    parser.add_argument("--finetune-sizes", default="25,50,100,250")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = manifest(Path(args.data), args.limit, tmp)
        print(f"{args.limit} images of {args.data} (a quarter cut by patient for validation); sizes {args.sizes}, fine-tunes "
              f"at {args.finetune_sizes} for {args.epochs} epochs, {args.repeats} repeats")
        with before():
            seconds_before, result_before = run(data, args, "auto", tmp / "before")
        seconds_after, result_after = run(data, args, "bf16", tmp / "after")
        print(f"before {seconds_before / 60:.1f} min, after {seconds_after / 60:.1f} min: "
              f"x{seconds_before / seconds_after:.2f}")
        for name, result in (("before", result_before), ("after", result_after)):
            print(f"{name}:")
            for line in result.verdict:
                print("  " + line)


if __name__ == "__main__":
    main()
