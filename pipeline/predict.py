"""`python -m pipeline predict --model URI --input PATH --output preds.csv`: batch inference.

A thin wrapper over `mlflow.pyfunc.load_model(URI).predict(...)`: the registered model takes
raw inputs (see pipeline/serving.py), so the file holds rows as the user has them: a .csv or
.parquet table with the dataset's original columns (extra ones, such as the target, are
ignored), a .npy/.npz array (images in their raw units, or a table's numeric columns), or a
folder of images. The input is read and checked before MLflow or torch is imported, so a bad
file fails within a second or two.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from pipeline import atomic
from pipeline.data.preprocessing import IMAGE_SUFFIXES, InputError, as_numbers
from pipeline.errors import PipelineError
from pipeline.tracking import registry

SUFFIXES = (".csv", ".parquet", ".npy", ".npz")


def read_input(path: Path, array: str | None = None):
    """(row names, a DataFrame or an array, or a list of image files) from `path`."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise PipelineError(f"--input {path}: no {'/'.join(IMAGE_SUFFIXES)} images in it")
        return [str(f.relative_to(path)) for f in files], files
    if not path.is_file():
        raise PipelineError(f"--input {path}: no such file or folder")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise PipelineError(
            f"--input {path}: {suffix or 'no extension'}: expected a {', '.join(SUFFIXES)} "
            "file or a folder of images"
        )
    if path.stat().st_size == 0:
        raise PipelineError(f"--input {path}: the file is empty")
    if suffix in (".csv", ".parquet"):
        table = TableFile(path)
        return None, table
    data = _read_array(path, array)
    if len(data) == 0:
        raise PipelineError(f"--input {path}: it has no rows")
    return [str(i) for i in range(len(data))], data


class TableFile:
    """A CSV or Parquet input, read a block of rows at a time (`blocks`), so it may be larger
    than memory; its first rows are read (and a bad file refused) when it is opened."""

    HEAD_ROWS = 1000  # read first: the check, and the bytes a row takes

    def __init__(self, path: Path):
        self.path = path
        head = next(self._frames(self.HEAD_ROWS), None)
        if head is None or len(head) == 0:
            raise PipelineError(f"--input {path}: it has no rows")
        self.row_bytes = max(1, int(head.memory_usage(deep=True).sum()) // len(head))

    def _frames(self, rows: int):
        """DataFrames of `rows` rows, read errors as one line naming the file."""
        import pandas as pd

        try:
            if self.path.suffix.lower() == ".csv":
                with pd.read_csv(self.path, chunksize=rows) as reader:
                    yield from reader
                return
            import pyarrow.parquet as pq

            with pq.ParquetFile(self.path) as parquet:
                if parquet.metadata.num_rows == 0:
                    yield pd.DataFrame()
                for batch in parquet.iter_batches(batch_size=rows):
                    yield batch.to_pandas()
        except (ValueError, OSError, pd.errors.ParserError, ImportError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise PipelineError(f"--input {self.path}: cannot read it: {first}") from None

    def blocks(self, rows: int | None = None):
        """(row names, DataFrame) of `rows` rows at a time (by default BLOCK_BYTES of them)."""
        rows = rows or max(self.HEAD_ROWS, BLOCK_BYTES // self.row_bytes)
        start = 0
        for frame in self._frames(rows):
            frame.index = range(start, start + len(frame))  # the file's row numbers, in errors
            yield [str(i) for i in frame.index], frame
            start += len(frame)

    def read(self):
        """The whole table (a CSV of pixel values, which an image model takes)."""
        import pandas as pd

        return pd.concat([frame for _, frame in self.blocks()], ignore_index=True)


def _read_array(path: Path, name: str | None):
    """An .npz file's array, in memory; an .npy file's rows, read from disk a block at a time
    as they are scored (`arrays.NpyRows`), so the file may be larger than memory."""
    if path.suffix.lower() == ".npy":
        from pipeline.data.arrays import NpyRows

        try:
            return NpyRows(path)
        except (ValueError, OSError, EOFError) as err:
            raise PipelineError(f"--input {path}: not a NumPy .npy file: {err}") from None
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise PipelineError(f"--input {path}: not a NumPy {path.suffix} file: {err}") from None
    if isinstance(loaded, np.ndarray):
        return loaded
    with loaded:
        names = loaded.files
        if name is None and len(names) == 1:
            name = names[0]
        if name is None:
            raise PipelineError(
                f"--input {path}: it holds {len(names)} arrays ({', '.join(names) or 'none'}); "
                "name one with --array NAME"
            )
        if name not in names:
            raise PipelineError(
                f"--input {path}: --array {name!r} is not in it; its arrays: {', '.join(names)}"
            )
        return loaded[name]


def conform(names: list[str], data, info, path: Path, skipped: list[str] | None = None):
    """The input as the model's signature wants it (columns checked and selected, images
    decoded: the unreadable ones are left out and added to `skipped`); returns (names, model
    input, notes for the user)."""
    meta = info.metadata or {}
    notes = []
    if isinstance(data, list):  # image files
        if meta.get("input") != "image":
            raise PipelineError(f"--input {path}: a folder of images; the model takes a table")
        kept, images = _read_images(names, data, meta, [] if skipped is None else skipped)
        return kept, images, notes
    if meta.get("input") == "image":
        return names, _image_array(data, meta, path), notes
    columns = [spec.name for spec in info.signature.inputs.inputs]
    kinds = {spec.name: spec.type.name for spec in info.signature.inputs.inputs}
    data = _as_frame(data, columns, path)
    missing = [c for c in columns if c not in data.columns]
    if missing:
        raise PipelineError(
            f"--input {path}: missing column(s) {', '.join(map(repr, missing))}; the model "
            f"takes {', '.join(map(repr, columns))}"
        )
    extra = [str(c) for c in data.columns if c not in columns]
    if extra:
        notes.append(f"ignoring column(s) the model does not take: {', '.join(extra)}")
    data = data[columns].copy()
    for col, kind in kinds.items():
        data[col] = _typed(data[col], kind, col, path)
    return names, data, notes


def _as_frame(data, columns: list[str], path: Path):
    import pandas as pd

    if isinstance(data, pd.DataFrame):
        return data
    if data.ndim != 2 or data.shape[1] != len(columns):
        shown = ", ".join(columns[:5]) + (", ..." if len(columns) > 5 else "")
        raise PipelineError(
            f"--input {path}: an array of shape {data.shape}; the model takes rows of "
            f"{len(columns)} columns ({shown}); a .csv or .parquet file with these column names "
            "also works"
        )
    return pd.DataFrame(data, columns=columns)


def _typed(values, kind: str, column: str, path: Path):
    """A column as the signature types it: text (missing stay missing), or numbers (missing
    stay NaN; a whole-number column the model saw without gaps takes none)."""
    if kind == "string":
        return (
            values.astype(object)
            .where(values.notna(), None)
            .map(lambda v: v if v is None or isinstance(v, str) else str(v))
        )
    try:
        numbers = as_numbers(values, column)
    except InputError as err:
        raise PipelineError(f"--input {path}: {err}") from None
    if kind == "double":
        return numbers.astype(np.float64)
    if numbers.isna().any():
        row = int(np.flatnonzero(numbers.isna().to_numpy())[0])
        raise PipelineError(
            f"--input {path}: column {column!r} is missing a value (row {row}); the model "
            f"takes {kind} values there (its training data had no gaps in it)"
        )
    if kind == "long" and not (numbers == numbers.round()).all():
        raise PipelineError(f"--input {path}: column {column!r} takes whole numbers")
    return numbers.astype(np.int64 if kind == "long" else bool)


def _image_array(data, meta: dict, path: Path) -> np.ndarray:
    shape = tuple(meta["shape"])
    if not isinstance(data, np.ndarray):  # a CSV of pixel values, with or without a header
        import pandas as pd

        numeric = data.select_dtypes("number")
        if numeric.shape[1] != data.shape[1]:
            numeric = pd.read_csv(path, header=None).select_dtypes("number")
        data = numeric.to_numpy(np.float32)
    size = int(np.prod(shape))
    if data.ndim < 2 or int(np.prod(data.shape[1:])) != size:
        raise PipelineError(
            f"--input {path}: samples of shape {tuple(data.shape[1:])}; the model takes {shape} "
            f"({size} values per sample, in 0..{meta['value_range'][1]:g})"
        )
    return data.reshape(len(data), *shape).astype(np.float32)


def _read_images(names: list[str], files: list[Path], meta: dict, skipped: list[str]):
    """Decode the images as ingest does: (names, images) of the readable ones; the names of
    the others are added to `skipped`."""
    from PIL import UnidentifiedImageError

    from pipeline.data.preprocessing import read_image

    kept, images = [], []
    for name, file in zip(names, files, strict=True):
        try:
            images.append(read_image(file, meta))
            kept.append(name)
        except (UnidentifiedImageError, OSError, ValueError):
            skipped.append(name)
    shape = tuple(meta["shape"])
    return kept, np.stack(images) if images else np.empty((0, *shape), np.float32)


def model_info(uri: str, tracking_uri: str):
    """The registered model's MLmodel (signature, metadata), without loading its weights."""
    try:
        info = registry.model_info(uri, tracking_uri)
    except PipelineError as err:
        raise PipelineError(f"--model {uri}: cannot load it from {tracking_uri}: {err}") from None
    if "input" not in (info.metadata or {}) or info.signature is None:
        raise PipelineError(
            f"--model {uri}: it does not take raw inputs (a language or generative model, or "
            "one logged by an earlier version of the pipeline); retrain it with `dvc repro`"
        )
    return info


def run(
    model_uri: str,
    input_path: str,
    output: str,
    tracking_uri: str,
    device: str,
    array: str | None = None,
) -> int:
    path = Path(input_path)
    names, data = read_input(path, array)
    info = model_info(model_uri, tracking_uri)
    count, model, skipped, said = 0, None, [], set()
    with atomic.atomic_path(output) as tmp, open(tmp, "w") as out:
        for names_block, data_block in input_blocks(names, data, info):
            block, model_input, notes = conform(names_block, data_block, info, path, skipped)
            for note in notes:
                if note not in said:  # once, not once a block
                    print(f"predict: {note}", file=sys.stderr)
                    said.add(note)
            if not block:  # every image of the block was unreadable
                continue
            try:
                model = model or registry.load_pyfunc(model_uri, device)
                predictions = model.predict(model_input)
            except PipelineError as err:
                raise PipelineError(f"--model {model_uri}: {err}") from None
            predictions.insert(0, "input", block)
            predictions.to_csv(out, index=False, header=count == 0)
            count += len(predictions)
        if skipped:
            if not count:
                raise PipelineError(
                    f"--input {path}: none of its {len(skipped)} images could be read"
                )
            from pipeline.data.datasets import handling_notes  # preprocess's line for them

            for note in handling_notes({"skipped_unreadable": skipped}):
                print(f"predict: {note}", file=sys.stderr)
    return count


def input_blocks(names: list[str] | None, data, info):
    """(row names, rows) of the input a block at a time: an .npy file, a folder of images and
    a table (CSV or Parquet, for a model that takes a table) BLOCK_BYTES at a time, so they
    may be larger than memory; an .npz array and a CSV of pixel values in one block."""
    if isinstance(data, TableFile):
        if (info.metadata or {}).get("input") != "image":
            yield from data.blocks()
            return
        data = data.read()
        names = [str(i) for i in range(len(data))]
    if hasattr(data, "row_bytes"):
        step = max(1, BLOCK_BYTES // data.row_bytes)
    elif isinstance(data, list) and "shape" in info.metadata:
        step = max(1, BLOCK_BYTES // (4 * int(np.prod(info.metadata["shape"]))))
    else:
        step = len(names)
    for start in range(0, len(names), step):
        yield names[start : start + step], data[start : start + step]


BLOCK_BYTES = 64 << 20  # bytes of input read and scored at a time
