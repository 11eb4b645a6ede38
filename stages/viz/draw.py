"""Drawing on images: points, mesh wireframes and contact sheets (uint8 RGB arrays).

Points are in the project's continuous pixel coordinates (array pixel i has its centre at
i + 0.5); OpenCV's drawing functions use centre-at-integer, so 0.5 is subtracted here.
"""
from __future__ import annotations

import cv2
import numpy as np

from stages.common.io import atomic_write

SHIFT = 4                     # fixed-point bits for sub-pixel drawing
_SCALE = 1 << SHIFT


def _fixed(uv: np.ndarray) -> np.ndarray:
    """Continuous pixel coordinates (..., 2) -> OpenCV fixed-point integer coordinates."""
    return np.rint((np.asarray(uv, dtype=np.float64) - 0.5) * _SCALE).astype(np.int32)


def draw_points(image: np.ndarray, uv: np.ndarray, color=(0, 255, 0), radius: float = 2.0) -> np.ndarray:
    """Copy of `image` (H, W, 3) uint8 with filled dots at uv (L, 2) pixels."""
    out = np.ascontiguousarray(image).copy()
    for x, y in _fixed(uv):
        cv2.circle(out, (int(x), int(y)), int(radius * _SCALE), color, -1, cv2.LINE_AA, SHIFT)
    return out


def draw_wireframe(image: np.ndarray, uv: np.ndarray, faces: np.ndarray, color=(255, 255, 255),
                   alpha: float = 0.5, thickness: int = 1) -> np.ndarray:
    """Copy of `image` with the triangles `faces` (F, 3) of projected vertices uv (V, 2) blended in."""
    layer = np.ascontiguousarray(image).copy()
    polygons = list(_fixed(np.asarray(uv)[np.asarray(faces)]))
    cv2.polylines(layer, polygons, True, color, thickness, cv2.LINE_AA, SHIFT)
    return cv2.addWeighted(layer, alpha, image, 1 - alpha, 0)


def put_label(image: np.ndarray, text: str, color=(255, 255, 0)) -> np.ndarray:
    """Copy of `image` with `text` in its top-left corner."""
    out = np.ascontiguousarray(image).copy()
    scale = max(image.shape[0] / 500.0, 0.35)
    cv2.putText(out, text, (4, int(18 * scale) + 2), cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale, color, 1, cv2.LINE_AA)
    return out


def contact_sheet(tiles: list[np.ndarray], columns: int, tile_size: int) -> np.ndarray:
    """Resize tiles (each (h, w, 3) uint8) to tile_size squares and lay them out in a grid."""
    rows = -(-len(tiles) // columns)
    sheet = np.zeros((rows * tile_size, columns * tile_size, 3), dtype=np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, columns)
        sheet[r * tile_size:(r + 1) * tile_size, c * tile_size:(c + 1) * tile_size] = cv2.resize(
            tile, (tile_size, tile_size), interpolation=cv2.INTER_AREA)
    return sheet


def save_png(path, image: np.ndarray) -> None:
    """Write an RGB uint8 image as PNG, atomically."""
    with atomic_write(path) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
            raise OSError(f"{path}: cannot write PNG")
