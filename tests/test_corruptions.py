"""Corruptions (featx.data.corruptions): deterministic, the identity at severity 0, mode and size kept,
and each moves a statistic that names what it does monotonically with severity."""

import numpy as np
import pytest
from PIL import Image

from featx import FeatxError
from featx.data.corruptions import CORRUPTIONS, corrupt


def _texture(mode: str, size=(200, 160)) -> Image.Image:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size[1], 0:size[0]]
    base = 110 + 60 * np.sin(x / 7) * np.cos(y / 11) + rng.normal(0, 10, (size[1], size[0]))
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).convert(mode)


def _pixels(img) -> np.ndarray:
    return np.asarray(img, dtype=np.float64)


def _sharpness(img) -> float:
    """Mean absolute difference of neighbouring pixels: blur and zoom lower it."""
    x = _pixels(img)
    return float(np.abs(np.diff(x, axis=0)).mean() + np.abs(np.diff(x, axis=1)).mean())


def _change(clean):
    return lambda img: float(np.abs(_pixels(img) - _pixels(clean)).mean())


def _noise(clean):
    return lambda img: float((_pixels(img) - _pixels(clean)).std())


# corruption -> (statistic of the corrupted image given the clean one, +1 if it rises with severity, -1 if it falls)
STATISTICS = {
    "gaussian_noise": (_noise, 1), "shot_noise": (_noise, 1),
    "gaussian_blur": (lambda clean: _sharpness, -1), "motion_blur": (lambda clean: _sharpness, -1),
    "zoom": (lambda clean: _sharpness, -1),
    "jpeg_compression": (_change, 1), "rotation": (_change, 1), "shear": (_change, 1),
    "seed_perturbation": (_change, 1),
    "contrast": (lambda clean: lambda img: float(_pixels(img).std()), -1),
    "brightness": (lambda clean: lambda img: float(_pixels(img).mean()), 1),
}


def test_every_corruption_has_a_statistic():
    assert set(STATISTICS) == set(CORRUPTIONS) and len(CORRUPTIONS) == 11


@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_severity_is_monotone_and_mode_size_are_kept(name, mode):
    clean = _texture(mode)
    statistic, direction = STATISTICS[name]
    measure = statistic(clean)
    values = [measure(clean)]
    for severity in range(1, 6):
        out = corrupt(clean, name, severity, "patient1/a.jpeg")
        assert out.mode == mode and out.size == clean.size
        values.append(measure(out))
    steps = np.diff(values) * direction
    assert (steps > 0).all(), f"{name}: {values}"


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_deterministic_per_image_and_identity_at_severity_zero(name):
    clean = _texture("L")
    assert corrupt(clean, name, 0, "a.jpeg") is clean
    once = _pixels(corrupt(clean, name, 3, "a.jpeg"))
    assert np.array_equal(once, _pixels(corrupt(clean, name, 3, "a.jpeg")))  # same key: same pixels
    if name in ("gaussian_noise", "shot_noise", "motion_blur", "seed_perturbation"):  # random draws per image
        assert not np.array_equal(once, _pixels(corrupt(clean, name, 3, "b.jpeg")))


def test_rgb_channels_of_a_gray_image_stay_equal_under_noise_free_corruptions():
    rgb = _texture("RGB")
    for name in ("gaussian_blur", "motion_blur", "contrast", "rotation", "seed_perturbation"):
        x = _pixels(corrupt(rgb, name, 4, "a.jpeg"))
        assert np.array_equal(x[..., 0], x[..., 1]) and np.array_equal(x[..., 1], x[..., 2]), name


def test_spatial_corruptions_scale_with_the_image():
    """A blur of the same severity looks the same at 2x the size, once shrunk back."""
    small, large = _texture("L", (200, 160)), _texture("L", (200, 160)).resize((400, 320), Image.BICUBIC)
    blurred_small = _pixels(corrupt(small, "gaussian_blur", 3, "a"))
    blurred_large = _pixels(corrupt(large, "gaussian_blur", 3, "a").resize((200, 160), Image.BICUBIC))
    unscaled = _pixels(Image.fromarray(blurred_small.astype(np.uint8)))
    assert np.abs(blurred_large - unscaled).mean() < 3


def test_bad_names_and_severities_are_refused():
    with pytest.raises(FeatxError, match="unknown corruption 'fog'"):
        corrupt(_texture("L"), "fog", 1, "a")
    with pytest.raises(FeatxError, match="severity must be 0"):
        corrupt(_texture("L"), "zoom", 6, "a")


# --- extraction of corrupted copies ------------------------------------------------------------------

def test_corrupted_extraction_has_its_own_deterministic_cache(folder, tmp_path):
    import featx

    kw = dict(weights="random", device="cpu", workers=0, progress=False, log=lambda m: None)
    clean = featx.extract(folder, "timm:test_efficientnet", cache_dir=tmp_path / "a", **kw)
    noisy = featx.extract(folder, "timm:test_efficientnet", cache_dir=tmp_path / "a", corruption="gaussian_noise:5",
                          **kw)
    again = featx.extract(folder, "timm:test_efficientnet", cache_dir=tmp_path / "b", corruption="gaussian_noise:5",
                          **kw)
    assert noisy.path != clean.path and noisy.config["decode"] == "featx-decode-1+featx-dicom-2:default+featx-corrupt-1:gaussian_noise:5"
    (X, y), (Xn, yn), (Xa, _) = clean.arrays(), noisy.arrays(), again.arrays()
    assert np.array_equal(y, yn) and noisy.paths() == clean.paths()
    assert np.array_equal(Xn, Xa)  # the same draws for the same image paths, in any run
    assert np.abs(Xn - X).max() > 1e-3
    said = []
    featx.extract(folder, "timm:test_efficientnet", cache_dir=tmp_path / "a", corruption="gaussian_noise:5",
                  **{**kw, "log": said.append})
    assert any("nothing to extract" in line for line in said)
    zero = featx.extract(folder, "timm:test_efficientnet", cache_dir=tmp_path / "a", corruption="gaussian_noise:0",
                         **kw)
    assert zero.path == clean.path  # severity 0 is the clean image


def test_corruption_options_are_checked_in_one_line(folder):
    from click.testing import CliRunner

    from featx.cli import main

    from conftest import one_line_error

    args = ["extract", "--data", str(folder), "--backbone", "timm:test_efficientnet", "--weights", "random",
            "--workers", "0", "--no-progress", "--device", "cpu"]
    run = CliRunner().invoke
    assert "unknown corruption 'fog'" in one_line_error(run(main, [*args, "--corruption", "fog:1"]))
    assert "must be NAME:SEVERITY" in one_line_error(run(main, [*args, "--corruption", "gaussian_noise"]))
    assert "use --decode pil or pil-draft" in one_line_error(
        run(main, [*args, "--corruption", "zoom:2", "--decode", "device"]))
