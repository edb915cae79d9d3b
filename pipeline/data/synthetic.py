"""A synthetic dataset on disk: the processed splits of its base dataset, with generated
images appended to the train split. Val and test are the base's real images, unchanged, and
so is the preprocessing (fitted on the base's real train images): a model trained on it takes
raw images exactly as one trained on the base does. No torch here: the stage generates."""

from __future__ import annotations

import json
import shutil

import numpy as np

from pipeline import atomic, paths
from pipeline.data import store
from pipeline.data.arrays import NpyRows
from pipeline.errors import PipelineError

BLOCK_ROWS = 8192  # real train images copied at a time


def base_schema(base: str, name: str) -> dict:
    path = paths.schema_file(base)
    if not path.is_file():
        raise PipelineError(f"{path} not found; run `dvc repro preprocess@{base}` first")
    schema = json.loads(path.read_text())
    if schema["task"] != "classification" or len(schema["input_shape"]) != 3:
        raise PipelineError(f"synthetic.{name}.base: {base!r} holds no labelled images")
    return schema


def to_pixels(unit: np.ndarray, schema: dict) -> np.ndarray:
    """Images in [0, 1] as the dataset's stored pixels (uint8, its value range)."""
    top = schema["value_range"][1]
    return np.rint(np.clip(unit, 0, 1) * top).astype(np.uint8)


def write(
    name: str, base: str, pixels: np.ndarray, labels: np.ndarray, about: dict, also=None
) -> None:
    """data/processed/<name>: base's splits, `pixels` (N, C, H, W uint8) with their `labels`
    appended to train (`index` -1: no row of the raw data), schema.json saying so; `also`
    (called with the folder before it is in place) adds files of its own."""
    schema = base_schema(base, name)
    source = paths.processed_dir(base)
    real = NpyRows(source / "train" / "x.npy")
    y_real = np.load(source / "train" / "y.npy", allow_pickle=False)
    if pixels.shape[1:] != real.shape[1:]:
        raise PipelineError(
            f"synthetic.{name}: generated images of shape {list(pixels.shape[1:])}, "
            f"{base}'s are {list(real.shape[1:])}"
        )
    index_file = source / "train" / "index.npy"
    index = np.load(index_file) if index_file.is_file() else np.arange(len(real))
    counts = np.bincount(labels, minlength=schema["num_classes"]).tolist()
    schema = {
        **{k: v for k, v in schema.items() if k not in ("content_hash", "dtypes", "baselines")},
        "dataset": name,
        "synthetic": {**about, "base": base, "real_train": len(real), "generated": len(labels)},
    }
    schema["counts"] = {**schema["counts"], "train": len(real) + len(labels)}
    schema["class_counts"] = {
        **schema["class_counts"],
        "train": [a + b for a, b in zip(schema["class_counts"]["train"], counts, strict=True)],
    }
    with atomic.atomic_dir(paths.processed_dir(name)) as tmp:
        for split in ("val", "test"):
            shutil.copytree(source / split, tmp / split)
        writer = store.SplitWriter(tmp, "train", len(real) + len(pixels), real.shape[1:], np.uint8)
        for start in range(0, len(real), BLOCK_ROWS):
            writer.write(real.rows(start, min(start + BLOCK_ROWS, len(real))))
        writer.write(pixels)
        writer.close(
            np.concatenate([y_real, labels.astype(y_real.dtype)]),
            index=np.concatenate([index, np.full(len(labels), -1, index.dtype)]),
        )
        shutil.copy2(source / paths.PREPROCESSOR, tmp / paths.PREPROCESSOR)
        store.write_schema(tmp, name, schema)  # its baseline learns from the same train split
        if also is not None:
            also(tmp)
