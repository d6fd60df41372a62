"""One way to feed image files to a model, for extraction, prediction and fine-tuning alike.

`ImageFiles` maps a row to its transformed uint8 image, the sha1 of the bytes it read, or the
reason it could not be read. `image_loader` batches given lists of rows in worker processes.
An unreadable file never stops a run: it comes back as a problem with its reason.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import NamedTuple

import torch

from .._core.errors import FeatxError
from .._core.hashing import bytes_sha1
from .corruptions import corrupt
from .decode_policy import DecodePolicy
from .device_decoding import read_for_device
from .files import not_regular
from .images import ImageError, load_image


class ImageFiles(torch.utils.data.Dataset):
    """Row index -> (row, image or None, sha1 of the bytes read, reason if unreadable).

    The image is `transform`'s uint8 3×H×W tensor, or in decode mode "device" what
    device_decoding.read_for_device returns (a JPEG's bytes, or a full-size decoded tensor).
    With a `seed`, each image's random augmentation is seeded by (seed, epoch, row): the same in
    any loader worker and any process, so neither number changes the result. `policy` says how
    files become pixels (featx.data.decode_policy): the decode mode, the DICOM window, and a
    corruption applied to each decoded image first (featx.data.corruptions).
    """

    def __init__(self, root, paths: list[str], transform, *, policy: DecodePolicy | None = None,
                 seed: int | None = None):
        self.root, self.paths, self.transform, self.seed = Path(root), paths, transform, seed
        self.policy = policy or DecodePolicy()
        self.draft_side = transform.resize_side if self.policy.mode == "pil-draft" else None
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, row: int):
        path = self.root / self.paths[row]
        special = not_regular(path)
        if special:  # a FIFO would block the read forever
            return row, None, "", special
        try:
            raw = path.read_bytes()
        except OSError as exc:
            return row, None, "", f"cannot read file: {exc.strerror or exc}"
        sha1 = bytes_sha1(raw)
        if not raw:
            return row, None, sha1, "empty file (0 bytes)"
        try:
            return row, self._image(raw, row), sha1, None
        except ImageError as exc:
            return row, None, sha1, str(exc)

    def _image(self, raw: bytes, row: int) -> torch.Tensor:
        if self.policy.mode == "device":
            return read_for_device(raw, self.policy.dicom_window)
        image = load_image(io.BytesIO(raw), self.draft_side, self.policy.dicom_window)
        if self.policy.corruption:
            image = corrupt(image, *self.policy.corruption, key=self.paths[row], side=self.transform.resize_side)
        if self.seed is None:
            return self.transform(image)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(((self.seed * 1_000_003 + self.epoch) * 10_000_019 + row) % 2**63)
            return self.transform(image)


class Batch(NamedTuple):
    """A loaded batch. A NamedTuple, so that the DataLoader pins its tensor for the GPU."""

    rows: list[int]                    # rows whose image was read, in batch order
    images: torch.Tensor | list | None  # N×3×H×W uint8, or a list when sizes differ (device decode)
    problems: list[tuple[int, str]]    # (row, reason) of each unreadable file
    read_sha1: list[tuple[int, str]]   # (row, sha1 of the bytes read) of every row asked for


def collate(items) -> Batch:
    rows = [r for r, img, _, _ in items if img is not None]
    images = [img for _, img, _, _ in items if img is not None]
    if images and all(img.shape == images[0].shape and img.dim() == 3 for img in images):
        images = torch.stack(images)
    problems = [(r, reason) for r, img, _, reason in items if img is None]
    return Batch(rows, images if rows else None, problems, [(r, sha1) for r, _, sha1, _ in items])


def image_loader(dataset: ImageFiles, batches: list[list[int]], workers: int, device: torch.device):
    """The batches of rows given, decoded by `workers` processes (0: in this one), in order."""
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=collate,
                                       pin_memory=device.type == "cuda", persistent_workers=False,
                                       prefetch_factor=4 if workers > 0 else None)


def refuse_unreadable(paths, reasons, instead: str = "") -> None:
    """For callers that need every image (a feature matrix, a probability per path): one line naming
    how many could not be read and the first of them, and `instead`, the call that keeps the others."""
    bad = [f"{p}: {r}" for p, r in zip(paths, reasons) if r]
    if bad:
        raise FeatxError(f"{len(bad)} unreadable image(s), e.g. {bad[0]}" + (f"; {instead}" if instead else ""))
