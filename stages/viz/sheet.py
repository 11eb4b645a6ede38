"""Qualitative sheet like the paper's Fig. 2: per sample, the face crop, the ground truth and the
prediction drawn over it (projected mesh wireframe + landmark vertices).

Each row of the sheet is one sample: [input crop | ground-truth overlay | prediction overlay].
Crops are square boxes around the projected face, cut with cv2.warpAffine (half-pixel shift
between the continuous coordinates used here and OpenCV's centre-at-integer pixels).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from stages.viz.draw import contact_sheet, draw_points, draw_wireframe, put_label

GT_COLOR = (0, 255, 0)
PRED_COLOR = (255, 64, 64)
MARGIN = 0.25           # crop box = face bounding square enlarged by this fraction on each side


@dataclass(frozen=True)
class SheetSample:
    """One sample to draw. image: (H, W, 3) uint8 RGB; uv_*: (V, 2) projected vertices in full-image
    pixels (uv_gt None without ground truth); label: text for the prediction tile."""

    image: np.ndarray
    uv_pred: np.ndarray
    uv_gt: np.ndarray | None
    key: str
    label: str


def crop_box(uv: np.ndarray) -> tuple[float, float, float]:
    """Square around points (V, 2) -> (x0, y0, side) in continuous pixels, with MARGIN."""
    low, high = uv.min(axis=0), uv.max(axis=0)
    side = float((high - low).max() * (1 + 2 * MARGIN))
    centre = (low + high) / 2
    return float(centre[0] - side / 2), float(centre[1] - side / 2), side


def cut(image: np.ndarray, box: tuple[float, float, float], size: int) -> np.ndarray:
    """The box of `image` resampled to a (size, size, 3) tile (black outside the image)."""
    x0, y0, side = box
    step = side / size                      # source pixels per tile pixel
    # tile index j has its centre at continuous j + 0.5 -> source continuous x0 + (j + 0.5) step
    # -> source array index x0 + (j + 0.5) step - 0.5
    inverse = np.array([[step, 0.0, x0 + 0.5 * step - 0.5], [0.0, step, y0 + 0.5 * step - 0.5]])
    return cv2.warpAffine(image, inverse, (size, size), flags=cv2.INTER_AREA | cv2.WARP_INVERSE_MAP)


def to_tile(uv: np.ndarray, box: tuple[float, float, float], size: int) -> np.ndarray:
    """Full-image points (V, 2) -> tile points (V, 2), both continuous pixels."""
    x0, y0, side = box
    return (uv - np.array([x0, y0])) * (size / side)


def overlay(tile: np.ndarray, uv: np.ndarray, faces: np.ndarray, kpt_ind: np.ndarray, color) -> np.ndarray:
    """Wireframe of the mesh and dots at its landmark vertices on a tile."""
    drawn = draw_wireframe(tile, uv, faces, color=color, alpha=0.45)
    return draw_points(drawn, uv[kpt_ind], color=color, radius=1.5)


def sample_tiles(sample: SheetSample, faces: np.ndarray, kpt_ind: np.ndarray, size: int) -> list[np.ndarray]:
    """[input crop, ground-truth overlay, prediction overlay] tiles of one sample."""
    box = crop_box(sample.uv_gt if sample.uv_gt is not None else sample.uv_pred)
    crop = cut(sample.image, box, size)
    if sample.uv_gt is None:
        truth = put_label(crop, "no ground truth")
    else:
        truth = put_label(overlay(crop, to_tile(sample.uv_gt, box, size), faces, kpt_ind, GT_COLOR), "ground truth")
    pred = overlay(crop, to_tile(sample.uv_pred, box, size), faces, kpt_ind, PRED_COLOR)
    return [put_label(crop, sample.key), truth, put_label(pred, sample.label)]


def qualitative_sheet(samples: list[SheetSample], faces: np.ndarray, kpt_ind: np.ndarray, size: int) -> np.ndarray:
    """The sheet (rows = samples, 3 columns) as one uint8 RGB image."""
    tiles = [tile for sample in samples for tile in sample_tiles(sample, faces, kpt_ind, size)]
    return contact_sheet(tiles, columns=3, tile_size=size)


def pick_extremes(scores: np.ndarray, n: int) -> np.ndarray:
    """Row indices of the n // 2 lowest and the n - n // 2 highest scores (all rows when <= n)."""
    order = np.argsort(scores, kind="stable")
    if len(order) <= n:
        return order
    return np.concatenate([order[:n // 2], order[len(order) - (n - n // 2):]])


def pick_random(count: int, n: int, seed: int) -> np.ndarray:
    """n seeded random row indices out of count (sorted), all rows when count <= n."""
    return np.sort(np.random.default_rng(seed).choice(count, size=min(n, count), replace=False))
