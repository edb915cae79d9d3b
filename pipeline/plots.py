"""Figures for MLflow and the report (matplotlib, headless)."""

from __future__ import annotations

import sys

import numpy as np


def pyplot():
    """matplotlib's pyplot on the Agg backend: for Optuna's figures, which are drawn with it.
    This module's own figures do without it (`subplots`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def subplots(*args, figsize, dpi: int = 100, **kwargs):
    """A figure and its axes without pyplot: importing pyplot costs a stage process about
    0.4 s, and these figures are only saved, never shown."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    return fig, fig.subplots(*args, **kwargs)


def confusion_figure(matrix: np.ndarray, classes: list[str], title: str):
    fig, ax = subplots(figsize=(5, 4.5), dpi=100)
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
    """Losses per epoch (left) and the task's other validation metrics (right)."""
    epochs = [row["epoch"] for row in history]
    keys = [k for k in history[0] if k not in ("epoch", "lr")]
    losses = [k for k in keys if k.endswith("loss")]
    others = [k for k in keys if k.startswith("val/") and k not in losses]
    fig, axes = subplots(
        1, 2 if others else 1, figsize=(9 if others else 5, 3.5), dpi=100, squeeze=False
    )
    for key in losses:
        axes[0, 0].plot(epochs, [row[key] for row in history], label=key)
    axes[0, 0].set(xlabel="epoch", ylabel="loss", title=f"{title}: losses")
    axes[0, 0].legend(fontsize=8)
    if others:
        for key in others:
            axes[0, 1].plot(epochs, [row[key] for row in history], label=key)
        axes[0, 1].set(xlabel="epoch", title=f"{title}: validation")
        axes[0, 1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def forecast_figure(times, series: dict[str, np.ndarray], title: str, unit: str):
    fig, ax = subplots(figsize=(9, 3.5), dpi=100)
    for i, (name, values) in enumerate(series.items()):
        style = (
            {"color": "black", "linewidth": 2} if i == 0 else {"linestyle": "--" if i > 1 else "-"}
        )
        ax.plot(times, values, label=name, **style)
    ax.set(xlabel="time", ylabel=unit, title=title)
    ax.legend()
    fig.tight_layout()
    return fig


def scatter_figure(actual: np.ndarray, predicted: np.ndarray, title: str):
    fig, ax = subplots(figsize=(4.5, 4.5), dpi=100)
    ax.scatter(actual, predicted, s=8, alpha=0.6)
    lo, hi = float(min(actual.min(), predicted.min())), float(max(actual.max(), predicted.max()))
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=1)  # perfect predictions
    ax.set(xlabel="actual", ylabel="predicted", title=title)
    fig.tight_layout()
    return fig


def image_grid(images: np.ndarray, title: str, ncols: int = 10):
    """images: (N, C, H, W) in [0, 1]; one grey or RGB tile each, in rows of `ncols`, with a
    white gap between tiles. Drawn as one mosaic on one axes: matplotlib takes about 15 ms
    per axes, so a subplot per tile cost a 100-sample grid 1.5 s."""
    n, channels, h, w = images.shape
    nrows = -(-n // ncols)
    gap = max(1, h // 8)
    grey = channels == 1  # drawn with gray_r, where 0 is white; RGB tiles: 1 is white
    mosaic = np.full(
        (channels, nrows * (h + gap) - gap, ncols * (w + gap) - gap), 0.0 if grey else 1.0
    )
    for i, tile in enumerate(np.clip(images, 0, 1)):
        row, col = divmod(i, ncols)
        mosaic[:, row * (h + gap) : row * (h + gap) + h, col * (w + gap) : col * (w + gap) + w] = (
            tile
        )
    fig, ax = subplots(figsize=(ncols * 0.8, nrows * 0.8 + 0.4), dpi=100)
    ax.axis("off")
    if grey:
        ax.imshow(mosaic[0], cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(mosaic.transpose(1, 2, 0), interpolation="nearest")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def attention_figure(
    maps: list[np.ndarray],
    title: str,
    tokens: list[list[str]] | None = None,
    query_tokens: list[list[str]] | None = None,
    axes_labels: tuple[str, str] = ("attended position", "query position"),
):
    """maps: N (queries, keys) attention weights of test inputs, one panel each; `tokens`
    labels the key axis with each input's characters or words, `query_tokens` the query axis
    (default: the same tokens, for self-attention)."""
    n = len(maps)
    side = 3.2 if tokens is None else 5.0
    fig, axes = subplots(1, n, figsize=(side * n, side + 0.2), dpi=100, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.imshow(maps[i], cmap="viridis", vmin=0, aspect="auto" if query_tokens else "equal")
        ax.set(xlabel=axes_labels[0], ylabel=axes_labels[1] if i == 0 else None)
        if tokens is not None:
            rows = (query_tokens or tokens)[i]
            shown = [repr(t)[1:-1] for t in tokens[i]]  # a newline shown as \n
            turn = 90 if max(map(len, shown)) > 2 else 0  # words stand up, characters not
            ax.set_xticks(range(len(shown)), shown, fontsize=6, rotation=turn, family="monospace")
            shown = [repr(t)[1:-1] for t in rows]
            ax.set_yticks(range(len(shown)), shown, fontsize=6, family="monospace")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def roc_figure(fpr: np.ndarray, tpr: np.ndarray, auc: float, title: str):
    fig, ax = subplots(figsize=(4.2, 4), dpi=100)
    ax.plot(fpr, tpr, label=f"AUROC {auc:.3f}")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def text_figure(text: str, title: str, width: int = 90):
    """A block of (generated) text as an image, so it sits with the other figures."""
    import textwrap

    lines = [ln for para in text.splitlines() for ln in (textwrap.wrap(para, width) or [""])]
    lines = lines[:30]
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 0.5 + 0.2 * len(lines)), dpi=100)
    fig.text(0.01, 0.98, title, fontsize=9, va="top", weight="bold")
    fig.text(0.01, 0.92, "\n".join(lines), fontsize=8, va="top", family="monospace")
    return fig


def save(fig, path) -> None:
    """Write a figure atomically and free it."""
    from pipeline import atomic

    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:  # a pyplot figure (Optuna's) stays in pyplot's registry until closed
        plt.close(fig)
