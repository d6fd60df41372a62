"""How long a study's units will take on this machine, from what this machine measured.

Every finished unit adds its measured rate to `<cache>/throughput.json` (extraction images/s per backbone
and image size; head fit seconds against the number of images; fine-tune training and evaluation
images/s). A rate never measured here is timed on a few batches of random inputs through the backbone
(forward for extraction and evaluation, forward and backward for training), which leaves out decoding:
such an estimate is marked as timed, not measured. Heads never fitted here are estimated at their
smallest recorded neighbour, or not at all (the plan says so).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .._core.atomic import write_text_atomic
from .._core.locks import exclusive_lock

FILE = "throughput.json"


class Throughput:
    """This machine's measured rates, read once, added to as units finish."""

    def __init__(self, cache_dir: Path, device: str = "cpu"):
        self.path = Path(cache_dir) / FILE
        self.device = device
        self.rates = _read(self.path)
        self.timed: set[tuple] = set()  # (kind, name, size) estimated from a few batches here, not measured

    def _key(self, kind: str, name: str, size=None) -> str:
        """The file's key for one rate (written, never read apart)."""
        return f"{self.device}|{kind}|{name}" + (f"@{size}" if size else "")

    def record(self, kind: str, name: str, value, size=None) -> None:
        """Add one measurement (rates: the newest wins; fits, `value` (images, seconds): the pairs are kept)."""
        key = self._key(kind, name, size)
        with exclusive_lock(self.path, wait=True):
            rates = _read(self.path)
            if kind == "fit":
                pairs = {int(n): s for n, s in rates.get(key, [])}
                pairs[int(value[0])] = float(value[1])
                value = sorted(pairs.items())[-32:]
            rates[key] = value
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.path, json.dumps(rates, indent=1, sort_keys=True) + "\n")
            self.rates = rates
        self.timed.discard((kind, name, size))

    def images_per_second(self, kind: str, backbone: str, size=None) -> float:
        """Extraction ("extract"), or fine-tune training ("train") and evaluation ("eval") images/s."""
        key = self._key(kind, backbone, size)
        if key not in self.rates:
            forward, train = _timed(backbone, size)
            for k, v in (("extract", forward), ("eval", forward), ("train", train)):
                if self._key(k, backbone, size) not in self.rates:
                    self.rates[self._key(k, backbone, size)] = v
                    self.timed.add((k, backbone, size))
        return float(self.rates[key])

    def fit_seconds(self, head: str, images: int) -> float | None:
        """Seconds for one fit of `head` (selection included) on `images` images; None when never measured."""
        pairs = self.rates.get(self._key("fit", head))
        if not pairs:
            return None
        below = [s for n, s in pairs if n <= images]
        above = [(n, s) for n, s in pairs if n > images]
        if below and not above:  # beyond the largest measured: grows with the images
            n_max, s_max = max(pairs)
            return s_max * images / max(n_max, 1)
        return max(below) if below else min(above)[1]


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}


def _timed(backbone: str, size, batch: int = 8, batches: int = 2) -> tuple[float, float]:
    """(forward images/s, forward+backward images/s) of the backbone on random inputs, after a warm-up."""
    import torch

    from ..models.backbones import create_backbone

    bb = create_backbone(backbone, "random", image_size=size, frozen=False)
    x = torch.randn(batch, *bb.data_config["input_size"])
    rates = []
    for train in (False, True):
        bb.model.train(train)
        for i in range(batches + 1):
            if i == 1:
                started = time.perf_counter()
            with torch.set_grad_enabled(train):
                out = bb.model(x)
                if train:
                    out.float().sum().backward()
        rates.append(batch * batches / (time.perf_counter() - started))
    return rates[0], rates[1]
