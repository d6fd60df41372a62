#!/usr/bin/env bash
# The GPU check (issue #40): everything featx does only on a CUDA GPU, in at most 8 minutes, one results file.
#
#   bash benchmarks/gpu_check.sh [OUT]        # OUT: a folder for the results [default: $OUT or gpu-check]
#
# For a machine whose python3 already holds PyTorch (and torchvision) with CUDA but which has no network:
# featx's other dependencies come as wheels in ./wheels (ignored by git), made on a machine with the
# package index by `bash benchmarks/gpu_wheels.sh 3.X` for that machine's Python 3.X. Without ./wheels the
# check uses whatever python3 already has.
#
# Writes OUT/gpu_check.txt: the machine, `pytest -m gpu` (tests/test_gpu.py: AMP vs float32 features,
# nvJPEG vs Pillow, torch.compile, --batch-size auto, an AMP fine-tune that resumes, its ONNX export vs featx
# on the CPU), extraction throughput against the bare AMP forward on the same decoded images (goal >= 0.8x,
# decoding included), and a two-budget study with a fine-tune. Each step has its own time limit; a step
# that fails or runs out is written down and the next one runs.
set -u
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-gpu-check}}
mkdir -p "$OUT"
RESULTS="$OUT/gpu_check.txt"
WORK=$(mktemp -d)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 FEATX_CACHE_DIR="$WORK/cache"
started=$(date +%s)

step() {  # step NAME SECONDS COMMAND...: run it, its output into the results, its outcome on one line
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit} s)" >>"$RESULTS"
    local t0=$(date +%s)
    timeout "$limit" "$@" >>"$RESULTS" 2>&1
    local rc=$?
    echo "== $name: exit $rc after $(( $(date +%s) - t0 )) s" >>"$RESULTS"
    echo "$name: exit $rc"
}

: >"$RESULTS"
{
    echo "featx GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
    python3 -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| CUDA', torch.version.cuda, '| GPU', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')" 2>&1
} >>"$RESULTS"

if [ -d wheels ]; then
    step "install featx's dependencies from ./wheels" 90 bash -c "
        python3 -m venv --system-site-packages '$WORK/env' && . '$WORK/env/bin/activate' &&
        pip install --no-index --find-links wheels -q timm h5py scikit-learn scipy lightgbm joblib skops click \
            numpy pillow tqdm pytest hypothesis onnx skl2onnx onnxmltools onnxruntime matplotlib"
    [ -x "$WORK/env/bin/python3" ] && export PATH="$WORK/env/bin:$PATH"
fi

step "pytest -m gpu" 200 python3 -m pytest -m gpu -p no:xdist -o addopts="" -q -rfEs tests/test_gpu.py

# Full-size, X-ray-like JPEGs (1536 x 1536 gray): decoding them is what could starve a GPU.
python3 - "$WORK/images" <<'EOF' >>"$RESULTS" 2>&1
import sys
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image

root = Path(sys.argv[1])

def make(i):
    rng = np.random.default_rng(i)
    y, x = np.mgrid[0:1536, 0:1536]
    base = 110 + 60 * np.sin(x / (40 + i % 17)) * np.cos(y / 70) + rng.normal(0, 14, (1536, 1536))
    path = root / ("NORMAL" if i % 2 else "PNEUMONIA") / f"p{i // 4:04d}_{i}.jpeg"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(base + 25 * (i % 2), 0, 255).astype(np.uint8)).save(path, quality=90)

with Pool() as pool:
    pool.map(make, range(1200))
print(f"made 1200 JPEGs of 1536 x 1536 in {root}")
EOF

step "extraction vs the bare AMP forward (resnet50, batch 256)" 150 python3 benchmarks/extract_speed.py \
    --data "$WORK/images" --backbone resnet50 --weights random --device cuda --batch-size 256 \
    --decode pil,pil-draft,device --no-notebook --no-cli

step "a two-budget study with a fine-tune" 150 python3 -m featx study --data "$WORK/images" --val-fraction 0.2 \
    --backbones timm:resnet18 --heads logreg --finetune timm:resnet18 --finetune-epochs 2 --finetune-image-size 224 \
    --train-sizes 100,400 --repeats 1 --eval-split val --weights random --bootstrap 200 --out "$WORK/study"

echo "== done in $(( $(date +%s) - started )) s" >>"$RESULTS"
cp -r "$WORK/study/study.csv" "$OUT/" 2>/dev/null
rm -rf "$WORK"
echo "results: $RESULTS"
