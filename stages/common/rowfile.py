""".npy arrays written and read a block of rows at a time, with positioned file I/O.

A stage whose output has one row per image (label caches, predictions) writes it through
`RowWriter` and reads it back through `RowReader`, so that its resident memory stays flat in the
number of images: no memory map (whose touched pages count as the process's resident memory),
no whole array in memory. The files are plain .npy files (`np.load` reads them).
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from stages.common.io import atomic_write


def _header_bytes(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    """The .npy header (magic, version, dict, padding) of a C-order array, as np.save writes it
    (format 1.0 unless the header is too long for it), so that equal arrays give equal files."""
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    buffer = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(buffer, header)
    except ValueError:
        buffer = io.BytesIO()
        np.lib.format.write_array_header_2_0(buffer, header)
    return buffer.getvalue()


class RowWriter:
    """Writes an (N, ...) .npy file block by block (any order), atomically.

    with RowWriter(path, (N, V, 3), np.float32) as out:
        out.write(start, block)        # block (B, V, 3): rows start .. start + B
    The file appears at `path` only when the block exits without an error. Rows never written
    read back as zeros (the file is sparse until written).
    """

    def __init__(self, path: Path | str, shape: tuple[int, ...], dtype: np.dtype | type):
        self.path = Path(path)
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self._atomic = atomic_write(self.path)
        self._fd = -1
        self._offset = 0

    def __enter__(self) -> "RowWriter":
        tmp = self._atomic.__enter__()
        header = _header_bytes(self.shape, self.dtype)
        self._offset = len(header)
        self._fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(self._fd, header)
        os.ftruncate(self._fd, self._offset + self.shape[0] * self.row_bytes)
        return self

    def write(self, start: int, block: np.ndarray) -> None:
        """Rows start .. start + len(block) = block (B, ...) (cast to the file's dtype)."""
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.shape[1:] != self.shape[1:] or start < 0 or start + len(block) > self.shape[0]:
            raise ValueError(f"{self.path}: rows {start}..{start + len(block)} of shape {block.shape[1:]} "
                             f"do not fit the array {self.shape}")
        view = memoryview(block.reshape(-1).view(np.uint8))
        position = self._offset + start * self.row_bytes
        while len(view):
            written = os.pwrite(self._fd, view, position)
            view, position = view[written:], position + written

    def write_rows(self, rows: np.ndarray, block: np.ndarray) -> None:
        """Rows `rows` (B,) int = block (B, ...), one at a time (for a few scattered rows)."""
        for row, value in zip(np.asarray(rows), block):
            self.write(int(row), value[None])

    def __exit__(self, *exc) -> bool:
        os.close(self._fd)
        return self._atomic.__exit__(*exc)


def pread_rows(fd: int, offset: int, count: int, rows: np.ndarray, out: np.ndarray, name: Path | str) -> None:
    """Read rows (M,) of the C-order (count, ...) array stored at byte `offset` of the file `fd`
    (named `name` in errors) into out (M, ...), the array's dtype: one positioned read per run of
    consecutive rows, straight into `out`."""
    if len(rows) and (rows.min() < 0 or rows.max() >= count):
        raise IndexError(f"{name}: rows {rows.min()}..{rows.max()} of {count}")
    row_bytes = out[0].nbytes if len(out) else 0
    flat = out.reshape(-1).view(np.uint8).reshape(len(rows), row_bytes)
    firsts = np.flatnonzero(np.diff(rows, prepend=-2) != 1)
    for first, end in zip(firsts, np.append(firsts[1:], len(rows))):
        wanted, position = flat[first:end].reshape(-1), offset + int(rows[first]) * row_bytes
        done = 0
        while done < len(wanted):         # one read returns at most 2 GiB on Linux
            got = os.preadv(fd, [wanted[done:]], position + done)
            if not got:
                raise ValueError(f"{name}: truncated ({done} of {len(wanted)} bytes at row {rows[first]})")
            done += got


class RowReader:
    """Reads rows of an (N, ...) C-order .npy file, or of an .npy stored uncompressed inside a
    larger file from byte `start` on (a member of an .npz): reader[a:b], reader[int_array],
    reader[i] (one row), each a new array in memory read with positioned reads. The file stays
    open while the reader lives (a file replaced at its path meanwhile is not read), any thread
    may read, and a pickled reader opens the file again by its path."""

    def __init__(self, path: Path | str, start: int = 0):
        self.path, self.start = Path(path), start
        self._fd = os.open(self.path, os.O_RDONLY)
        try:
            with open(self._fd, "rb", closefd=False) as handle:
                handle.seek(start)
                version = np.lib.format.read_magic(handle)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = read_header(handle)
                self.offset = handle.tell()
            if fortran or dtype.hasobject or not shape:
                raise ValueError(f"{self.path}: not a C-order numeric array with rows")
        except BaseException:
            os.close(self._fd)
            self._fd = -1
            raise
        self.shape, self.dtype = tuple(shape), dtype
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * dtype.itemsize

    def __reduce__(self):
        """Pickled as its path and start: another process opens the file again."""
        return RowReader, (self.path, self.start)

    def __del__(self):
        if getattr(self, "_fd", -1) >= 0:
            os.close(self._fd)
            self._fd = -1

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: int | slice | np.ndarray) -> np.ndarray:
        if isinstance(rows, (int, np.integer)):
            return self[np.array([rows + len(self) if rows < 0 else rows])][0]
        if isinstance(rows, slice):
            start, stop, step = rows.indices(len(self))
            if step != 1:
                raise ValueError(f"{self.path}: only contiguous slices are read as one block")
            rows = np.arange(start, max(stop, start))
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        block = np.empty((len(rows),) + self.shape[1:], dtype=self.dtype)
        pread_rows(self._fd, self.offset, len(self), rows, block, self.path)
        return block

    def blocks(self, size: int):
        """Yield (start, rows (B, ...)) over the file in blocks of `size` rows."""
        for start in range(0, len(self), size):
            yield start, self[start:start + size]
