"""The challenge's submission file: writer, reader and validator.

One float32 array of shape (N_test, 3V + 9 + 3), rows in the test list's order:
  columns 0 .. 3V-1     canonical vertices (metres), flattened row-major (x0 y0 z0 x1 ...)
  columns 3V .. 3V+8    R_t[:3, :3] flattened row-major (the row-vector form, not transposed)
  columns 3V+9 .. 3V+11 t = R_t[3, :3] (metres)
The .npy is uploaded inside a .zip. Both files are written atomically and byte-reproducibly:
the same predictions give identical .npy and .zip bytes (fixed zip date, permissions, order).
"""
from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np

from stages.common.io import atomic_write
from stages.common.rowfile import RowWriter
from stages.wcpa.predictions import BLOCK_ROWS

POSE_COLUMNS = 9 + 3
ORTHONORMAL_TOL = 1e-4      # max |R R^T - I| entry; float32 storage of an exact rotation gives ~1e-7
MAX_VERTEX_RADIUS_M = 0.5  # |canonical vertex|: a head is ~0.25 m across and centred near the origin;
                           # past 0.5 m the mesh is in other units (mm, or a scale slip like 1e6)
MAX_DISTANCE_M = 10.0      # |t|: the WCPA faces are ~0.5 m from the camera; at 10 m a face spans a few px
ZIP_DATE = (1980, 1, 1, 0, 0, 0)   # the earliest date a zip entry can hold
ZIP_MODE = 0o644


class SubmissionError(ValueError):
    """A submission array or file breaks the challenge format; the message names the problem."""


def to_submission(verts: np.ndarray, R_t: np.ndarray) -> np.ndarray:
    """Predictions -> submission array. verts (N, V, 3) metres, R_t (N, 4, 4) -> (N, 3V + 12) float32."""
    verts = np.asarray(verts)
    R_t = np.asarray(R_t)
    n = len(verts)
    if verts.ndim != 3 or verts.shape[2] != 3 or R_t.shape != (n, 4, 4):
        raise SubmissionError(f"expected verts (N, V, 3) and R_t (N, 4, 4), got {verts.shape} and {R_t.shape}")
    columns = [verts.reshape(n, -1), R_t[:, :3, :3].reshape(n, 9), R_t[:, 3, :3]]
    return np.concatenate(columns, axis=1).astype(np.float32)


def from_submission(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Submission array (N, 3V + 12) -> verts (N, V, 3) float32, R_t (N, 4, 4) float64."""
    n, columns = array.shape
    n_verts = (columns - POSE_COLUMNS) // 3
    verts = array[:, :3 * n_verts].reshape(n, n_verts, 3).astype(np.float32)
    R_t = np.zeros((n, 4, 4))
    R_t[:, :3, :3] = array[:, 3 * n_verts:3 * n_verts + 9].reshape(n, 3, 3)
    R_t[:, 3, :3] = array[:, 3 * n_verts + 9:]
    R_t[:, 3, 3] = 1.0
    return verts, R_t


def _first_row(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def validate_submission(array: np.ndarray, n_rows: int, n_verts: int, name: str = "submission") -> None:
    """Raise SubmissionError (naming `name` and the problem, with a row index) unless `array` is valid.

    Checks: 2-D float32 of shape (n_rows, 3 n_verts + 12); all finite; every R orthonormal
    (|R R^T - I| <= ORTHONORMAL_TOL per entry) with det +1 (within the same tolerance); tz < 0
    (the OpenGL camera looks down -z); plausible scale: every canonical vertex within
    MAX_VERTEX_RADIUS_M of the origin and |t| < MAX_DISTANCE_M. The rows are checked BLOCK_ROWS
    at a time (`array` may be memory-mapped).
    """
    if not isinstance(array, np.ndarray) or array.ndim != 2:
        raise SubmissionError(f"{name}: expected a 2-D array of shape {(n_rows, 3 * n_verts + POSE_COLUMNS)}, got "
                              f"{getattr(array, 'shape', type(array).__name__)}")
    check_layout(array.shape, array.dtype, n_rows, n_verts, name)
    for start in range(0, n_rows, BLOCK_ROWS):
        check_rows(np.asarray(array[start:start + BLOCK_ROWS]), start, name)


def check_layout(shape: tuple[int, int], dtype: np.dtype, n_rows: int, n_verts: int, name: str) -> None:
    """The submission array's shape (n_rows, 3 n_verts + 12) and dtype float32."""
    columns = 3 * n_verts + POSE_COLUMNS
    if shape[1] != columns:
        raise SubmissionError(f"{name}: {shape[1]} columns, expected {columns} "
                              f"({n_verts} vertices x 3 + 9 rotation + 3 translation)")
    if shape[0] != n_rows:
        raise SubmissionError(f"{name}: {shape[0]} rows, expected {n_rows} (one per test list row)")
    if dtype != np.float32:
        raise SubmissionError(f"{name}: dtype {dtype}, expected float32")


def pose_accepted(R_t: np.ndarray) -> np.ndarray:
    """(N,) bool: the poses R_t (N, 4, 4) that check_rows accepts as poses (finite, the face in
    front of the camera, |t| below MAX_DISTANCE_M); a rotation from PnP is orthonormal."""
    finite = np.isfinite(R_t).all(axis=(1, 2))
    t = np.where(finite[:, None], R_t[:, 3, :3], 0.0)
    return finite & (t[:, 2] < 0) & (np.linalg.norm(t, axis=-1) < MAX_DISTANCE_M)


def check_rows(block: np.ndarray, first: int, name: str) -> None:
    """validate_submission's checks of each row of block (B, 3V + 12), rows first .. first + B of
    the array (the row the message names)."""
    finite = np.isfinite(block).all(axis=1)
    if not finite.all():
        raise SubmissionError(f"{name}: row {first + _first_row(~finite)} has NaN or inf values")
    verts, R_t = from_submission(block)
    _check_scale(verts, R_t, first, name)
    R = R_t[:, :3, :3]
    deviation = np.abs(R @ np.swapaxes(R, 1, 2) - np.eye(3)).max(axis=(1, 2))
    if (deviation > ORTHONORMAL_TOL).any():
        row = _first_row(deviation > ORTHONORMAL_TOL)
        raise SubmissionError(f"{name}: row {first + row} rotation is not orthonormal "
                              f"(max |R R^T - I| = {deviation[row]:.2e} > {ORTHONORMAL_TOL:g})")
    det = np.linalg.det(R)
    if (np.abs(det - 1.0) > ORTHONORMAL_TOL).any():
        row = _first_row(np.abs(det - 1.0) > ORTHONORMAL_TOL)
        raise SubmissionError(f"{name}: row {first + row} rotation has det {det[row]:+.4f}, expected +1 "
                              "(a reflection)")
    if (R_t[:, 3, 2] >= 0).any():
        row = _first_row(R_t[:, 3, 2] >= 0)
        raise SubmissionError(f"{name}: row {first + row} has tz = {R_t[row, 3, 2]:.4f} m >= 0 "
                              "(the face must be in front of the camera, tz < 0)")


def _check_scale(verts: np.ndarray, R_t: np.ndarray, first: int, name: str) -> None:
    """Stop on a row whose vertices (B, V, 3) or translation R_t[:, 3, :3] are implausibly far
    (metres); rows first .. first + B of the array."""
    radius = np.linalg.norm(verts, axis=-1).max(axis=1)
    if (radius > MAX_VERTEX_RADIUS_M).any():
        row = _first_row(radius > MAX_VERTEX_RADIUS_M)
        raise SubmissionError(f"{name}: row {first + row} has a vertex {radius[row]:.3g} m from the origin, more "
                              f"than MAX_VERTEX_RADIUS_M = {MAX_VERTEX_RADIUS_M} m (vertices must be in metres)")
    distance = np.linalg.norm(R_t[:, 3, :3], axis=-1)
    if (distance >= MAX_DISTANCE_M).any():
        row = _first_row(distance >= MAX_DISTANCE_M)
        raise SubmissionError(f"{name}: row {first + row} has |t| = {distance[row]:.3g} m, not below "
                              f"MAX_DISTANCE_M = {MAX_DISTANCE_M} m (translations must be in metres)")


def write_submission(npy_path: Path | str, zip_path: Path | str, verts, R_t, n_rows: int, n_verts: int) -> None:
    """Validate and write the .npy and the upload .zip (holding the .npy), BLOCK_ROWS rows at a
    time: memory stays flat in the number of rows.

    verts (N, V, 3) metres, R_t (N, 4, 4): arrays or row readers (open_predictions); n_rows: rows
    of the test list; n_verts: vertices of the data's topology. Nothing is written when
    validation fails.
    """
    npy_path, zip_path = Path(npy_path), Path(zip_path)
    n = len(verts)
    if len(verts.shape) != 3 or verts.shape[2] != 3 or tuple(R_t.shape) != (n, 4, 4):
        raise SubmissionError(f"{npy_path}: expected verts (N, V, 3) and R_t (N, 4, 4), got {tuple(verts.shape)} "
                              f"and {tuple(R_t.shape)}")
    check_layout((n, 3 * verts.shape[1] + POSE_COLUMNS), np.dtype(np.float32), n_rows, n_verts, str(npy_path))
    with RowWriter(npy_path, (n, 3 * n_verts + POSE_COLUMNS), np.float32) as out:
        for start in range(0, n, BLOCK_ROWS):
            block = to_submission(verts[start:start + BLOCK_ROWS], R_t[start:start + BLOCK_ROWS])
            check_rows(block, start, str(npy_path))
            out.write(start, block)
    _zip(npy_path, zip_path)


def _zip(npy_path: Path, zip_path: Path) -> None:
    """zip_path: an archive holding npy_path, deflated, copied in 1 MB pieces (the bytes of
    ZipFile.writestr with the fixed date and mode)."""
    entry = zipfile.ZipInfo(npy_path.name, date_time=ZIP_DATE)
    entry.external_attr = ZIP_MODE << 16
    entry.compress_type = zipfile.ZIP_DEFLATED
    entry.file_size = npy_path.stat().st_size
    with atomic_write(zip_path) as tmp, zipfile.ZipFile(tmp, "w") as archive, \
            archive.open(entry, "w") as dst, open(npy_path, "rb") as src:
        shutil.copyfileobj(src, dst, 1 << 20)


def read_submission(path: Path | str, n_rows: int, n_verts: int) -> np.ndarray:
    """Read and validate a submission .npy (memory-mapped), or a .zip holding exactly one .npy."""
    path = Path(path)
    try:
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith(".npy")]
                if len(names) != 1:
                    raise SubmissionError(f"{path}: expected one .npy inside, found {names}")
                with archive.open(names[0]) as member:
                    array = np.lib.format.read_array(member, allow_pickle=False)
        else:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise SubmissionError(f"{path}: submission file not found") from None
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise SubmissionError(f"{path}: not a readable submission: {err}") from None
    validate_submission(array, n_rows, n_verts, name=str(path))
    return array
