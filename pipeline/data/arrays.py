"""Arrays on disk as plain .npy files: written row block by row block, read by rows.

Every file is a standard .npy (`np.load(path, mmap_mode="r")` maps it). The pipeline itself
reads rows with `pread` rather than through a memory map: pages a map has touched count in
the process's resident memory until the kernel needs them back, so a pass over a split
larger than memory would look (and be limited) like loading it whole.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np


def _header(dtype, shape: tuple[int, ...], length: int | None = None) -> bytes:
    """The .npy header (format 1.0) of an array; padded with spaces to `length` bytes when
    given, so a header written before the row count was known can be rewritten in place."""
    buf = io.BytesIO()
    meta = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False}
    np.lib.format.write_array_header_1_0(buf, {**meta, "shape": tuple(shape)})
    header = buf.getvalue()
    if length is None or len(header) == length:
        return header
    if len(header) > length:
        raise ValueError(f"a .npy header of {len(header)} bytes does not fit in {length}")
    text = header[10:-1] + b" " * (length - len(header)) + b"\n"  # magic(6) version(2) len(2)
    return header[:8] + len(text).to_bytes(2, "little") + text


class NpyWriter:
    """A .npy file written rows first, in blocks: memory holds one block, not the array. At
    most `rows` rows; `close` writes the header with the rows written (fewer when some
    inputs were skipped)."""

    def __init__(self, path: Path, row_shape: tuple[int, ...], dtype, rows: int):
        self.path, self.row_shape, self.dtype, self.rows = Path(path), row_shape, dtype, rows
        self._size = len(_header(dtype, (rows, *row_shape)))
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self._file.write(b"\0" * self._size)  # the header, once the row count is known
        self.written = 0

    def write(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.shape[1:] != tuple(self.row_shape) or self.written + len(block) > self.rows:
            raise ValueError(
                f"{self.path}: rows of shape {block.shape[1:]} (expected {self.row_shape}), "
                f"{self.written + len(block)} rows (at most {self.rows})"
            )
        self._file.write(block.data)
        self.written += len(block)

    def close(self) -> None:
        self._file.seek(0)
        self._file.write(_header(self.dtype, (self.written, *self.row_shape), self._size))
        self._file.close()

    def __enter__(self) -> NpyWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class NpyRows:
    """The rows of a .npy file, read on demand with `pread` (no memory map; see above).
    Picklable, so DataLoader workers open it themselves."""

    def __init__(self, path: Path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read_header = {
                1: np.lib.format.read_array_header_1_0,
                2: np.lib.format.read_array_header_2_0,
            }[major]
            self.shape, fortran, self.stored = read_header(f)
            self.offset = f.tell()
        if fortran or self.stored.hasobject:
            raise ValueError(f"{self.path}: holds Python objects or Fortran-ordered data")
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.stored.itemsize
        self._fd: int | None = None

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def dtype(self) -> np.dtype:
        """The dtype of the rows read."""
        return self.stored

    @property
    def nbytes(self) -> int:
        """Bytes of the rows read, all of them: what holding them in memory takes."""
        return len(self) * int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None}  # a worker opens its own descriptor

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def _read(self, start: int, count: int, out: memoryview) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        position, done = self.offset + start * self.row_bytes, 0
        while done < len(out):
            n = os.preadv(self._fd, [out[done:]], position + done)
            if n == 0:
                raise EOFError(f"{self.path}: ends before row {start + count}")
            done += n

    def __getitem__(self, key) -> np.ndarray:
        """Rows as from an array: `rows[:4]` (consecutive) or `rows[index]` (any rows)."""
        if not isinstance(key, slice):
            return self.take(key)
        start, stop, step = key.indices(len(self))
        if step != 1:
            raise IndexError(f"{self.path}: rows are read in steps of 1, not {step}")
        return self.rows(start, stop)

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows start..stop-1, in one read."""
        stop = min(stop, len(self))
        out = np.empty((max(stop - start, 0), *self.shape[1:]), self.stored)
        if len(out):
            self._read(start, len(out), memoryview(out.reshape(-1).view(np.uint8)))
        return out

    def take(self, index) -> np.ndarray:
        """The rows at `index` (any order), one read per run of consecutive rows."""
        index = np.asarray(index, np.int64)
        out = np.empty((len(index), *self.shape[1:]), self.stored)
        if not len(index):
            return out
        order = np.argsort(index, kind="stable")
        wanted = index[order]
        flat = out.reshape(len(index), -1).view(np.uint8)
        # runs of consecutive rows (a repeated row reads again; weighted sampling repeats)
        breaks = np.flatnonzero(np.diff(wanted) != 1) + 1
        sorted_rows = np.empty_like(flat)
        for run in np.split(np.arange(len(wanted)), breaks):
            first, last = run[0], run[-1]
            block = sorted_rows[first : last + 1].reshape(-1)
            self._read(int(wanted[first]), len(run), memoryview(block))
        flat[order] = sorted_rows
        return out

    def read(self) -> np.ndarray:
        """The whole array in memory."""
        return self.rows(0, len(self))


class ScaledRows(NpyRows):
    """The rows of a .npy file stored in raw units (images: the ingested 8-bit pixels, a
    quarter of float32's bytes on disk and in DVC's cache), returned as the model takes
    them: `scale` (the dataset's preprocessing, picklable for DataLoader workers) applied to
    every read, so a block of rows in float32 is all that is ever scaled at once."""

    BLOCK_BYTES = 8 << 20  # raw rows scaled at a time by `read`

    def __init__(self, path: Path, scale):
        super().__init__(path)
        self.scale = scale

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32)

    def rows(self, start: int, stop: int) -> np.ndarray:
        return self.scale(super().rows(start, stop))

    def take(self, index) -> np.ndarray:
        return self.scale(super().take(index))

    def read(self) -> np.ndarray:
        out = np.empty((len(self), *self.shape[1:]), self.dtype)
        step = max(1, self.BLOCK_BYTES // max(self.row_bytes, 1))
        for start in range(0, len(self), step):
            out[start : start + step] = self.rows(start, start + step)
        return out
