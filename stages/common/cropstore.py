"""Writing one split of the crop store, resumably.

Final layout of a split folder: images.npy (N, S, S, 3) uint8 RGB (.npy, read with
np.load(mmap_mode='r')), warps.npy (N, 2, 3) float64 full px -> crop px, inv_warps.npy (N, 2, 3)
crop px -> full px, index.csv (the list's id columns + `skipped`, 1 for a sample skipped as bad
input: its image is black and its warps NaN) and run.json ({"run": the identity of the crop run,
a digest over every split's warps, rows and images, the same in each split}: a network records
it, and infer refuses crops of another run).

While writing, everything lives in a work folder (`ResumableRows`, which coarse_predict uses
too): the images are a memory-mapped .npy filled chunk by chunk (`store` from any thread), and a
memory-mapped done mask marks the rows already written: `write` flushes the pages of a chunk's
image rows to disk before it marks them done, and flushes only those pages and the mask's (the
cost of a chunk does not grow with N). config.json identifies the job (size, rows, a hash of the
warps and the decode path). A rerun with the same job continues with the rows not done; any other
job starts afresh. `finish` links (or copies) the images into the split folder and writes the
rest; the work folder stays until the caller removes it, once the whole output is in place.
"""
from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from stages.common.identity import files_digest
from stages.common.io import save_json, save_npy
from stages.common.rowfile import pread_rows
from stages.wcpa.layout import ID_COLUMNS, DataError

RUN_FILE = "run.json"
RUN_CONTENT = ("warps.npy", "index.csv", "images.npy")


def job_key(warps: np.ndarray, size: int, table: pd.DataFrame, method: str = "opencv", files: str = "",
            code: str = "") -> str:
    """Identity of a crop job: its warps, crop size, rows, the decode + warp path that makes the
    pixels (`method`: the paths' crops differ by a grey level, so one never resumes the other's),
    `files`, the images' stat_digest (an image replaced during an interruption) and `code`, the
    digest of the code that makes them (a fix to it between two runs: dvc repro reruns the
    stage, which must not keep the old code's rows)."""
    digest = hashlib.sha256(np.ascontiguousarray(warps, dtype=np.float64).tobytes())
    digest.update(f"{size} {method} {files} {code}".encode())
    digest.update(table[ID_COLUMNS].to_csv(index=False).encode())
    return digest.hexdigest()


class ResumableRows:
    """An (N, ...) array filled a block of rows at a time, across runs: work/values.npy
    (memory-mapped), work/done.npy (N,) bool, memory-mapped too, and work/config.json (the job's
    key). A run with the same key continues with the rows not done; any other key, or shape, starts
    afresh, so that a resumed run never reuses rows made from other inputs. `write` flushes a
    block's rows to disk before it marks them done, and only those pages (the cost of a block does
    not grow with N). `resumed`: the rows that earlier runs had done when this one started."""

    def __init__(self, work: Path | str, key: str, shape: tuple[int, ...], dtype):
        self.work = Path(work)
        config, values, done = self.work / "config.json", self.work / "values.npy", self.work / "done.npy"
        resumable = config.is_file() and json.loads(config.read_text()).get("key") == key \
            and values.is_file() and done.is_file()
        if resumable:                   # a finished job's values may be linked into an output, read-only
            finished = np.load(done, mmap_mode="r").all()
            self.values = np.load(values, mmap_mode="r" if finished else "r+")
            resumable = self.values.shape == tuple(shape) and self.values.dtype == np.dtype(dtype)
        if not resumable:
            shutil.rmtree(self.work, ignore_errors=True)
            self.work.mkdir(parents=True)
            np.lib.format.open_memmap(values, mode="w+", dtype=dtype, shape=tuple(shape)).flush()
            save_npy(done, np.zeros(shape[0], dtype=bool))
            save_json(config, {"key": key, "rows": shape[0]})
            self.values = np.load(values, mmap_mode="r+")
        self.done = np.load(done, mmap_mode="r+")
        self.resumed = int(np.count_nonzero(self.done))

    def pending(self, rows: np.ndarray, chunk: int) -> list[np.ndarray]:
        """The not-yet-written rows among `rows`, in chunks of at most `chunk`."""
        todo = np.asarray(rows, dtype=np.int64)
        todo = todo[~self.done[todo]]
        return [todo[i:i + chunk] for i in range(0, len(todo), chunk)]

    def write(self, rows: np.ndarray) -> None:
        """Mark `rows` (their values set) done: the value rows reach the disk before the mark
        does, so a crash never leaves a row marked done whose values were not written."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows):
            flush_rows(self.values, rows)
            self.done[rows] = True
            flush_rows(self.done, rows)

    def close(self) -> Path:
        """Flush and unmap -> the values file (for the caller to move or read)."""
        self.values.flush()
        self.done.flush()
        del self.values, self.done
        return self.work / "values.npy"


class CropStoreWriter:
    """The work folder of one split: images (N, S, S, 3) memmap with a done mask (ResumableRows)."""

    def __init__(self, work: Path | str, table: pd.DataFrame, warps: np.ndarray, size: int,
                 method: str = "opencv", files: str = "", code: str = ""):
        self.work = Path(work)
        self.table = table.reset_index(drop=True)
        self.warps = np.asarray(warps, dtype=np.float64)
        self.size = size
        self.rows = ResumableRows(self.work, job_key(self.warps, size, self.table, method, files, code),
                                  (len(self.table), size, size, 3), np.uint8)

    @property
    def resumed(self) -> int:
        """The crops that earlier runs had written when this one started."""
        return self.rows.resumed

    @property
    def made(self) -> int:
        """The crops that this run has written."""
        return int(np.count_nonzero(self.rows.done)) - self.rows.resumed

    def pending(self, rows: np.ndarray, chunk: int) -> list[np.ndarray]:
        """The not-yet-written rows among `rows`, in chunks of at most `chunk`."""
        return self.rows.pending(rows, chunk)

    def store(self, row: int, crop: np.ndarray) -> None:
        """Put one crop (S, S, 3) at `row` (any thread; not done until `write` marks it)."""
        self.rows.values[row] = crop

    def write(self, rows: np.ndarray) -> None:
        """Mark `rows` (their crops `store`d) done (ResumableRows.write)."""
        self.rows.write(rows)

    def finish(self, out: Path | str, skipped: np.ndarray, inverse: np.ndarray) -> None:
        """Write the finished split into `out`: inverse (N, 2, 3) are the warps' inverses (crop px
        -> full px); skipped (N,) bool rows get NaN warps and inverses. The crops are linked into
        `out`, not moved: the work folder keeps them, and its record of the finished rows, until
        the caller removes it after the whole output is in place (a run stopped in between
        resumes with every crop done)."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        missing = ~self.rows.done & ~skipped
        if missing.any():
            raise RuntimeError(f"{self.work}: {int(missing.sum())} rows neither written nor skipped")
        link_or_copy(self.rows.close(), out / "images.npy")
        save_npy(out / "warps.npy", np.where(skipped[:, None, None], np.nan, self.warps))
        save_npy(out / "inv_warps.npy", np.where(skipped[:, None, None], np.nan, inverse))
        index = self.table[ID_COLUMNS].assign(skipped=skipped.astype(int))
        index.to_csv(out / "index.csv", index=False)


def link_or_copy(source: Path, target: Path) -> None:
    """A second name `target` for the file `source` (a hard link), or a copy where the file
    system has no hard links."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _mapped_span(array: np.memmap, rows: np.ndarray) -> tuple[int, int] | None:
    """(offset, length) in the mapping of the pages that hold `rows` (first-axis indices) of a
    memory-mapped array; None for an array that is not memory-mapped or no rows."""
    if getattr(array, "_mmap", None) is None or not len(rows):
        return None
    row_bytes = array.strides[0]
    start = array.offset % mmap.ALLOCATIONGRANULARITY          # the data's place in the mapping
    low = start + int(np.min(rows)) * row_bytes
    high = start + (int(np.max(rows)) + 1) * row_bytes
    low -= low % mmap.ALLOCATIONGRANULARITY
    return low, high - low


def release_rows(array: np.memmap, rows: np.ndarray) -> None:
    """Drop the pages of `rows` of a memory-mapped array from this process's mapping
    (MADV_DONTNEED; the file keeps them, a later read maps them again), so that the resident
    memory of a stage that reads or fills a store stays flat in the number of rows. Written
    pages must be flushed first (`flush_rows`)."""
    span = _mapped_span(array, rows)
    if span is not None and hasattr(mmap, "MADV_DONTNEED"):
        array._mmap.madvise(mmap.MADV_DONTNEED, *span)


def is_mapped_file(array) -> bool:
    """True for a C-order array memory-mapped from a file (np.load(mmap_mode='r')), not a view of one."""
    return isinstance(getattr(array, "base", None), mmap.mmap) and array.flags.c_contiguous


def read_rows(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """array[rows] (rows: first-axis indices) as a new array in memory. From a memory-mapped .npy
    (np.load(mmap_mode='r')) the rows are read from its file (stages.common.rowfile.pread_rows),
    not through the mapping: the reading process's resident memory stays the rows it holds,
    where faulting them in through the mapping would keep every page it ever read resident (the
    whole store after an epoch of random batches). The page cache serves both alike (the demo's
    crops: 71 against 60 ms an epoch of random batches of 64 through the mapping; 118 when each
    batch's pages are released from it)."""
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    if not is_mapped_file(array):
        return np.asarray(array[rows])
    out = np.empty((len(rows),) + array.shape[1:], dtype=array.dtype)
    with open(array.filename, "rb", buffering=0) as file:
        pread_rows(file.fileno(), array.offset, len(array), rows, out, array.filename)
    return out


@dataclass(frozen=True)
class MappedFile:
    """What reopens a read-only memory-mapped .npy array: pickled in its place (a loader process
    started by spawn or forkserver, Python's default on macOS and from 3.14 on Linux, would
    otherwise receive a copy of the whole array)."""

    filename: str
    offset: int
    shape: tuple
    dtype: str

    @classmethod
    def of(cls, array):
        """The reference of a memory-mapped array; any other value as it is."""
        if not is_mapped_file(array):
            return array
        return cls(str(array.filename), int(array.offset), tuple(array.shape), array.dtype.str)

    @staticmethod
    def reopened(value):
        """The array a reference stands for, mapped again; any other value as it is."""
        if not isinstance(value, MappedFile):
            return value
        return np.memmap(value.filename, dtype=np.dtype(value.dtype), mode="r", offset=value.offset, shape=value.shape)


def flush_rows(array: np.memmap, rows: np.ndarray) -> None:
    """Write the pages of `rows` of a memory-mapped array to disk (msync of their span only: the
    cost follows the rows, not the array's size), then release them (`release_rows`)."""
    span = _mapped_span(array, rows)
    if span is not None:
        array._mmap.flush(*span)
        release_rows(array, rows)


def stamp_run(splits: list[Path]) -> str:
    """Write RUN_FILE into each finished split folder: one identity for the whole crop run."""
    run = files_digest([Path(folder) / name for folder in splits for name in RUN_CONTENT])
    for folder in splits:
        save_json(Path(folder) / RUN_FILE, {"run": run})
    return run


def read_run(path: Path) -> str:
    """The crop run identity of a split's RUN_FILE."""
    try:
        return str(json.loads(Path(path).read_text())["run"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path}: not a crop run record ({err}); re-run `dvc repro crop`") from None
