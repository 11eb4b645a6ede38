"""Contact sheet of ground-truth samples: face crops and full views with the projected 68
landmarks and the mesh wireframe drawn over them (all from info verts and R_t)."""
from __future__ import annotations

import cv2
import numpy as np

from stages.viz.draw import contact_sheet, draw_points, draw_wireframe, put_label
from stages.wcpa.camera import Camera


def face_box(uv: np.ndarray, margin: float = 0.15) -> tuple[float, float, float]:
    """Square box (x0, y0, side) in continuous pixels around projected points (V, 2)."""
    lo, hi = uv.min(axis=0), uv.max(axis=0)
    side = float((hi - lo).max() * (1 + 2 * margin))
    centre = (lo + hi) / 2
    return float(centre[0] - side / 2), float(centre[1] - side / 2), side


def crop_to_tile(image: np.ndarray, box: tuple[float, float, float], tile: int) -> tuple[np.ndarray, np.ndarray]:
    """Resample the square box of an image to tile x tile pixels.

    Returns the tile and the (2, 3) continuous-coordinate affine full image -> tile. OpenCV's
    warpAffine uses centre-at-integer pixels, hence the half-pixel terms.
    """
    x0, y0, side = box
    s = tile / side
    warp = np.array([[s, 0.0, -s * x0], [0.0, s, -s * y0]])
    cv_warp = warp.copy()
    cv_warp[:, 2] += 0.5 * s - 0.5
    out = cv2.warpAffine(image, cv_warp, (tile, tile), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return out, warp


def annotate(tile: np.ndarray, uv: np.ndarray, kpt_ind: np.ndarray, faces: np.ndarray, label: str) -> np.ndarray:
    """Draw the wireframe of all vertices uv (V, 2) (tile pixels), the landmarks and a label."""
    out = draw_wireframe(tile, uv, faces, color=(255, 255, 255), alpha=0.2)
    out = draw_points(out, uv[kpt_ind], color=(0, 255, 0), radius=1.6)
    return put_label(out, label)


def sample_tiles(image: np.ndarray, verts: np.ndarray, R_t: np.ndarray, camera: Camera, kpt_ind: np.ndarray,
                 faces: np.ndarray, tile: int, label: str, full_view: bool) -> list[np.ndarray]:
    """Tiles of one sample: the annotated face crop, and the annotated full image when full_view."""
    uv = camera.project(verts, R_t)
    crop, warp = crop_to_tile(image, face_box(uv), tile)
    tiles = [annotate(crop, uv @ warp[:, :2].T + warp[:, 2], kpt_ind, faces, label)]
    if full_view:
        full = cv2.resize(image, (tile, tile), interpolation=cv2.INTER_AREA)
        scale = np.array([tile / image.shape[1], tile / image.shape[0]])
        tiles.append(annotate(full, uv * scale, kpt_ind, faces, "full " + label))
    return tiles


def sheet(tiles: list[np.ndarray], columns: int, tile: int) -> np.ndarray:
    """Lay tiles out in a grid (uint8 RGB)."""
    return contact_sheet(tiles, columns, tile)
