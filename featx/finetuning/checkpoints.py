"""A run folder's files, each written atomically: last.pt (to resume), the best weights, history.csv."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch import nn

from .._core.atomic import atomic_path, write_csv_atomic
from .._core.errors import FeatxError
from ..artifacts.format import save_torch


def cpu_state(net: nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}


def save_weights(path: Path, net: nn.Module) -> None:
    with atomic_path(path) as tmp:
        save_torch(cpu_state(net), tmp)


def check_space(out: Path, net: nn.Module) -> None:
    """Refuse to start a run whose checkpoints cannot fit on its disk: at the worst moment the folder
    holds last.pt (weights and AdamW's two moments), best_weights.pt and a new last.pt being written,
    about 7 copies of the weights, less what the folder holds already."""
    weights = sum(t.numel() * t.element_size() for t in net.state_dict().values())
    held = sum(f.stat().st_size for f in map(out.joinpath, ("last.pt", "best_weights.pt", "model.pt")) if f.is_file())
    needed, free = 7 * weights - held, shutil.disk_usage(out).free
    if needed > free:
        raise FeatxError(f"no space left on the device for this run's checkpoints in {out}: about "
                         f"{needed / 2**20:.0f} MiB needed (last.pt with the optimizer state, the best weights, "
                         f"model.pt), {free / 2**20:.0f} MiB free; free space, or give --out on another disk")


def save_last(path: Path, config_hash: str, training, state: dict) -> None:
    """Everything a resumed run needs: the network, optimizer, scheduler and scaler of `training`, and `state`."""
    with atomic_path(path) as tmp:
        save_torch({"config_hash": config_hash, "model": cpu_state(training.net),
                    "optimizer": training.optimizer.state_dict(), "scheduler": training.scheduler.state_dict(),
                    "scaler": training.scaler.state_dict(), "state": state,
                    **({"average": training.average.state_dict()} if training.average is not None else {})}, tmp)


def resume(path: Path, config_hash: str, training) -> dict:
    """Load `last.pt` into `training` and return the run state it saved (refused for another configuration)."""
    if not path.exists():
        raise FeatxError(f"--resume: no checkpoint to resume at {path}; run without --resume to start")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FeatxError(f"--resume: cannot read {path}: {exc}") from None
    if saved.get("config_hash") != config_hash:
        raise FeatxError(f"--resume: {path} is from another configuration ({saved.get('config_hash')}, "
                         f"asked {config_hash}); use the same options, or start a new run without --resume")
    training.net.load_state_dict(saved["model"])
    training.optimizer.load_state_dict(saved["optimizer"])
    training.scheduler.load_state_dict(saved["scheduler"])
    training.scaler.load_state_dict(saved["scaler"])
    if training.average is not None:
        training.average.load_state_dict(saved["average"])
    state = saved["state"]
    if state.get("best_score") is None and state.get("best_epoch"):  # saved before selection by score
        state["best_score"] = [-state["best_val_loss"]]
    return state


def write_history(out: Path, history: list[dict]) -> None:
    if history:
        write_csv_atomic(out / "history.csv", history)
