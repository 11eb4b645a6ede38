"""The predictions file every predictor writes (baseline, infer) and submit/evaluate read.

One .npz per predictor and split, rows aligned with the split's list:
  ids:      (N, 3) str   subject_id, facial_action, img_id
  verts:    (N, V, 3) float32  canonical vertices, metres
  R_t:      (N, 4, 4) float64  pose, row-vector form (stages/wcpa/camera.py)
  optional: landmarks (N, V, 2) float32 pixels in the full image; sigma (N, V) or (N, V, 2)
            pixels (the landmarks' uncertainty); any extra (infer adds skipped (N,) bool)
The arrays are stored uncompressed (np.savez's layout), so that a reader takes any block of rows
straight from the file (open_predictions) and never holds a whole split's meshes.
"""
from __future__ import annotations

import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from stages.common.io import atomic_write, fresh_temporary_dir, save_npz
from stages.common.rowfile import RowReader, RowWriter
from stages.wcpa.layout import ID_COLUMNS, DataError

LOCAL_HEADER = struct.Struct("<4s22xHH")   # a zip entry's local header: signature, 22 bytes, name and extra lengths
LOCAL_SIGNATURE = b"PK\x03\x04"
BLOCK_ROWS = 512                           # rows a stage reads at a time: 7.5 MB of meshes at 1220 vertices


def save_predictions(path: Path | str, table: pd.DataFrame, verts: np.ndarray, R_t: np.ndarray,
                     **extra: np.ndarray) -> None:
    """Write predictions aligned with `table` (a list DataFrame), atomically."""
    n = len(table)
    if len(verts) != n or len(R_t) != n:
        raise ValueError(f"{path}: {len(verts)} meshes / {len(R_t)} poses for {n} list rows")
    ids = table[ID_COLUMNS].to_numpy(dtype=str)
    save_npz(path, ids=ids, verts=np.asarray(verts, np.float32), R_t=np.asarray(R_t, np.float64), **extra)


class PredictionWriter:
    """Writes a predictions file block by block, for a stage whose resident memory must stay flat
    in the number of rows: each array goes to a row file in a temporary folder beside `path`;
    on a clean exit they are packed (copied in 1 MB pieces) into the .npz, atomically. The folder,
    `.<stem>.rows<pid>`, goes at the exit; one left by a killed process goes at the next entry.

    with PredictionWriter(path, table, {"verts": ((V, 3), np.float32), "R_t": ((4, 4), np.float64),
                                        ...}) as out:
        out.write(start, verts=block, ...)            # rows start .. start + B of each given array
        out.write_rows(rows, sigma=block)             # scattered rows
    Rows never written read back as zeros. verts and R_t must be among the arrays.
    """

    def __init__(self, path: Path | str, table: pd.DataFrame, rows: dict[str, tuple[tuple[int, ...], type]]):
        if "verts" not in rows or "R_t" not in rows:
            raise ValueError(f"{path}: predictions need verts and R_t")
        self.path, self.table, self.rows = Path(path), table, rows
        self._writers: dict[str, RowWriter] = {}

    def __enter__(self) -> "PredictionWriter":
        self._folder = fresh_temporary_dir(self.path.parent, f".{self.path.stem}.rows")
        for key, (shape, dtype) in self.rows.items():
            self._writers[key] = RowWriter(self._folder / f"{key}.npy", (len(self.table),) + shape, dtype).__enter__()
        return self

    def write(self, start: int, **blocks: np.ndarray) -> None:
        for key, block in blocks.items():
            self._writers[key].write(start, block)

    def write_rows(self, rows: np.ndarray, **blocks: np.ndarray) -> None:
        for key, block in blocks.items():
            self._writers[key].write_rows(rows, block)

    def __exit__(self, kind, error, trace) -> bool:
        try:
            for writer in self._writers.values():
                writer.__exit__(kind, error, trace)
            if kind is None:
                self._pack()
        finally:
            shutil.rmtree(self._folder, ignore_errors=True)
        return False

    def _pack(self) -> None:
        """The row files and the ids -> the .npz (np.savez's layout: uncompressed, <key>.npy, every
        entry dated 1980-01-01 as ZipFile.open dates it, so that equal predictions are equal bytes)."""
        with atomic_write(self.path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as npz:
            with npz.open("ids.npy", "w", force_zip64=True) as dst:
                np.save(dst, self.table[ID_COLUMNS].to_numpy(dtype=str))
            for key in self.rows:
                with open(self._folder / f"{key}.npy", "rb") as src, \
                        npz.open(f"{key}.npy", "w", force_zip64=True) as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)


def _data_offset(path: Path, handle, entry: zipfile.ZipInfo) -> int:
    """The byte offset of a zip member's data: after its local header, whose name and extra
    fields may differ in length from the central directory's."""
    handle.seek(entry.header_offset)
    header = handle.read(LOCAL_HEADER.size)
    if len(header) != LOCAL_HEADER.size or header[:4] != LOCAL_SIGNATURE:
        raise DataError(f"{path}: no zip entry header for '{entry.filename}'")
    _, name_bytes, extra_bytes = LOCAL_HEADER.unpack(header)
    return entry.header_offset + LOCAL_HEADER.size + name_bytes + extra_bytes


def _member(path: Path, npz: zipfile.ZipFile, handle, entry: zipfile.ZipInfo) -> RowReader | np.ndarray:
    """One .npy member: its rows read from the file when it is stored uncompressed with rows (as
    np.savez and PredictionWriter write it), in memory otherwise (np.savez_compressed, 0-d)."""
    if entry.compress_type == zipfile.ZIP_STORED:
        start = _data_offset(path, handle, entry)
        try:
            reader = RowReader(path, start)
        except ValueError:              # not a C-order array with rows: read below
            reader = None
        if reader is not None:
            if reader.offset - start + reader.nbytes != entry.file_size:
                raise DataError(f"{path}: '{entry.filename}' holds {entry.file_size} bytes, its header says "
                                f"{reader.offset - start + reader.nbytes}")
            return reader
    with npz.open(entry) as member:
        return np.lib.format.read_array(member, allow_pickle=False)


def open_predictions(path: Path | str, table: pd.DataFrame | None = None) -> dict[str, RowReader | np.ndarray]:
    """A predictions file's arrays, read on demand: `out[key][a:b]`, `out[key][rows]`,
    `out[key][i]` and `len(out[key])` read only those rows from the file (RowReader), so that a
    stage that goes through them block by block keeps its memory flat in the number of rows. ids
    are in memory. With `table`, check that its rows are the list's rows in order."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as npz, open(path, "rb") as handle:
            data = {entry.filename[:-len(".npy")]: _member(path, npz, handle, entry)
                    for entry in npz.infolist() if entry.filename.endswith(".npy")}
    except FileNotFoundError:
        raise DataError(f"{path}: predictions file not found") from None
    except DataError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable predictions .npz: {err}") from None
    for key in ("ids", "verts", "R_t"):
        if key not in data:
            raise DataError(f"{path}: missing '{key}'")
    data["ids"] = data["ids"][:]
    if table is not None:
        expected = table[ID_COLUMNS].to_numpy(dtype=str)
        if data["ids"].shape != expected.shape or not (data["ids"] == expected).all():
            raise DataError(f"{path}: rows do not match the list ({len(data['ids'])} vs {len(expected)} rows, "
                            "or another order)")
    return data


def load_predictions(path: Path | str, table: pd.DataFrame | None = None) -> dict[str, np.ndarray]:
    """A predictions file's arrays in memory (open_predictions' checks)."""
    return {key: values[:] if isinstance(values, RowReader) else values
            for key, values in open_predictions(path, table).items()}
