"""Processed data on disk: each split a folder of .npy files (`x.npy`, `y.npy`, ...: whole,
or `x` written block by block), and schema.json with the content hash and dtypes of the
split files. Every array can be memory-mapped (`np.load(..., mmap_mode="r")`) or read by
rows (`arrays.NpyRows`), so no stage needs a whole split in memory. Images are stored as
ingested (uint8 pixels) and scaled as they are read (`inputs`)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from pipeline import atomic, paths
from pipeline.data import baselines, preprocessing
from pipeline.data.arrays import NpyRows, NpyWriter, ScaledRows
from pipeline.errors import PipelineError


def write_processed(
    name: str,
    splits: dict[str, dict[str, np.ndarray]],
    schema: dict,
    prep: preprocessing.Preprocessor | None = None,
) -> None:
    with atomic.atomic_dir(paths.processed_dir(name)) as tmp:
        for split, arrays in splits.items():
            write_arrays(tmp / split, arrays)
        if prep is not None:
            prep.save(tmp / paths.preprocessor_file(name).name)
        write_schema(tmp, name, schema)


def write_arrays(folder: Path, arrays: dict[str, np.ndarray]) -> None:
    """One .npy file per array in `folder` (created)."""
    folder.mkdir(parents=True, exist_ok=True)
    for key, values in arrays.items():
        np.save(folder / f"{key}.npy", np.ascontiguousarray(values), allow_pickle=False)


def write_schema(folder: Path, name: str, schema: dict) -> None:
    """schema.json beside the split folders (and the preprocessor) in `folder`, with their
    content hash and dtypes, and for a classification dataset the test metrics of its
    baseline (see baselines.py)."""
    schema["content_hash"], schema["dtypes"] = content_hash(folder)
    if schema.get("task") == "classification":
        schema["baselines"] = {
            "logistic_regression": baselines.classifier_metrics(
                *(split_arrays(folder / s) for s in ("train", "test")), schema["classes"]
            )
        }
    (folder / paths.schema_file(name).name).write_text(json.dumps(schema, indent=2) + "\n")


def split_arrays(folder: Path) -> tuple[NpyRows, np.ndarray]:
    """(inputs read by rows, labels) of one split folder."""
    return inputs(folder), np.load(folder / "y.npy")


def inputs(folder: Path) -> NpyRows:
    """The inputs (`x.npy`) of one split folder, read by rows as models take them: an image
    dataset's pixels are stored as ingested (uint8) and scaled by its preprocessor on every
    read (`arrays.ScaledRows`); other inputs are stored as they are used."""
    path = folder / "x.npy"
    prep_file = folder.parent / paths.PREPROCESSOR
    if prep_file.is_file():
        prep = preprocessing.load(prep_file)
        if prep.kind == "image":
            rows = ScaledRows(path, prep.transform)
            if rows.stored != np.uint8:  # normalised float32, from an older preprocess
                raise PipelineError(
                    f"{path}: images of {rows.stored}, not the 8-bit pixels this version "
                    f"stores; run `dvc repro preprocess@{folder.parent.name}` again"
                )
            return rows
    return NpyRows(path)


class SplitWriter:
    """One split written block by block: rows of `x` as they come (float32 unless `dtype`
    says otherwise), `y` and the other per-row arrays at the end."""

    def __init__(
        self, folder: Path, split: str, rows: int, shape: tuple[int, ...], dtype=np.float32
    ):
        self.folder = folder / split
        self.folder.mkdir(parents=True, exist_ok=True)
        self.x = NpyWriter(self.folder / "x.npy", tuple(shape), np.dtype(dtype), rows)

    def write(self, x: np.ndarray) -> None:
        self.x.write(x)

    def close(self, y: np.ndarray, **extra: np.ndarray) -> None:
        """Finish the split with `y` and any `extra` arrays (one value per row)."""
        self.x.close()
        if self.x.written != self.x.rows:
            raise RuntimeError(f"{self.x.path}: {self.x.written} rows written, not {self.x.rows}")
        write_arrays(self.folder, {"y": y, **extra})


def content_hash(folder: Path) -> tuple[str, dict[str, str]]:
    """sha256 of every array of every split in `folder` (read in chunks, so a split larger
    than memory is fine): equal hashes mean equal data. Also the train arrays' dtypes."""
    digest = hashlib.sha256()
    dtypes = {}
    for split in sorted(paths.SPLITS):
        for path in sorted((folder / split).glob("*.npy")):
            with open(path, "rb") as f:
                major, _ = np.lib.format.read_magic(f)
                read_header = (
                    np.lib.format.read_array_header_1_0
                    if major == 1
                    else np.lib.format.read_array_header_2_0
                )
                shape, _, dtype = read_header(f)
                digest.update(f"{split}/{path.stem}/{dtype}/{shape}".encode())
                for chunk in iter(lambda f=f: f.read(1 << 24), b""):
                    digest.update(chunk)
            if split == "train":
                dtypes[path.stem] = str(dtype)
    return digest.hexdigest(), dtypes
