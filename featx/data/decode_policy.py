"""How image files become pixels, as one value: the decode mode, the device that decodes, the DICOM
display rules and a corruption. Caches and models record it as text; `format` writes that text and
`parse` reads it back, here and nowhere else.

The DICOM rules are part of every policy, whether or not the images at hand hold a DICOM file: they
apply file by file, so adding one DICOM file to a JPEG folder adds one row to its cache, and a split
without DICOM files is described by the same policy as the whole folder.

Text written by earlier versions parses too: a policy without a DICOM part (`dicom_rules` None) was
recorded for images that held no DICOM file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from .._core.errors import FeatxError
from .._core.options import check_choice

DECODE_RULES = "featx-decode-1"  # bump when the pixels of JPEG, PNG or TIFF files change
DICOM_RULES = "featx-dicom-2"  # 2: 8-bit stored values without a window are kept as they are (a PNG's rule)
CORRUPTION_RULES = "featx-corrupt-1"  # bump when a corruption's pixels change
MODES = ("pil", "pil-draft", "device")
WINDOWS = ("default", "minmax")

_TEXT = re.compile(
    rf"^{DECODE_RULES}"
    r"(?:\+(?P<draft>jpeg-draft)|\+torchvision-(?P<device>[a-z0-9_]+))?"
    r"(?:\+(?P<dicom>featx-dicom-\d+):(?P<window>.+?))?"
    r"(?:\+featx-corrupt-(?P<cversion>\d+):(?P<corruption>[a-z_]+):(?P<severity>\d+))?$")


@dataclass(frozen=True)
class DecodePolicy:
    """The rules that turn a file into the pixels a backbone sees (see the module's docstring)."""

    mode: str = "pil"  # pil, pil-draft (JPEG DCT scaling) or device (decoded in batches on the model's device)
    device_kind: str | None = None  # with mode "device": the torch device type that decodes (cuda, cpu)
    dicom_window: str = "default"  # default, minmax or "C,W" (featx.data.dicom)
    dicom_rules: str | None = DICOM_RULES  # None: recorded before DICOM rules were part of every policy
    corruption: tuple[str, int] | None = None  # (name, severity) from featx.data.corruptions
    corruption_rules: str = CORRUPTION_RULES

    @classmethod
    def for_run(cls, mode: str = "pil", device=None, *, dicom_window: str | None = "default",
                corruption: tuple[str, int] | None = None) -> DecodePolicy:
        """The policy of a run asked for `mode` on `device` (a torch.device or its type), checked."""
        check_choice("decode", mode)
        kind = getattr(device, "type", device) if mode == "device" else None
        if mode == "device" and not kind:
            raise FeatxError("decode mode 'device' needs the device that decodes")
        return cls(mode, kind, check_window(dicom_window), DICOM_RULES, corruption)

    def format(self) -> str:
        """The text caches and sidecars record (and `parse` reads)."""
        text = DECODE_RULES
        if self.mode == "pil-draft":
            text += "+jpeg-draft"
        elif self.mode == "device":
            text += f"+torchvision-{self.device_kind}"
        if self.dicom_rules:
            text += f"+{self.dicom_rules}:{self.dicom_window}"
        if self.corruption:
            text += f"+{self.corruption_rules}:{self.corruption[0]}:{self.corruption[1]}"
        return text

    @classmethod
    def parse(cls, text: str | None) -> DecodePolicy:
        """The policy a cache or sidecar recorded; None or "" (caches older than the modes) mean pil."""
        if not text:
            return cls(dicom_rules=None)
        found = _TEXT.match(text)
        if not found:
            raise FeatxError(f"unknown decode policy {text!r}: made by a newer featx? (this one knows {DECODE_RULES})")
        mode = "pil-draft" if found["draft"] else "device" if found["device"] else "pil"
        corruption = (found["corruption"], int(found["severity"])) if found["corruption"] else None
        return cls(mode, found["device"], found["window"] or "default", found["dicom"], corruption,
                   f"featx-corrupt-{found['cversion']}" if corruption else CORRUPTION_RULES)

    def clean(self) -> DecodePolicy:
        """The same decoding without the corruption."""
        return replace(self, corruption=None, corruption_rules=CORRUPTION_RULES)

    def corrupted(self, corruption: tuple[str, int] | None) -> DecodePolicy:
        return replace(self.clean(), corruption=corruption) if corruption else self.clean()

    def __str__(self) -> str:
        return self.format()


def check_window(window: str | None) -> str:
    """"default", "minmax" or "C,W" (a centre and a positive width) -> the same text, checked."""
    window = "default" if window is None else str(window).strip()
    if window in WINDOWS:
        return window
    parts = window.split(",")
    try:
        centre, width = (float(p) for p in parts)
    except ValueError:
        raise FeatxError(f"--dicom-window takes default, minmax, or CENTRE,WIDTH (e.g. 1024,2048); not {window!r}") \
            from None
    if not (abs(centre) < float("inf") and width < float("inf")):
        raise FeatxError(f"--dicom-window needs finite numbers, not {window!r}")
    if width <= 0:
        raise FeatxError(f"--dicom-window width must be positive, not {width:g}")
    return f"{centre:g},{width:g}"
