"""Decoded training views of the detector, cut once from the full images and kept in memory.

For each image: the locate view (the whole image at the locate input size) and a refine source
view around the ground-truth landmarks, `SOURCE_FIELD` times wider than the refine input at the
same pixel density, so that random shifts, scales and rotations stay filled with image.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from tqdm import tqdm

from stages.coarse.views import locate_warp, refine_warp
from stages.common.badinput import BadInputs
from stages.face.warp import apply_warp, warp_image
from stages.wcpa.layout import DataError, image_path, read_image, sample_key

SOURCE_FIELD = 1.5


@dataclass
class Views:
    """One pass's training views: images (N, S, S, 3) uint8, landmarks (N, K, 2) view px and
    scale (N,) view px per full-image px."""

    images: np.ndarray
    landmarks: np.ndarray
    scale: np.ndarray


def source_size(size: int) -> int:
    """Side of the refine source view for a refine input of `size` px (even, >= size)."""
    return 2 * int(np.ceil(size * SOURCE_FIELD / 2))


def _cut(path: Path, size: tuple[int, int], landmarks: np.ndarray, locate_size: int, refine_size: int,
         margin: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One image of the data set's (width, height) `size` -> (locate view, its warp, refine
    source view, its warp)."""
    image = read_image(path, size)
    to_locate = locate_warp(image.shape[1], image.shape[0], locate_size)
    big = source_size(refine_size)
    to_refine = refine_warp(landmarks, big, margin * big / refine_size)
    return warp_image(image, to_locate, locate_size), to_locate, warp_image(image, to_refine, big), to_refine


def _cut_or_error(path: Path, *args) -> tuple | DataError:
    try:
        return _cut(path, *args)
    except DataError as err:
        return err


def cut_views(root: Path | str, table: pd.DataFrame, size: tuple[int, int], landmarks: np.ndarray,
              locate_size: int, refine_size: int, margin: float, workers: int,
              bad: BadInputs) -> tuple[Views, Views, np.ndarray]:
    """Decode every listed image once -> (locate Views, refine source Views, kept row indices).

    size: the data set's (width, height) px; landmarks: (N, K, 2) GT landmarks in full-image px,
    which centre the refine source views. An unreadable image or one of another size stops with
    its name, or with data.skip_bad is recorded in `bad` and left out of the views.
    """
    paths = [image_path(root, row) for row in table.itertuples(index=False)]
    jobs = (delayed(_cut_or_error)(p, size, lm, locate_size, refine_size, margin) for p, lm in zip(paths, landmarks))
    outcomes = list(tqdm(Parallel(n_jobs=workers, prefer="threads", return_as="generator")(jobs),
                         total=len(paths), desc="decode views", unit="img"))
    kept = []
    for index, (row, outcome) in enumerate(zip(table.itertuples(index=False), outcomes)):
        with bad.guard(sample_key(row)):
            if isinstance(outcome, DataError):
                raise outcome
            kept.append(index)
    kept = np.asarray(kept, dtype=np.int64)
    results = [outcomes[i] for i in kept]
    landmarks = np.asarray(landmarks)[kept]
    locate_warps = np.stack([r[1] for r in results])
    refine_warps = np.stack([r[3] for r in results])
    locate = Views(np.stack([r[0] for r in results]), apply_warp(locate_warps, landmarks),
                   np.sqrt(np.abs(np.linalg.det(locate_warps[:, :, :2]))))
    refine = Views(np.stack([r[2] for r in results]), apply_warp(refine_warps, landmarks),
                   np.sqrt(np.abs(np.linalg.det(refine_warps[:, :, :2]))))
    return locate, refine, kept
