"""2D similarity warps between the full image and a crop, in continuous pixel coordinates.

A warp is a (..., 2, 3) matrix M mapping a point p (..., 2) to q = M[:, :2] p + M[:, 2]. Both
sides use the project's continuous coordinates (array pixel i has its centre at i + 0.5).
OpenCV's warpAffine puts pixel centres at integers: `to_opencv` shifts by half a pixel.

Frontalization: `frontal_warp` fits a crop so that the eye line is horizontal (roll 0) and the
landmarks match a frontal reference shape in the least-squares sense (scale and shift only,
the rotation being fixed by the eye line). Eyes follow the iBUG-68 order: 36-41 are the
subject's right eye (image left in a frontal view), 42-47 the left eye.
"""
from __future__ import annotations

import cv2
import numpy as np

RIGHT_EYE = slice(36, 42)
LEFT_EYE = slice(42, 48)
MIN_CORRELATION = 0.5    # the least the layout's correlation with the reference counts in a crop's scale


class DegenerateLandmarks(ValueError):
    """Landmarks that no crop warp fits (coincident or non-finite points, a failed PnP)."""


def similarity(angle: np.ndarray, scale: np.ndarray, src_centre: np.ndarray,
               dst_centre: np.ndarray) -> np.ndarray:
    """Warps (..., 2, 3): rotate by `angle` (radians, counter-clockwise on screen, image y down)
    and scale about `src_centre` (..., 2), which lands on `dst_centre` (..., 2)."""
    angle = np.asarray(angle, dtype=np.float64)
    scale = np.asarray(scale, dtype=np.float64)
    cos, sin = scale * np.cos(angle), scale * np.sin(angle)
    linear = np.stack([np.stack([cos, sin], -1), np.stack([-sin, cos], -1)], -2)
    shift = np.asarray(dst_centre, dtype=np.float64) - np.einsum(
        "...ij,...j->...i", linear, np.asarray(src_centre, dtype=np.float64))
    return np.concatenate([linear, shift[..., None]], axis=-1)


def apply_warp(warps: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map points (..., L, 2) through warps (..., 2, 3) -> (..., L, 2)."""
    warps = np.asarray(warps, dtype=np.float64)
    points = np.asarray(points, dtype=np.float64)
    return points @ np.swapaxes(warps[..., :2], -1, -2) + warps[..., None, :, 2]


def invert_warp(warps: np.ndarray) -> np.ndarray:
    """Inverse affine maps (..., 2, 3)."""
    warps = np.asarray(warps, dtype=np.float64)
    linear_inv = np.linalg.inv(warps[..., :2])
    shift = -np.einsum("...ij,...j->...i", linear_inv, warps[..., 2])
    return np.concatenate([linear_inv, shift[..., None]], axis=-1)


def compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The warp (..., 2, 3) that applies `inner` first, then `outer`."""
    outer = np.asarray(outer, dtype=np.float64)
    inner = np.asarray(inner, dtype=np.float64)
    linear = outer[..., :2] @ inner[..., :2]
    shift = np.einsum("...ij,...j->...i", outer[..., :2], inner[..., 2]) + outer[..., 2]
    return np.concatenate([linear, shift[..., None]], axis=-1)


def to_opencv(warp: np.ndarray) -> np.ndarray:
    """A continuous-coordinate warp (2, 3) -> the matrix cv2.warpAffine expects (centres at
    integers): q - 1/2 = A (p + 1/2) + b - 1/2."""
    warp = np.asarray(warp, dtype=np.float64)
    out = warp.copy()
    out[:, 2] = warp[:, 2] + warp[:, :2] @ np.array([0.5, 0.5]) - 0.5
    return out


MIN_SHRUNK_SCALE = 2.0 ** -31       # a smaller scale's factor overflows: a degenerate warp


def area_shrink(warp: np.ndarray) -> tuple[int, np.ndarray] | None:
    """The anti-alias pre-shrink of a warp (2, 3) (full -> crop): None when its scale is at least
    0.5; else the integer factor k = int(1 / scale) and the warp from the image shrunk k times
    (`area_shrinks` of one warp)."""
    factors, sources = area_shrinks(np.asarray(warp)[None])
    return None if factors[0] == 0 else (int(factors[0]), sources[0])


def area_shrinks(warps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The anti-alias pre-shrinks of warps (B, 2, 3) (full -> crop) -> the integer factors (B,)
    (k = int(1 / scale) where the warp's scale is below 0.5; 0, not shrunk, where it is at least
    0.5, below MIN_SHRUNK_SCALE or not finite) and the warps (B, 2, 3) from the images shrunk k
    times (the warp itself where k is 0).
    `area_downscale`'s pixel j of the shrunk image covers full-image pixels [j k, (j + 1) k), so
    continuous coordinates scale by exactly k. warp_image and stages/face/warp_torch.py share it."""
    warps = np.asarray(warps, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        scale = np.sqrt(np.abs(np.linalg.det(warps[..., :2])))
    shrunk = (scale < 0.5) & (scale > MIN_SHRUNK_SCALE)      # (a NaN or degenerate warp is not shrunk)
    factors = np.zeros(scale.shape, dtype=np.int64)
    factors[shrunk] = (1.0 / scale[shrunk]).astype(np.int64)
    sources = warps.copy()
    sources[shrunk, :, :2] *= factors[shrunk, None, None]
    return factors, sources


def shrunk_size(width: int, height: int, factor: int) -> tuple[int, int]:
    """(width, height) px of a width x height image shrunk `factor` times by `area_downscale`."""
    return -(-width // factor), -(-height // factor)


def area_downscale(image: np.ndarray, factor: int) -> np.ndarray:
    """image (H, W, C) or (H, W) -> (ceil(H / k), ceil(W / k), ...): the mean of each k x k block
    (k = factor), the image padded with black (the warps' border) on the right and bottom to
    multiples of k. cv2.resize's INTER_AREA at an exact integer factor: 3x faster than at the
    nearest non-integer one (800 -> 267 px: 0.9 against 2.6 ms)."""
    height, width = image.shape[:2]
    small = shrunk_size(width, height, factor)
    pad_x, pad_y = small[0] * factor - width, small[1] * factor - height
    if pad_x or pad_y:
        image = cv2.copyMakeBorder(image, 0, pad_y, 0, pad_x, cv2.BORDER_CONSTANT, value=0)
    return cv2.resize(image, small, interpolation=cv2.INTER_AREA)


def warp_image(image: np.ndarray, warp: np.ndarray, size: int,
               interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """Resample `image` (H, W, C) into a (size, size, C) crop through `warp` (full -> crop).

    Pixels outside the image are black. When the warp shrinks by more than 2x, the image is
    pre-smoothed first to avoid aliasing: shrunk by the integer factor of `area_shrink`.
    """
    shrink = area_shrink(warp)
    if shrink is not None:
        factor, warp = shrink
        image = area_downscale(image, factor)
    return cv2.warpAffine(image, to_opencv(warp), (size, size), flags=interpolation,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def eye_centres(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """iBUG-68 landmarks (..., 68, 2) -> (right eye centre, left eye centre), each (..., 2)."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    return landmarks[..., RIGHT_EYE, :].mean(-2), landmarks[..., LEFT_EYE, :].mean(-2)


def eye_line_angle(landmarks: np.ndarray) -> np.ndarray:
    """Angle (...,) in radians of the line from the right to the left eye centre, measured
    from the image x axis (positive when the left eye is lower on screen, image y down)."""
    right, left = eye_centres(landmarks)
    delta = left - right
    return np.arctan2(delta[..., 1], delta[..., 0])


def fit_similarity(landmarks: np.ndarray, reference: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Similarity warps (..., 2, 3) with a fixed rotation `angle` (...,) (radians, as in
    `similarity`) that map landmarks (..., L, 2) onto reference (L, 2): centroid onto centroid,
    at the least-squares scale, which is the ratio of the reference's RMS spread to theirs times
    the correlation of the two layouts, counted at least MIN_CORRELATION. Faces near the
    reference's frontal layout have correlations near 1 (0.71-1.00 on the demo's detections);
    near-profile, strongly pitched faces fall toward 0 or below, where the least-squares scale
    would shrink the face to nothing in the crop or mirror it. Raises DegenerateLandmarks for
    coincident or non-finite landmarks."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    angle = np.broadcast_to(np.asarray(angle, dtype=np.float64), landmarks.shape[:-2])
    origin = np.zeros(landmarks.shape[:-2] + (2,))
    rotated = apply_warp(similarity(angle, np.ones(angle.shape), origin, origin), landmarks)
    centred = rotated - rotated.mean(-2, keepdims=True)
    ref_mean = reference.mean(0)
    ref_centred = reference - ref_mean
    with np.errstate(divide="ignore", invalid="ignore"):
        squares = (centred ** 2).sum((-1, -2))
        least_squares = (centred * ref_centred).sum((-1, -2)) / squares
        floor = MIN_CORRELATION * np.sqrt((ref_centred ** 2).sum() / squares)
    coincident = np.ptp(landmarks, axis=-2).max(-1) == 0
    if np.any(coincident) or np.any(~np.isfinite(least_squares)) or np.any(~np.isfinite(floor)):
        raise DegenerateLandmarks("degenerate landmarks: coincident or not finite, no similarity fits them")
    scale = np.maximum(least_squares, floor)
    return similarity(angle, scale, landmarks.mean(-2), np.broadcast_to(ref_mean, landmarks.shape[:-2] + (2,)))


def frontal_warp(landmarks: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Similarity warps (..., 2, 3) full image -> crop with the eye line horizontal.

    landmarks: (..., L, 2) full-image px (iBUG order); reference: (L, 2) the frontal reference
    shape in crop px (already scaled and placed with the margin). The rotation undoes the
    eye-line angle; scale and shift are fit_similarity's.
    """
    return fit_similarity(landmarks, reference, eye_line_angle(landmarks))


def rotation_angle(warps: np.ndarray) -> np.ndarray:
    """The rotation angle (...,) in radians of similarity warps (..., 2, 3), as in `similarity`."""
    warps = np.asarray(warps, dtype=np.float64)
    return np.arctan2(warps[..., 0, 1], warps[..., 0, 0])
