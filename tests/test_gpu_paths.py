"""The paths built for GPUs (device decoding, batch sizes that fill memory), run on the CPU (torch.compile: test_engines).

torchvision decodes JPEGs with libjpeg-turbo on the CPU and nvJPEG on CUDA through the same call,
so everything but the decoder library itself is exercised here.
"""

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import featx
from featx.cli import main
from featx.models.frozen import largest_fitting

from conftest import TINY, one_line_error, xray_like

FAST = dict(backbone=TINY, weights="random", workers=0, progress=False, log=lambda m: None, device="cpu")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _cosine(X, Y):
    return (X * Y).sum(1) / (np.linalg.norm(X, axis=1) * np.linalg.norm(Y, axis=1))


def test_device_decode_matches_pil_on_every_image_mode_and_skips_the_same_files(mixed_folder):
    # A portrait photo stored landscape with EXIF orientation 6: both modes must turn it upright.
    landscape = np.kron(xray_like(7, size=(40, 24)), np.ones((4, 4), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(landscape).save(mixed_folder / "PNEUMONIA" / "rotated.jpeg", exif=exif, quality=95)
    pil = featx.extract(mixed_folder, **FAST)
    dev = featx.extract(mixed_folder, decode="device", **FAST)

    assert dev.path != pil.path
    assert pil.config["decode"] == "featx-decode-1+featx-dicom-2:default"
    assert dev.config["decode"] == "featx-decode-1+torchvision-cpu+featx-dicom-2:default"
    assert dict(dev.skipped()).keys() == dict(pil.skipped()).keys()
    assert {"NORMAL/truncated.jpeg", "NORMAL/empty.jpg", "NORMAL/notes.jpg"} <= dict(dev.skipped()).keys()
    (X, _), (Y, _) = pil.arrays(), dev.arrays()
    assert len(X) == len(Y) == 15
    assert _cosine(X, Y).min() > 0.99  # same decode, resize on tensors instead of PIL: ±1 grey level

    # The EXIF turn matters: the same pixels without the tag give clearly different features.
    Image.fromarray(landscape).save(mixed_folder / "PNEUMONIA" / "rotated.jpeg", quality=95)
    flat = featx.extract(mixed_folder, decode="device", output=mixed_folder.parent / "flat.h5", **FAST)
    i = _done_paths(dev).index("PNEUMONIA/rotated.jpeg")
    modes_differ = np.linalg.norm(X[i] - Y[i])
    turn_differs = np.linalg.norm(flat.arrays()[0][i] - Y[i])
    assert turn_differs > 10 * modes_differ  # measured: 45×


def test_only_plain_upright_jpegs_are_left_to_the_device_decoder(mixed_folder):
    """torchvision's CUDA decoder ignores EXIF orientation and CMYK needs Pillow: those go through Pillow."""
    from featx.data.device_decoding import read_for_device

    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(xray_like(7)).save(mixed_folder / "rotated.jpeg", exif=exif)
    Image.fromarray(xray_like(7)).save(mixed_folder / "upright.jpeg", exif=Image.Exif())
    as_bytes = {name: read_for_device((mixed_folder / name).read_bytes()).dim() == 1
                for name in ("upright.jpeg", "rotated.jpeg", "NORMAL/cmyk.JPG", "NORMAL/gray.png",
                             "NORMAL/IM-1000-0001.jpeg")}
    assert as_bytes == {"upright.jpeg": True, "rotated.jpeg": False, "NORMAL/cmyk.JPG": False,
                        "NORMAL/gray.png": False, "NORMAL/IM-1000-0001.jpeg": True}
    assert read_for_device((mixed_folder / "rotated.jpeg").read_bytes()).shape == (1, 64, 48)  # turned upright


def _done_paths(store):
    done = store.row_status()[0]
    return [p for p, d in zip(store.row_table().path, done) if d]


def test_device_decode_cache_is_reused_only_for_device_decode(folder):
    store = featx.extract(folder, decode="device", **FAST)
    paths = [str(folder / p) for p in store.row_table().path]
    same = featx.FeatureExtractor(TINY, weights="random", decode="device", cache=store.path, device="cpu")
    assert np.array_equal(same.fit_transform(paths), store.arrays()[0]) and same.n_cached_ == len(paths)
    other = featx.FeatureExtractor(TINY, weights="random", cache=store.path, device="cpu")
    X = other.fit_transform(paths)
    assert other.n_cached_ == 0 and _cosine(X, store.arrays()[0]).min() > 0.99


def test_batch_size_auto_on_cpu_uses_the_default_and_says_so(folder):
    result = run("extract", "--data", folder, "--backbone", TINY, "--weights", "random", "--workers", "0",
                 "--no-progress", "--batch-size", "auto")
    assert result.exit_code == 0, result.output
    assert "--batch-size auto measures GPU memory; on cpu it means the default, 16" in result.output


@pytest.mark.parametrize("value", ["0", "many", "2.5"])
def test_bad_batch_size_is_one_line(folder, value):
    line = one_line_error(run("extract", "--data", folder, "--backbone", TINY, "--weights", "random",
                              "--batch-size", value))
    assert "--batch-size" in line


def test_largest_fitting_halves_until_the_forward_fits():
    tried = []

    def forward(n):
        tried.append(n)
        if n > 40:
            raise torch.OutOfMemoryError("CUDA out of memory")

    assert largest_fitting(forward, 256) == 32 and tried == [256, 128, 64, 32]
    with pytest.raises(torch.OutOfMemoryError):
        largest_fitting(lambda n: forward(10**6), 4)
