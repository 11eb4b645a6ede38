"""Similarity warps: no shear, frontalization, round trip and the half-pixel convention."""
import cv2
import numpy as np
import pytest

from stages.face.warp import (apply_warp, compose, eye_line_angle, frontal_warp, invert_warp,
                              rotation_angle, similarity, to_opencv, warp_image)


def _reference(rng) -> np.ndarray:
    """A face-like 68-point shape with a horizontal eye line (crop px)."""
    points = rng.uniform(20, 108, size=(68, 2))
    points[36:42] = [[40 + 3 * k, 50 + (k % 2)] for k in range(6)]
    points[42:48] = [[74 + 3 * k, 50 + (k % 2)] for k in range(6)]
    return points


def test_similarity_has_no_shear_and_positive_scale():
    warp = similarity(0.7, 1.9, np.array([10.0, 20.0]), np.array([64.0, 64.0]))
    linear = warp[:, :2]
    assert np.allclose(linear @ linear.T, 1.9 ** 2 * np.eye(2))
    assert np.linalg.det(linear) > 0
    assert np.allclose(apply_warp(warp, np.array([[10.0, 20.0]])), [[64.0, 64.0]])


def test_frontal_warp_levels_eye_line_and_recovers_exact_similarity():
    rng = np.random.default_rng(0)
    reference = _reference(rng)
    to_full = similarity(np.array([0.3, -0.5]), np.array([0.4, 2.5]),
                         np.array([[64.0, 64.0], [64.0, 64.0]]), np.array([[400.0, 380.0], [300.0, 500.0]]))
    landmarks = apply_warp(to_full, reference)
    warps = frontal_warp(landmarks, reference)
    in_crop = apply_warp(warps, landmarks)
    assert np.allclose(eye_line_angle(in_crop), 0.0, atol=1e-9)
    assert np.allclose(rotation_angle(warps), [-0.3, 0.5])
    assert np.allclose(in_crop, reference, atol=1e-6)
    linear = warps[:, :, :2]
    assert np.allclose(linear @ np.swapaxes(linear, 1, 2),
                       np.linalg.det(linear)[:, None, None] * np.eye(2))


def test_frontal_warp_rejects_degenerate_landmarks():
    reference = _reference(np.random.default_rng(1))
    with pytest.raises(ValueError, match="degenerate"):
        frontal_warp(np.full((68, 2), 300.0), reference)


def test_round_trip_crop_to_full_to_crop():
    rng = np.random.default_rng(2)
    warps = similarity(rng.uniform(-1, 1, 8), rng.uniform(0.1, 0.7, 8),
                       rng.uniform(100, 700, (8, 2)), np.full((8, 2), 64.0))
    crop_points = rng.uniform(0, 128, size=(8, 1220, 2))
    back = apply_warp(warps, apply_warp(invert_warp(warps), crop_points))
    assert np.abs(back - crop_points).max() < 1e-3


def test_compose_applies_inner_first():
    rng = np.random.default_rng(3)
    inner = similarity(0.2, 1.5, np.array([1.0, 2.0]), np.array([5.0, 6.0]))
    outer = similarity(-0.9, 0.5, np.array([7.0, 3.0]), np.array([0.0, 4.0]))
    points = rng.normal(size=(5, 2))
    assert np.allclose(apply_warp(compose(outer, inner), points), apply_warp(outer, apply_warp(inner, points)))


def _bright_pixel(shape, row, col) -> np.ndarray:
    image = np.zeros(shape + (3,), dtype=np.uint8)
    image[row, col] = 255
    return image


def _centroid(image: np.ndarray) -> np.ndarray:
    """Intensity centroid in continuous coordinates (x, y)."""
    weight = image[..., 0].astype(np.float64)
    rows, cols = np.indices(weight.shape)
    return np.array([((cols + 0.5) * weight).sum(), ((rows + 0.5) * weight).sum()]) / weight.sum()


@pytest.mark.parametrize("angle,scale,target", [(0.0, 1.0, (20.0, 11.0)), (np.pi / 2, 2.0, (32.0, 32.0)),
                                               (0.0, 0.25, (16.0, 16.0))])
def test_half_pixel_convention_bright_pixel_lands_where_the_warp_says(angle, scale, target):
    row, col = 13, 7
    image = _bright_pixel((64, 64), row, col)
    if scale < 1:   # shrinking: a 4x4 block, so that the area pre-smoothing keeps it visible
        image = np.zeros((64, 64, 3), dtype=np.uint8)
        image[12:16, 8:12] = 255
        centre = np.array([10.0, 14.0])
    else:
        centre = np.array([col + 0.5, row + 0.5])
    warp = similarity(angle, scale, np.array([10.0, 12.0]), np.array(target))
    out = warp_image(image, warp, 64)
    assert np.allclose(_centroid(out), apply_warp(warp, centre[None])[0], atol=1e-6 if scale >= 1 else 0.05)


def test_to_opencv_matches_cv2_transform_with_centre_at_integer():
    warp = similarity(0.4, 1.3, np.array([3.0, 4.0]), np.array([9.0, 1.0]))
    point = np.array([[5.25, 7.75]])
    ours = apply_warp(warp, point)
    theirs = cv2.transform((point - 0.5)[None], to_opencv(warp))[0] + 0.5
    assert np.allclose(ours, theirs)
