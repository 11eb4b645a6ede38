"""The challenge's data layout: lists, per-sample files and resources (see README "Data").

<root>/image/<subject>/<action>/<img>_ar.jpg, info/.../<img>_info.npz (verts, R_t),
68landmarks/.../<img>_68landmarks.txt, list/WCPA_track2_{train,test}.csv,
resources/{example.obj, kpt_ind.npy, projection_matrix.txt, example_submission.npy}.
Ids are read as strings (they may have leading zeros). Nothing here assumes the vertex count,
the landmark count or the image size: they come from the resources and the images. The image
size is the data set's (the most common size of the first train images); every image a stage
reads is checked against it.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import cv2
import numpy as np
import pandas as pd

from stages.common.io import atomic_write
from stages.common.processes import ordered_map
from stages.wcpa.camera import Camera
from stages.wcpa.obj import read_obj

if TYPE_CHECKING:                # badinput imports DataError from here
    from stages.common.badinput import BadInputs

ID_COLUMNS = ["subject_id", "facial_action", "img_id"]
SPLIT_LISTS = {"train": "WCPA_track2_train.csv", "test": "WCPA_track2_test.csv"}
SIZE_PROBES = 5   # first train images whose most common size is the data set's image size
POSE_TOL = 1e-3        # info files' R_t (float32 labels): |R R^T - I| and its last column's entries
log = logging.getLogger(__name__)


class DataError(ValueError):
    """A data file is missing, unreadable or malformed; the message names it."""


SAMPLE_FILES = {"image": "_ar.jpg", "info": "_info.npz", "68landmarks": "_68landmarks.txt"}   # folder: suffix


def sample_file(root: Path | str, kind: str, row) -> Path:
    """<root>/<kind>/<subject>/<action>/<img><suffix> of a list row (kind: a SAMPLE_FILES key)."""
    return Path(root) / kind / row.subject_id / row.facial_action / f"{row.img_id}{SAMPLE_FILES[kind]}"


def sample_files(root: Path | str, table: pd.DataFrame, kind: str) -> list[str]:
    """sample_file of every row of `table`, as strings, built without pathlib (10x faster on
    the real lists' 400k rows)."""
    base, suffix = os.path.join(str(Path(root)), kind), SAMPLE_FILES[kind]
    return [os.path.join(base, s, a, i + suffix) for s, a, i in zip(table.subject_id, table.facial_action, table.img_id)]


def image_path(root: Path, row) -> Path:
    return sample_file(root, "image", row)


def info_path(root: Path, row) -> Path:
    return sample_file(root, "info", row)


def landmarks_path(root: Path, row) -> Path:
    return sample_file(root, "68landmarks", row)


def list_path(root: Path, split: str) -> Path:
    return Path(root) / "list" / SPLIT_LISTS[split]


def read_list(path: Path | str) -> pd.DataFrame:
    """A list CSV -> DataFrame with the three id columns as strings, in file order (a trailing
    comma on the rows is no index column; an id with spaces around it stops)."""
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, index_col=False)
    except FileNotFoundError:
        raise DataError(f"{path}: list file not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a readable CSV: {err}") from None
    missing = [c for c in ID_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (its columns: {list(table.columns)})")
    table = table[ID_COLUMNS].reset_index(drop=True)
    empty = (table == "").any(axis=1)
    if empty.any():
        raise DataError(f"{path}: row {int(np.argmax(empty.to_numpy())) + 2} has an empty id")
    padded = (table != table.apply(lambda column: column.str.strip())).any(axis=1)
    if padded.any():
        row = int(np.argmax(padded.to_numpy()))
        raise DataError(f"{path}: row {row + 2} has an id with spaces around it: {list(table.iloc[row])}")
    _check_ids_safe(path, table)
    duplicated = table.duplicated()
    if duplicated.any():
        line = int(np.argmax(duplicated.to_numpy())) + 2
        raise DataError(f"{path}: line {line} repeats sample {sample_key(table.iloc[line - 2])}")
    return table


def _check_ids_safe(path: Path, table: pd.DataFrame) -> None:
    """Stop on an id that is not one plain path component ('/', '\\', '..', '.', a drive or root):
    joined under the data root, such an id could name a file outside it. Vectorised: 0.13 s for
    the real train list's 356,640 rows, where a loop over them took 0.8."""
    unsafe = pd.DataFrame({column: table[column].isin([".", ".."]) | table[column].str.contains(r"[/\\:\x00]")
                           for column in ID_COLUMNS})
    if unsafe.to_numpy().any():
        row = int(np.argmax(unsafe.to_numpy().any(axis=1)))
        column = ID_COLUMNS[int(np.argmax(unsafe.iloc[row].to_numpy()))]
        raise DataError(f"{path}: line {row + 2}: {column} {table[column].iloc[row]!r} is not a plain name "
                        "(no '/', '\\', ':', '.' or '..'): it could resolve outside the data root")


def split_tables(root: Path | str, split_dir: Path | str) -> dict[str, pd.DataFrame]:
    """The train/val lists of the split stage (split_dir) and the data root's test list."""
    tables = {s: read_list(Path(split_dir) / f"{s}.csv") for s in ("train", "val")}
    tables["test"] = read_list(list_path(root, "test"))
    return tables


def write_list(path: Path | str, table: pd.DataFrame) -> None:
    """Write the id columns of `table` as a list CSV (the challenge's format)."""
    with atomic_write(path) as tmp:
        table[ID_COLUMNS].to_csv(tmp, index=False)


def sample_key(row) -> str:
    """'subject/action/img' of a list row, for messages and skip lists."""
    return f"{row.subject_id}/{row.facial_action}/{row.img_id}"


def sample_keys(table: pd.DataFrame) -> list[str]:
    """sample_key of every row of `table`."""
    return [f"{s}/{a}/{i}" for s, a, i in zip(table.subject_id, table.facial_action, table.img_id)]


REDUCED_READS = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                 8: cv2.IMREAD_REDUCED_COLOR_8}


def read_image(path: Path | str, size: tuple[int, int] | None = None, rgb: bool = True,
               reduce: int = 1, orient: bool = False) -> np.ndarray:
    """A JPEG -> (H, W, 3) uint8 RGB in its stored pixel grid, the one its labels (landmarks,
    projections) refer to: an EXIF orientation is not applied (orient True applies it, as for a
    photo shown upright: stages.predict). size: the data set's (width, height) in px (the
    camera's `size`); an image of another size is a DataError naming the file and both sizes.
    rgb False: OpenCV's BGR order as decoded (a caller that only resamples the image can convert
    the small result instead: the same pixels, without a full-resolution conversion). reduce 2, 4
    or 8: decoded at that fraction of its size by libjpeg's scaled IDCT -> (ceil(H / reduce),
    ceil(W / reduce), 3), for a caller that needs no more detail."""
    path = Path(path)
    data = image_bytes(path)
    flags = REDUCED_READS[reduce] | (0 if orient else cv2.IMREAD_IGNORE_ORIENTATION)
    image = cv2.imdecode(data, flags) if data.size else None
    if image is None:
        raise DataError(f"{path}: not a decodable image (corrupt or empty)")
    check_image_size(path, image.shape[:2], size, reduce)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if rgb else image


def image_bytes(path: Path | str) -> np.ndarray:
    """An image file's bytes (uint8); a missing file is a DataError naming it."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: image not found")
    return np.fromfile(path, dtype=np.uint8)


def check_image_size(path: Path | str, shape: tuple[int, int], size: tuple[int, int] | None, reduce: int = 1) -> None:
    """A decoded image's (height, width) `shape` against the data set's (width, height) `size`
    (None: any) at 1 / reduce of it: another size is a DataError naming the file and both sizes."""
    if size is not None and tuple(shape) != (-(-size[1] // reduce), -(-size[0] // reduce)):
        raise DataError(f"{Path(path)}: image is {shape[1] * reduce}x{shape[0] * reduce}, "
                        f"the data set's images are {size[0]}x{size[1]}")


def data_image_size(root: Path | str) -> tuple[int, int]:
    """(width, height) in px of the data set's images: the most common size among the first
    SIZE_PROBES readable train images (an odd or unreadable one among them is left to the stages,
    which name it when they read it). A tie or no readable image is a DataError."""
    table = read_list(list_path(root, "train")).iloc[:SIZE_PROBES]
    sizes, problems = {}, []
    for row in table.itertuples(index=False):
        try:
            image = read_image(image_path(root, row))
        except DataError as err:
            problems.append(str(err))
            continue
        sizes.setdefault((image.shape[1], image.shape[0]), []).append(str(image_path(root, row)))
    if not sizes:
        raise DataError(f"no readable image among the first train images: {'; '.join(problems)}")
    ranked = sorted(sizes.items(), key=lambda item: -len(item[1]))
    found = ", ".join(f"{w}x{h}: {', '.join(paths)}" for (w, h), paths in ranked)
    if len(ranked) > 1 and len(ranked[0][1]) == len(ranked[1][1]):
        raise DataError(f"the first train images disagree on the image size, no majority ({found})")
    if len(ranked) > 1:
        log.warning("image size %dx%d from the first train images; odd ones: %s", *ranked[0][0], found)
    return ranked[0][0]


def read_info(path: Path | str, n_verts: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """An _info.npz -> verts (V, 3) float32 metres, R_t (4, 4) float64 (row-vector form)."""
    path = Path(path)
    try:
        with np.load(path) as npz:
            keys = set(npz.files)
            for key in ("verts", "R_t"):
                if key not in keys:
                    raise DataError(f"{path}: missing key '{key}' (has {sorted(keys)})")
            verts, R_t = npz["verts"], npz["R_t"]
    except FileNotFoundError:
        raise DataError(f"{path}: info file not found") from None
    except DataError:
        raise
    except Exception as err:   # zipfile/pickle/value errors of a corrupt npz
        raise DataError(f"{path}: not a readable npz: {err}") from None
    if verts.ndim != 2 or verts.shape[1] != 3 or (n_verts is not None and len(verts) != n_verts):
        raise DataError(f"{path}: verts has shape {verts.shape}, expected ({n_verts or 'V'}, 3)")
    if R_t.shape != (4, 4):
        raise DataError(f"{path}: R_t has shape {R_t.shape}, expected (4, 4)")
    if not (np.isfinite(verts).all() and np.isfinite(R_t).all()):
        raise DataError(f"{path}: non-finite values")
    problem = pose_problem(R_t.astype(np.float64))
    if problem:
        raise DataError(f"{path}: R_t {problem}")
    return verts.astype(np.float32), R_t.astype(np.float64)


def pose_problem(R_t: np.ndarray) -> str:
    """Why R_t (4, 4) is not the challenge's row-vector pose [[R, 0], [t, 1]] with R a rotation
    and the face in front of the camera (tz < 0), or ''."""
    R = R_t[:3, :3]
    if np.abs(R_t[:3, 3]).max() > POSE_TOL or abs(R_t[3, 3] - 1) > POSE_TOL:
        return f"is not [[R, 0], [t, 1]] (last column {R_t[:, 3].round(4).tolist()}; transposed?)"
    if np.abs(R @ R.T - np.eye(3)).max() > POSE_TOL or np.linalg.det(R) < 0:
        return f"has no rotation in its upper 3 x 3 (det {np.linalg.det(R):+.4f})"
    if R_t[3, 2] >= 0:
        return f"puts the face behind the camera (tz = {R_t[3, 2]:.4f} m, the camera looks along -z)"
    return ""


def read_landmarks(path: Path | str, n_points: int) -> np.ndarray:
    """A _68landmarks.txt ('x y' per line) -> (n_points, 2) float64 pixels, read as continuous
    image coordinates (the image's top-left corner at 0, 0), as the synthetic data rounds its
    projections: the challenge does not say; were its integers OpenCV's pixel indices (centres at
    integers), crops placed on them (crop.source: given68) would sit half a pixel off."""
    path = Path(path)
    try:
        rows = [line.split() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    except FileNotFoundError:
        raise DataError(f"{path}: landmarks file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read: {err}") from None
    if len(rows) != n_points:
        raise DataError(f"{path}: {len(rows)} lines, expected {n_points}")
    try:
        points = np.array([[float(r[0]), float(r[1])] for r in rows])
    except (ValueError, IndexError):
        raise DataError(f"{path}: each line must be two numbers 'x y'") from None
    if any(len(r) != 2 for r in rows) or not np.isfinite(points).all():
        raise DataError(f"{path}: each line must be two finite numbers 'x y'")
    return points


def write_landmarks(path: Path | str, points: np.ndarray) -> None:
    """Write (L, 2) pixel points as integer 'x y' lines (the challenge's format)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("".join(f"{int(x)} {int(y)}\n" for x, y in np.rint(points)))


@dataclass(frozen=True)
class Resources:
    """What the data root's resources/ define: topology, landmark vertices and the camera.

    template: (V, 3) example mesh; faces: (F, 3) triangles; kpt_ind: (L,) landmark vertices.
    """

    camera: Camera
    template: np.ndarray
    faces: np.ndarray
    kpt_ind: np.ndarray

    @property
    def n_verts(self) -> int:
        return len(self.template)

    @property
    def n_kpts(self) -> int:
        return len(self.kpt_ind)


def load_resources(root: Path | str) -> Resources:
    """Read resources/ of a data root; the image size is `data_image_size`'s, which reads the
    train list and its first images: every caller reads list/ and image/ too (a stage that does
    not list them as deps depends on the image size only through the crops, whose stage does)."""
    root = Path(root)
    res = root / "resources"
    if not (res / "example.obj").is_file():
        raise DataError(f"{res / 'example.obj'}: not found")
    try:
        template, faces = read_obj(res / "example.obj")
    except ValueError as err:
        raise DataError(str(err)) from None
    kpt_file = res / "kpt_ind.npy"
    try:
        kpt_ind = np.load(kpt_file).astype(np.int64).ravel()
    except (OSError, ValueError) as err:
        raise DataError(f"{kpt_file}: cannot read landmark indices: {err}") from None
    if kpt_ind.min() < 0 or kpt_ind.max() >= len(template):
        raise DataError(f"{kpt_file}: indices outside 0..{len(template) - 1}")
    width, height = data_image_size(root)
    try:
        camera = Camera.from_file(res / "projection_matrix.txt", width, height)
    except ValueError as err:
        raise DataError(str(err)) from None
    return Resources(camera=camera, template=template, faces=faces, kpt_ind=kpt_ind)


LABEL_CHUNK = 256       # info files a worker process reads per task (3.7 MB of meshes at 1220 vertices)


def _label_chunk(paths: list[str], n_verts: int, cwd: str) -> tuple[np.ndarray, np.ndarray, list]:
    """Worker process: verts (n, V, 3) float32, R_t (n, 4, 4) of the info files `paths` (NaN rows
    for the unreadable ones) and the (index, DataError) of those. cwd: the caller's working
    directory, which relative paths (and so the error messages) are relative to (a pooled worker
    may have started in another)."""
    os.chdir(cwd)
    verts = np.full((len(paths), n_verts, 3), np.nan, dtype=np.float32)
    poses = np.full((len(paths), 4, 4), np.nan, dtype=np.float64)
    errors = []
    for index, path in enumerate(paths):
        try:
            verts[index], poses[index] = read_info(path, n_verts)
        except DataError as err:
            errors.append((index, err))
    return verts, poses, errors


def iter_labels(root: Path | str, table: pd.DataFrame, n_verts: int, bad: "BadInputs | None" = None,
                workers: int = 1) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Ground truth of the listed samples, LABEL_CHUNK rows at a time in list
    order -> (first row, verts (n, V, 3) float32 metres, R_t (n, 4, 4) float64). The info files
    are read on `workers` processes, at most 2 chunks a worker ahead of the caller
    (stages.common.processes.ordered_map: memory stays flat however slowly the caller goes).

    A bad info file stops with its name (the first in list order); with `bad` (data.skip_bad)
    it is recorded there instead and its rows are NaN, so that the rows stay aligned with the list."""
    keys, paths = sample_keys(table), sample_files(root, table, "info")
    starts = range(0, len(paths), LABEL_CHUNK)
    jobs = ((paths[start:start + LABEL_CHUNK], n_verts, os.getcwd()) for start in starts)
    for start, (verts, poses, errors) in zip(starts, ordered_map(_label_chunk, jobs, workers)):
        for index, err in errors:
            with contextlib.nullcontext() if bad is None else bad.guard(keys[start + index]):
                raise err
        yield start, verts, poses


def load_labels(root: Path | str, table: pd.DataFrame, n_verts: int, bad: "BadInputs | None" = None,
                workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth of the listed samples -> verts (N, V, 3) float32 metres, R_t (N, 4, 4) float64,
    read on `workers` processes (iter_labels, whose bad-input rules apply: NaN rows for the
    samples skipped with `bad`)."""
    verts = np.empty((len(table), n_verts, 3), dtype=np.float32)
    poses = np.empty((len(table), 4, 4), dtype=np.float64)
    for start, chunk_verts, chunk_poses in iter_labels(root, table, n_verts, bad, workers):
        verts[start:start + len(chunk_verts)], poses[start:start + len(chunk_poses)] = chunk_verts, chunk_poses
    return verts, poses


def finite_rows(array: np.ndarray) -> np.ndarray:
    """(N,) bool: the rows of an (N, ...) array with only finite values."""
    return np.isfinite(np.asarray(array).reshape(len(array), -1)).all(axis=1)


def labelled_rows(labels: np.ndarray) -> np.ndarray:
    """(N,) bool: the rows of verts (N, V, 3) or R_t (N, 4, 4) that hold a label (load_labels
    leaves the rows of skipped samples NaN)."""
    return finite_rows(labels)
