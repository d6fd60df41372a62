#!/usr/bin/env bash
# Wheels of featx's dependencies (all but torch and torchvision) for an offline GPU machine's Python, into
# ./wheels (ignored by git), for benchmarks/gpu_check.sh:
#
#   bash benchmarks/gpu_wheels.sh 3.11     # the GPU machine's `python3 --version`, major.minor
set -eu
cd "$(dirname "$0")/.."
version=${1:?the GPU machine\'s Python version, e.g. 3.11}
pip download -q -d wheels --only-binary=:all: --python-version "$version" \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    timm h5py scikit-learn scipy lightgbm joblib skops click numpy pillow tqdm pytest hypothesis \
    onnx skl2onnx onnxmltools onnxruntime matplotlib huggingface_hub safetensors pyyaml
echo "$(ls wheels | wc -l) wheels, $(du -sh wheels | cut -f1), in ./wheels"
