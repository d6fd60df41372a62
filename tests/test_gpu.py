"""What only a CUDA GPU can show (`pytest -m gpu`; skipped without one): AMP, nvJPEG decoding, torch.compile,
batch sizes that fill memory, an AMP fine-tune that resumes, and the ONNX export of a CUDA-trained fine-tune.
benchmarks/gpu_check.sh runs these first."""

import numpy as np
import pytest
import torch

import featx

from conftest import TINY, make_folder

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_check.sh)")]

ON_GPU = dict(backbone=TINY, weights="random", progress=False, device="cuda", log=lambda m: None)


def cosines(X, Y):
    return (X * Y).sum(1) / (np.linalg.norm(X, axis=1) * np.linalg.norm(Y, axis=1))


@pytest.fixture
def images(tmp_path):
    return make_folder(tmp_path / "data", per_class=20)


def test_amp_features_agree_with_float32_on_the_gpu_and_cpu(images):
    amp = featx.extract(images, **ON_GPU)
    fp32 = featx.extract(images, precision="fp32", **ON_GPU)
    cpu = featx.extract(images, cache_dir=images.parent / "cpu", **{**ON_GPU, "device": "cpu"})  # not the GPU's rows
    assert amp.config["precision"].startswith("amp-") and amp.path != fp32.path
    assert cosines(amp.arrays()[0], fp32.arrays()[0]).min() >= 0.999
    assert cosines(fp32.arrays()[0], cpu.arrays()[0]).min() >= 0.999


def test_nvjpeg_decoding_agrees_with_pillow(images):
    pil = featx.extract(images, **ON_GPU)
    device = featx.extract(images, decode="device", **ON_GPU)
    assert device.path != pil.path and cosines(pil.arrays()[0], device.arrays()[0]).min() >= 0.999


def test_compiled_extraction_equals_eager_on_the_gpu(images):
    eager = featx.extract(images, engine="eager", batch_size=16, **ON_GPU)
    compiled = featx.extract(images, engine="compile", batch_size=16, cache_dir=images.parent / "c", **ON_GPU)
    assert compiled.path.name == eager.path.name and compiled.config["engines"] == ["compile"]
    assert cosines(eager.arrays()[0], compiled.arrays()[0]).min() >= 0.999


def test_batch_size_auto_fills_the_gpu_with_a_power_of_two(images):
    lines = []
    featx.extract(images, batch_size="auto", **{**ON_GPU, "log": lines.append})
    chosen = next(l for l in lines if l.startswith("--batch-size auto:"))
    n = int(chosen.split()[2])
    assert n >= 16 and n & (n - 1) == 0


def test_an_amp_fine_tune_resumes_exactly_and_its_onnx_export_gives_featx_predict_on_the_cpu(images, tmp_path):
    options = dict(weights="random", batch_size=8, progress=False, image_size=64, val_fraction=0.25, device="cuda")
    whole = featx.finetune(images, TINY, epochs=2, out_dir=tmp_path / "whole", **options)
    assert featx.load(whole.artifact).info["features"]["config"]["precision"].startswith("amp-")

    def interrupt_after_epoch_1(message):
        if message.startswith("epoch 1/2"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        featx.finetune(images, TINY, epochs=2, out_dir=tmp_path / "cut", log=interrupt_after_epoch_1, **options)
    lines = []
    resumed = featx.finetune(images, TINY, epochs=2, out_dir=tmp_path / "cut", resume=True, log=lines.append,
                             **options)
    assert any("resuming after epoch 1" in line for line in lines) and len(resumed.history) == 2
    a, b = torch.load(whole.artifact, weights_only=True), torch.load(resumed.artifact, weights_only=True)
    assert max(float((a[k].float() - b[k].float()).abs().max()) for k in a) < 1e-2  # cuDNN may not repeat bits
    exported = featx.export(whole.artifact, out=tmp_path / "model.onnx")
    assert exported.max_difference is not None and exported.max_difference < 1e-4
