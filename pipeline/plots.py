"""Figures for MLflow and the report (matplotlib, headless)."""

from __future__ import annotations

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_figure(matrix: np.ndarray, classes: list[str], title: str):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4.5), dpi=100)
    im = ax.imshow(matrix, cmap="Blues")
    ax.set(
        xticks=range(len(classes)),
        yticks=range(len(classes)),
        xticklabels=classes,
        yticklabels=classes,
        xlabel="predicted",
        ylabel="actual",
        title=title,
    )
    for (i, j), v in np.ndenumerate(matrix):
        if v:
            color = "white" if v > matrix.max() / 2 else "black"
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color=color)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def curves_figure(history: list[dict], title: str):
    """Loss (left) and validation accuracy (right) per epoch."""
    plt = _pyplot()
    epochs = [row["epoch"] for row in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5), dpi=100)
    for key in ("train/loss", "val/loss"):
        left.plot(epochs, [row[key] for row in history], label=key)
    left.set(xlabel="epoch", ylabel="loss", title=f"{title}: loss")
    left.legend()
    right.plot(epochs, [row["val/accuracy"] for row in history], color="tab:green")
    right.set(xlabel="epoch", ylabel="val/accuracy", title=f"{title}: validation accuracy")
    fig.tight_layout()
    return fig


def save(fig, path) -> None:
    """Write a figure atomically and free it."""
    from pipeline import atomic

    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    _pyplot().close(fig)
