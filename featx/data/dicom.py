"""DICOM files as 8-bit images, displayed the way radiology viewers display them.

The pixel pipeline follows the order DICOM defines (PS3.3 C.11), with pydicom's own functions:
1. the stored values decoded (compressed transfer syntaxes through pylibjpeg's plugins); a
   multi-frame file gives its first frame;
2. the Modality LUT: RescaleSlope/RescaleIntercept, or a Modality LUT Sequence;
3. the display window (`window`): "default" applies the file's VOI LUT Sequence, else its first
   Window Center/Width with its VOILUTFunction (LINEAR, LINEAR_EXACT, SIGMOID); a file with
   neither keeps 8-bit stored values without a Modality LUT as they are (they already are display
   values, as an 8-bit PNG's are), and otherwise gets the min-max of its modality values, as featx
   does for 16-bit PNGs. "minmax" always does the min-max; "C,W" applies that LINEAR window to every
   file;
4. MONOCHROME1 inverted (its zero is white), so bone is bright as in every JPEG set;
5. scaled to 0..255 from the window's own output range.
Colour images (RGB, YBR_*, PALETTE COLOR) become 8-bit RGB. Nothing but pixels leaves the reader
(headers: featx.data.dicom_headers). The version of these rules is part of every decode policy
(featx.data.decode_policy.DICOM_RULES).
"""

from __future__ import annotations

import re

import numpy as np
from PIL import Image


DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})


class DicomError(Exception):
    """A DICOM file featx cannot show; the message is the reason recorded in the cache."""


def has_dicom_preamble(head: bytes) -> bool:
    """A DICOM Part 10 file: 128 bytes of preamble, then "DICM"."""
    return len(head) >= 132 and head[128:132] == b"DICM"


def read_dicom(source, window: str = "default") -> Image.Image:
    """A DICOM file (path or file object) as an 'L' or 'RGB' image, by the rules of this module."""
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError:
        raise DicomError("reading DICOM needs pydicom: pip install 'featx[dicom]'") from None

    try:
        ds = pydicom.dcmread(source)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise DicomError(f"not a readable DICOM file: {_short(exc)}") from None
    if "DirectoryRecordSequence" in ds:
        raise DicomError("a DICOMDIR (an index of other files), not an image")
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        kind = str(ds.get("Modality", "")) or str(ds.get("SOPClassUID", "unknown SOP class"))
        raise DicomError(f"DICOM file without pixel data ({kind}; e.g. a structured report)")
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises assorted types for missing plugins and broken data
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax) or "unknown transfer syntax"
        raise DicomError(f"cannot decode the pixel data ({name}): {_short(exc)}; "
                         "pip install 'featx[dicom]' reads the JPEG syntaxes") from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        pixels = pixels[0]
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        return Image.fromarray(_grayscale(pixels, ds, window, photometric == "MONOCHROME1"), mode="L")
    return Image.fromarray(_colour(pixels, ds, photometric), mode="RGB")


def _grayscale(pixels: np.ndarray, ds, window: str, inverted: bool) -> np.ndarray:
    from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut

    if pixels.ndim != 2:
        raise DicomError(f"grayscale pixel data of unexpected shape {pixels.shape}")
    values = apply_modality_lut(pixels, ds)  # integers stay integers: a VOI LUT indexes by them
    if window != "default" and window != "minmax":  # a window given by the user, LINEAR, for every file
        centre, width = (float(v) for v in window.split(","))
        ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = centre, width, "LINEAR"
        ds.pop("VOILUTSequence", None)
    has_voi = "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)
    if window == "default" and not has_voi and _display_values(pixels, ds):
        scaled = pixels.astype(np.float64) / 255
    elif window == "minmax" or not has_voi:
        scaled = _min_max(values)
    else:
        try:
            shown = apply_voi_lut(values, ds, index=0, prefer_lut=True).astype(np.float64)
            low, high = _voi_range(values, ds)
        except (ValueError, IndexError, TypeError, AttributeError) as exc:
            raise DicomError(f"cannot apply the file's display window: {_short(exc)}") from None
        scaled = np.clip((shown - low) / max(high - low, 1e-12), 0, 1)
    if inverted:
        scaled = 1.0 - scaled
    return np.rint(scaled * 255).astype(np.uint8)


def _display_values(pixels: np.ndarray, ds) -> bool:
    """Stored values that already are 8-bit display values (BitsStored <= 8, unsigned, no Modality LUT),
    as in the Secondary Captures many public sets ship: kept as they are, as an 8-bit PNG's are."""
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16)
    rescaled = float(ds.get("RescaleSlope", 1) or 1) != 1 or float(ds.get("RescaleIntercept", 0) or 0) != 0
    return (bits <= 8 and pixels.dtype.kind == "u" and pixels.dtype.itemsize == 1 and not rescaled
            and "ModalityLUTSequence" not in ds)


def _voi_range(values: np.ndarray, ds) -> tuple[float, float]:
    """The output range of the VOI transform pydicom applies: a VOI LUT's entries span 0..2^bits-1;
    a window maps onto a range pydicom derives from the stored bits (and rescale), which the
    window's values at the two extremes give without repeating its rules."""
    from pydicom.pixels.processing import apply_voi_lut

    if "VOILUTSequence" in ds:
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2 ** bits - 1)
    span = max(abs(float(values.min())), abs(float(values.max())), 1.0) * 1e6
    with np.errstate(over="ignore"):  # a SIGMOID window saturates at these extremes, as it should
        low, high = apply_voi_lut(np.array([-span, span]), ds, index=0, prefer_lut=False).astype(np.float64)
    return float(low), float(high)


def _min_max(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    return np.zeros_like(values) if high == low else (values - low) / (high - low)


def _colour(pixels: np.ndarray, ds, photometric: str) -> np.ndarray:
    """RGB as it is; YBR_* already converted to RGB by pydicom's pixel_array; a palette applied."""
    from pydicom.pixels.processing import apply_color_lut

    if photometric == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, ds)
    elif photometric != "RGB" and not photometric.startswith("YBR"):
        raise DicomError(f"unsupported photometric interpretation {photometric}")
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise DicomError(f"colour pixel data of unexpected shape {pixels.shape}")
    if pixels.dtype != np.uint8:  # e.g. 16-bit palettes: their own range onto 0..255
        pixels = np.rint(_min_max(pixels.astype(np.float64)) * 255)
    return pixels.astype(np.uint8)


def _short(exc: BaseException) -> str:
    text = re.sub(r"\s+", " ", str(exc)).strip() or type(exc).__name__
    return text[:160]
