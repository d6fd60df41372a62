"""`--weights` naming a featx fine-tune: continue from your own model (train on one set, then again on another,
or retrain its top on perturbed images).

The parent is accepted only through its checked sidecar (intact, the file matching its sha256) and only
for the same backbone; its backbone is loaded whole, its head too when the classes are the same ones in
the same order (otherwise the new head starts from its seeded initialisation, and the log says so). The
new run records the parent (`started_from`), which `featx compare` shows.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import torch

from .._core.errors import FeatxError, first_line
from ..artifacts.format import read_verified, sidecar_path
from ..artifacts.sidecar import Sidecar

HEAD_SUFFIXES = (".skops", ".joblib")


@dataclass(frozen=True)
class Parent:
    """A featx fine-tune to start from: where it is, what it is, and its weights."""

    path: Path
    sha256: str
    config_hash: str | None
    classes: tuple[str, ...]
    image_size: int | None
    data_config: dict
    state: dict

    def record(self) -> dict:
        """What a run's hash is taken over: the parent by its bytes, never its path (a moved project resumes
        and reuses its fine-tunes)."""
        return {"sha256": self.sha256, "config_hash": self.config_hash, "classes": list(self.classes)}

    def described(self) -> dict:
        """What the run's sidecar says it started from: the record, and where the parent was."""
        return {"path": str(self.path), **self.record()}


def fine_tune_named(weights: str) -> Path | None:
    """The model.pt that `weights` names when it is a featx artifact (a run folder or a file with a sidecar);
    None for "imagenet", "random", a hub name, a plain weights file or a Hugging Face folder."""
    path = Path(str(weights)).expanduser()
    if path.is_dir():
        path = path / "model.pt"
        return path if path.is_file() else None
    if path.suffix in HEAD_SUFFIXES or (path.is_file() and sidecar_path(path).is_file()):
        return path
    return None


def read_parent(path: Path, backbone: str) -> Parent:
    """The fine-tune at `path`, refused in one line when it is a head, damaged or of another backbone."""
    info, raw = read_verified(path)
    side = Sidecar.from_json(info)
    if not side.finetuned:
        raise FeatxError(f"--weights {path} is a featx {info.get('head')} head on {side.method.backbone} features, "
                         "not a fine-tune: --weights takes a fine-tune's model.pt or run folder (or imagenet, random, "
                         "a weights file); a logistic-regression head can start the new head with --init-head-from")
    if side.method.backbone != backbone:
        raise FeatxError(f"--weights {path} is a fine-tune of {side.method.backbone}, not of {backbone}: "
                         f"continue it with --backbone {side.method.backbone}")
    try:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FeatxError(f"--weights {path}: cannot read its weights: {first_line(exc)}") from None
    return Parent(path.resolve(), info["sha256"], info.get("config_hash"), side.classes, side.image_size,
                  info["features"]["config"]["data_config"], state)


def load_parent(net, parent: Parent, classes: list[str], log) -> bool:
    """Load `parent` into `net` (a FinetuneNetwork of the same backbone); True when its head was kept."""
    keep_head = list(parent.classes) == list(classes)
    state = parent.state if keep_head else {k: v for k, v in parent.state.items() if not k.startswith("head.")}
    try:
        net.load_state_dict(state, strict=keep_head)
    except RuntimeError as exc:
        raise FeatxError(f"--weights {parent.path} does not fit this network: {first_line(exc)}") from None
    if keep_head:
        log(f"starting from the fine-tune {parent.path} (backbone and head: same classes)")
    else:
        log(f"starting from the fine-tune {parent.path}: backbone kept, head re-initialised (its classes "
            f"{', '.join(parent.classes)} are not these: {', '.join(classes)})")
    return keep_head
