"""A fine-tune's learning curves: loss and accuracy per epoch (needs matplotlib: pip install featx[report])."""

from __future__ import annotations

from pathlib import Path

from .._core.atomic import atomic_path
from .._core.errors import FeatxError
from .._core.plotting import pyplot


def plot_history(plt, history: list[dict], best_epoch: int | None = None):
    """Loss and accuracy per epoch, train and validation (and the weight average's validation, under --ema),
    the selected epoch marked (by default the lowest validation loss, the rule before --select)."""
    epochs = [h["epoch"] for h in history]
    averaged = "ema_val_loss" in history[0]
    fig, (loss, acc) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train (augmented, class-weighted)")
    loss.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    acc.plot(epochs, [h["train_accuracy"] for h in history], "o-", label="train")
    acc.plot(epochs, [h["val_accuracy"] for h in history], "o-", label="validation")
    if averaged:
        loss.plot(epochs, [h["ema_val_loss"] for h in history], "s--", label="validation, weight average (EMA)")
        acc.plot(epochs, [h["ema_val_accuracy"] for h in history], "s--", label="validation, weight average (EMA)")
    loss.set(title="Loss (cross-entropy)", xlabel="epoch", ylabel="loss")
    acc.set(title="Accuracy", xlabel="epoch", ylabel="accuracy")
    if best_epoch is None:
        best_epoch = min(history, key=lambda h: h["ema_val_loss" if averaged else "val_loss"])["epoch"]
    for ax in (loss, acc):
        ax.axvline(best_epoch, color="grey", linestyle=":", label=f"selected epoch ({best_epoch})")
        ax.set_xticks(epochs)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def write_curves(out: Path, history: list[dict], log, best_epoch: int | None = None) -> None:
    """curves.png in the run folder; without matplotlib, one line saying how to get it."""
    try:
        plt = pyplot()
    except FeatxError:
        log("matplotlib is not installed: no curves.png (pip install 'featx[report]')")
        return
    fig = plot_history(plt, history, best_epoch)
    with atomic_path(out / "curves.png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
