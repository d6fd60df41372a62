"""A fine-tune's learning curves: loss and accuracy per epoch (needs matplotlib: pip install featx[report])."""

from __future__ import annotations

from pathlib import Path

from .._core.atomic import atomic_path
from .._core.errors import FeatxError
from .._core.plotting import pyplot


def plot_history(plt, history: list[dict]):
    """Loss and accuracy per epoch, train and validation, the best epoch marked."""
    epochs = [h["epoch"] for h in history]
    fig, (loss, acc) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train (augmented, class-weighted)")
    loss.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    loss.set(title="Loss (cross-entropy)", xlabel="epoch", ylabel="loss")
    acc.plot(epochs, [h["train_accuracy"] for h in history], "o-", label="train")
    acc.plot(epochs, [h["val_accuracy"] for h in history], "o-", label="validation")
    acc.set(title="Accuracy", xlabel="epoch", ylabel="accuracy")
    best = min(history, key=lambda h: h["val_loss"])["epoch"]
    for ax in (loss, acc):
        ax.axvline(best, color="grey", linestyle=":", label=f"best epoch ({best})")
        ax.set_xticks(epochs)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def write_curves(out: Path, history: list[dict], log) -> None:
    """curves.png in the run folder; without matplotlib, one line saying how to get it."""
    try:
        plt = pyplot()
    except FeatxError:
        log("matplotlib is not installed: no curves.png (pip install 'featx[report]')")
        return
    fig = plot_history(plt, history)
    with atomic_path(out / "curves.png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
