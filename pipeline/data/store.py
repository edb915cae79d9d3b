"""Processed data on disk: each split's .npz (whole, or written batch by batch), and
schema.json with the content hash and dtypes of the split files."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np

from pipeline import atomic, paths
from pipeline.data import preprocessing


def write_processed(
    name: str,
    splits: dict[str, dict[str, np.ndarray]],
    schema: dict,
    prep: preprocessing.Preprocessor | None = None,
) -> None:
    with atomic.atomic_dir(paths.processed_dir(name)) as tmp:
        for split, arrays in splits.items():
            np.savez(tmp / paths.split_file(name, split).name, **arrays)
        write_schema(tmp, name, schema)
        if prep is not None:
            prep.save(tmp / paths.preprocessor_file(name).name)


def write_schema(folder: Path, name: str, schema: dict) -> None:
    """schema.json beside the split files in `folder`, with their content hash and dtypes."""
    schema["content_hash"], schema["dtypes"] = content_hash(folder, name)
    (folder / paths.schema_file(name).name).write_text(json.dumps(schema, indent=2) + "\n")


class SplitWriter:
    """One split's .npz written batch by batch: rows of `x` as they come, `y` at the end.
    np.load reads it like a file of np.savez; memory holds one batch, not the split."""

    def __init__(self, folder: Path, name: str, split: str, rows: int, shape: tuple[int, ...]):
        self.zip = zipfile.ZipFile(folder / paths.split_file(name, split).name, "w")
        self.x = self.zip.open("x.npy", "w", force_zip64=True)
        header = {"descr": "<f4", "fortran_order": False, "shape": (rows, *shape)}
        np.lib.format.write_array_header_1_0(self.x, header)
        self.rows, self.written = rows, 0

    def write(self, x: np.ndarray) -> None:
        self.x.write(np.ascontiguousarray(x, dtype="<f4").tobytes())
        self.written += len(x)

    def close(self, y: np.ndarray, **extra: np.ndarray) -> None:
        """Finish the file with `y` and any `extra` arrays (one value per row)."""
        self.x.close()
        if self.written != self.rows:
            raise RuntimeError(f"{self.zip.filename}: {self.written} rows written, not {self.rows}")
        for key, values in {"y": y, **extra}.items():
            with self.zip.open(f"{key}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(values), allow_pickle=False)
        self.zip.close()


def content_hash(folder: Path, name: str) -> tuple[str, dict[str, str]]:
    """sha256 of every array of every split file in `folder` (read in chunks, so a split
    larger than memory is fine): equal hashes mean equal data. Also the train arrays' dtypes."""

    digest = hashlib.sha256()
    dtypes = {}
    for split in sorted(paths.SPLITS):
        with zipfile.ZipFile(folder / paths.split_file(name, split).name) as archive:
            for member in sorted(archive.namelist(), key=lambda m: m.removesuffix(".npy")):
                key = member.removesuffix(".npy")
                with archive.open(member) as f:
                    major, _ = np.lib.format.read_magic(f)
                    read_header = (
                        np.lib.format.read_array_header_1_0
                        if major == 1
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = read_header(f)
                    digest.update(f"{split}/{key}/{dtype}/{shape}".encode())
                    for chunk in iter(lambda f=f: f.read(1 << 24), b""):
                        digest.update(chunk)
                if split == "train":
                    dtypes[key] = str(dtype)
    return digest.hexdigest(), dtypes
