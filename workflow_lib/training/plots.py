"""Training curves figure (loss, validation hit rate, learning rate per epoch)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from workflow_lib.common.atomic import atomic_path


def plot_training_curves(metrics: pd.DataFrame, path: str | Path, best_epoch: int | None = None) -> None:
    """Write a three-panel PNG from the per-epoch metrics table (columns as in ``train.METRIC_COLUMNS``); the kept
    (best) epoch is marked on every panel."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    ep = metrics["epoch"] if len(metrics) else []
    ax = axes[0]
    if len(metrics):
        ax.plot(ep, metrics["train_loss"], "o-", label="train")
        if metrics["val_loss"].notna().any():
            ax.plot(ep, metrics["val_loss"], "s-", label="validation")
        ax.legend(loc="upper right")
    ax.set(title="NT-Xent loss", xlabel="epoch", ylabel="loss (lower is better)")
    ax = axes[1]
    if len(metrics) and metrics["val_top1"].notna().any():
        ax.plot(ep, 100 * metrics["val_top1"], "o-", label="top-1 exact segment")
        ax.plot(ep, 100 * metrics["val_near"], "s--", label="top-1 within one hop")
        ax.plot(ep, 100 * metrics["val_song"], "^:", label="top-1 right song")
        ax.legend(loc="lower right")
    ax.set(title="Validation 1 s queries", xlabel="epoch", ylabel="hit rate (%)", ylim=(0, 100))
    ax = axes[2]
    if len(metrics):
        ax.plot(ep, metrics["lr"], "o-")
    ax.set(title="Learning rate (end of epoch)", xlabel="epoch")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    for a in axes:
        a.grid(alpha=0.3)
        if best_epoch is not None:
            a.axvline(best_epoch, color="tab:green", linestyle="--", linewidth=1, label="kept epoch")
    if best_epoch is not None:
        axes[1].legend(loc="lower right", fontsize=8)
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
