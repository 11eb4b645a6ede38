"""What each pass of the detector sees: warps from the full image to the network input.

locate: the whole image, downscaled and centred into a square input.
refine: an axis-aligned square around the landmarks' bounding box, its side `margin` times
the box's longer side.
"""
from __future__ import annotations

import numpy as np

from stages.face.warp import similarity


def locate_warp(width: int, height: int, size: int) -> np.ndarray:
    """(2, 3) full image (width x height px) -> the locate input (size x size)."""
    scale = size / max(width, height)
    return similarity(0.0, scale, np.array([width / 2, height / 2]), np.array([size / 2, size / 2]))


def landmark_box(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Landmarks (..., L, 2) -> bounding box centre (..., 2) and longer side (...,) in px."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    low, high = landmarks.min(-2), landmarks.max(-2)
    return (low + high) / 2, (high - low).max(-1)


def landmark_shift(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """How far landmarks moved from before to after (..., L, 2) px: the points' median distance
    over after's box side (landmark_box), (...,); inf where that side is 0."""
    moved = np.median(np.linalg.norm(np.asarray(after, np.float64) - before, axis=-1), axis=-1)
    _, side = landmark_box(after)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(side > 0, moved / side, np.inf)


def refine_warp(landmarks: np.ndarray, size: int, margin: float) -> np.ndarray:
    """Landmarks (..., L, 2) full px -> warps (..., 2, 3) full image -> refine input."""
    centre, side = landmark_box(landmarks)
    side = np.maximum(side, 1e-6)
    return similarity(np.zeros(side.shape), size / (margin * side), centre,
                      np.broadcast_to(np.array([size / 2, size / 2]), centre.shape))
