"""Splitting samples into train/val/test."""

from __future__ import annotations

import numpy as np

from pipeline.errors import PipelineError


def stratified_split(
    y: np.ndarray, val: float, test: float, seed: int, classes: list[str], dataset: str
) -> dict[str, np.ndarray]:
    """Indices of train/val/test, each with the class proportions of `y`."""
    from sklearn.model_selection import train_test_split

    counts = np.bincount(y, minlength=len(classes))
    require_two_classes(dataset, classes, counts)
    few = [f"{classes[i]!r} ({c})" for i, c in enumerate(counts) if c < 3]
    if few:
        raise PipelineError(
            f"datasets.{dataset}: class(es) {', '.join(few)} have fewer than 3 samples: too "
            "few to stratify into train/val/test"
        )
    idx = np.arange(len(y))
    rest, test_idx = train_test_split(idx, test_size=test, stratify=y, random_state=seed)
    train_idx, val_idx = train_test_split(
        rest, test_size=val / (1 - test), stratify=y[rest], random_state=seed
    )
    return {"train": np.sort(train_idx), "val": np.sort(val_idx), "test": np.sort(test_idx)}


def require_two_classes(dataset: str, classes: list[str], counts) -> None:
    """A classifier of one class learns nothing, and evaluation cannot score it; stop before
    anything is trained or registered."""
    present = [(name, int(n)) for name, n in zip(classes, counts, strict=True) if n > 0]
    if len(present) < 2:
        found = ", ".join(f"{name!r}: {n}" for name, n in present) or "no samples"
        raise PipelineError(
            f"datasets.{dataset}: one class only ({found}); a classifier needs samples of at "
            "least two classes: add another class (an image folder: one sub-folder per class) "
            "or choose another target"
        )


def keep_fraction(index: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A seeded share of `index` (sorted), the same share of each class and at least one
    sample of each: the train split of a low-data experiment."""
    if fraction >= 1:
        return index
    rng = np.random.default_rng(seed)
    kept = []
    for label in np.unique(y[index]):
        members = index[y[index] == label]
        kept.append(rng.choice(members, max(1, round(len(members) * fraction)), replace=False))
    return np.sort(np.concatenate(kept))
