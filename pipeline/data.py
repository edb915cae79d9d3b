"""Data sources and preprocessing: raw arrays -> seeded splits normalised with train statistics.

Files are .npz (read with allow_pickle=False) plus JSON, so this module needs no torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline import atomic, paths
from pipeline.config import DatasetParams
from pipeline.errors import PipelineError

RAW_FILE = "data.npz"
RAW_META = "meta.json"


def ingest(name: str, cfg: DatasetParams) -> Path:
    """Fetch the source into data/raw/<name>/ (x, y arrays + meta.json)."""
    x, y, meta = _load_source(cfg)
    with atomic.atomic_dir(paths.raw_dir(name)) as tmp:
        np.savez(tmp / RAW_FILE, x=x, y=y)
        (tmp / RAW_META).write_text(json.dumps(meta, indent=2) + "\n")
    return paths.raw_dir(name)


def _load_source(cfg: DatasetParams) -> tuple[np.ndarray, np.ndarray, dict]:
    if cfg.source == "sklearn_digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = digits.images.astype(np.float32)[:, None, :, :]  # (N, 1, 8, 8), values 0..16
        y = digits.target.astype(np.int64)
        meta = {
            "source": cfg.source,
            "task": "classification",
            "classes": [str(c) for c in digits.target_names],
            "value_range": [0.0, 16.0],
        }
        return x, y, meta
    raise PipelineError(f"source {cfg.source!r} has no loader")  # the schema prevents this


def preprocess(name: str, cfg: DatasetParams) -> Path:
    """Split data/raw/<name> (stratified, seeded), normalise with train stats, write schema.json."""
    x, y, meta = read_raw(name)
    splits = stratified_split(y, cfg.split.val, cfg.split.test, cfg.split.seed)
    x = x / np.float32(meta["value_range"][1])  # to [0, 1]
    channel_axes = (0, *range(2, x.ndim))
    train_x = x[splits["train"]]
    mean = train_x.mean(axis=channel_axes) if cfg.normalize else np.zeros(x.shape[1], np.float32)
    std = train_x.std(axis=channel_axes) if cfg.normalize else np.ones(x.shape[1], np.float32)
    std = np.where(std > 0, std, 1.0).astype(np.float32)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    x = ((x - mean.reshape(shape)) / std.reshape(shape)).astype(np.float32)

    n_classes = len(meta["classes"])
    schema = {
        "dataset": name,
        "source": meta["source"],
        "task": meta["task"],
        "input_shape": list(x.shape[1:]),
        "classes": meta["classes"],
        "num_classes": n_classes,
        "counts": {s: int(len(i)) for s, i in splits.items()},
        "class_counts": {
            s: np.bincount(y[i], minlength=n_classes).tolist() for s, i in splits.items()
        },
        "normalization": {"mean": mean.tolist(), "std": std.tolist(), "fitted_on": "train"},
        "split": cfg.split.model_dump(),
    }
    with atomic.atomic_dir(paths.processed_dir(name)) as tmp:
        for split, idx in splits.items():
            np.savez(tmp / paths.split_file(name, split).name, x=x[idx], y=y[idx])
        (tmp / paths.schema_file(name).name).write_text(json.dumps(schema, indent=2) + "\n")
    return paths.processed_dir(name)


def stratified_split(y: np.ndarray, val: float, test: float, seed: int) -> dict[str, np.ndarray]:
    """Indices of train/val/test, each with the class proportions of `y`."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    rest, test_idx = train_test_split(idx, test_size=test, stratify=y, random_state=seed)
    train_idx, val_idx = train_test_split(
        rest, test_size=val / (1 - test), stratify=y[rest], random_state=seed
    )
    return {"train": np.sort(train_idx), "val": np.sort(val_idx), "test": np.sort(test_idx)}


def read_raw(name: str) -> tuple[np.ndarray, np.ndarray, dict]:
    folder = paths.raw_dir(name)
    _require(folder / RAW_FILE, f"ingest@{name}")
    with np.load(folder / RAW_FILE, allow_pickle=False) as f:
        x, y = f["x"], f["y"]
    return x, y, json.loads((folder / RAW_META).read_text())


def load_schema(name: str) -> dict:
    path = paths.schema_file(name)
    _require(path, f"preprocess@{name}")
    return json.loads(path.read_text())


def load_split(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    path = paths.split_file(name, split)
    _require(path, f"preprocess@{name}")
    with np.load(path, allow_pickle=False) as f:
        return f["x"], f["y"]


def _require(path: Path, stage: str) -> None:
    if not path.is_file():
        raise PipelineError(f"{path} not found; run `dvc repro {stage}` first")
