import io

import numpy as np
import pytest
from PIL import Image

from featx.data.images import ImageError, load_image
from featx.data.transforms import EvalTransform

from conftest import xray_like


def _encode(img: Image.Image, fmt: str) -> io.BytesIO:
    buf = io.BytesIO()
    img.save(buf, fmt)
    buf.seek(0)
    return buf


def test_sixteen_bit_is_rescaled_not_clipped():
    data = np.linspace(1000, 4000, 64 * 48).reshape(48, 64).astype(np.uint16)  # 12-bit range
    img = load_image(_encode(Image.fromarray(data), "PNG"))
    px = np.asarray(img)
    assert img.mode == "L" and px.min() == 0 and px.max() == 255
    assert (np.diff(px[:, 0].astype(int)) >= 0).all()  # order kept, nothing saturated early
    assert len(np.unique(px)) > 200


def test_rgba_is_composited_on_black():
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:4, :, 3] = 255  # top opaque, bottom transparent
    img = load_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    px = np.asarray(img)
    assert img.mode == "RGB" and (px[:4] == 200).all() and (px[4:] == 0).all()


@pytest.mark.parametrize("mode", ["L", "1", "P", "CMYK", "LA"])
def test_modes_become_l_or_rgb(mode):
    base = Image.fromarray(np.stack([xray_like(0)] * 3, -1))
    img = base.convert(mode)
    fmt = {"CMYK": "JPEG", "LA": "PNG"}.get(mode, "PNG")
    assert load_image(_encode(img, fmt)).mode in ("L", "RGB")


def test_exif_orientation_is_applied():
    img = Image.fromarray(xray_like(0, size=(64, 32)))  # wide
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    buf.seek(0)
    assert load_image(buf).size == (32, 64)


def test_grayscale_gives_three_equal_channels_identical_to_rgb_path():
    gray = Image.fromarray(xray_like(3, size=(300, 200)))
    cfg = {"input_size": [3, 64, 64], "interpolation": "bicubic", "crop_pct": 0.875, "crop_mode": "center",
           "mean": [0.5] * 3, "std": [0.5] * 3}
    t = EvalTransform(cfg)
    from_gray, from_rgb = t(gray), t(gray.convert("RGB"))
    assert from_gray.shape == (3, 64, 64) and from_gray.dtype.is_floating_point is False
    assert (from_gray == from_rgb).all()


def test_an_rgb_file_of_equal_channels_is_read_as_one_channel_with_identical_pixels_after_any_transform():
    import torch

    from featx.data.transforms import TrainTransform

    cfg = {"input_size": [3, 64, 64], "interpolation": "bicubic", "crop_pct": 0.875, "crop_mode": "center",
           "mean": [0.5] * 3, "std": [0.5] * 3}
    gray_rgb = Image.fromarray(np.stack([xray_like(4, size=(300, 200))] * 3, -1))
    colour = np.stack([xray_like(4, size=(300, 200))] * 3, -1)
    colour[5, 7, 2] += 1  # one pixel differs in one channel: a colour image
    read = load_image(_encode(gray_rgb, "PNG"))
    assert read.mode == "L" and load_image(_encode(Image.fromarray(colour), "PNG")).mode == "RGB"
    for transform in (EvalTransform(cfg), TrainTransform(cfg, "xray"), TrainTransform(cfg, "randaugment")):
        outputs = []
        for image in (read, gray_rgb):
            torch.manual_seed(3)
            outputs.append(transform(image))
        assert outputs[0].shape == (3, 64, 64) and torch.equal(*outputs)


def test_unreadable_bytes_raise_image_error_with_a_reason():
    good = _encode(Image.fromarray(xray_like(0)), "JPEG").getvalue()
    for raw in (good[: len(good) // 3], b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 20):
        with pytest.raises(ImageError) as info:
            load_image(io.BytesIO(raw))
        assert str(info.value)
