"""Random PnP problems shaped like the challenge's: face-sized points, poses from the label
statistics (tests.conftest), the challenge camera, OpenCV frame, optional pixel noise."""
from __future__ import annotations

import numpy as np

from stages.wcpa.camera import Camera, rt_to_opencv
from tests.conftest import CHALLENGE_PROJ, face_points, random_poses


def challenge_camera() -> Camera:
    """The data's camera: 800 x 800, f = 629.77 px."""
    return Camera(CHALLENGE_PROJ, 800, 800)


def project_opencv(x3d: np.ndarray, R: np.ndarray, t: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pixels (B, N, 2) of points x3d (B, N, 3) under OpenCV poses R (B, 3, 3), t (B, 3)."""
    X = x3d @ np.swapaxes(R, 1, 2) + t[:, None]
    return np.stack([K[0, 0] * X[..., 0] / X[..., 2] + K[0, 2],
                     K[1, 1] * X[..., 1] / X[..., 2] + K[1, 2]], -1)


def make_problems(rng: np.random.Generator, batch: int, n_points: int, noise_px: float = 0.0,
                  sigma: np.ndarray | None = None, depth: float = 1.0) -> dict:
    """x3d (B, N, 3) m, x2d (B, N, 2) px, true OpenCV R (B, 3, 3), t (B, 3), K (3, 3), R_t.

    Noise: gaussian with std noise_px, or with per-coordinate std sigma (B, N, 2) when given.
    depth scales the points' depth (object z): 1 the face-sized half ellipsoid, 0 a planar
    face-sized ellipse (about 0.5 m from the camera either way)."""
    camera = challenge_camera()
    R_t = random_poses(rng, batch)
    R, t = rt_to_opencv(R_t)
    x3d = np.stack([face_points(rng, n_points) for _ in range(batch)]) * np.array([1, 1, depth])
    x2d = project_opencv(x3d, R, t, camera.K)
    std = noise_px if sigma is None else sigma
    x2d = x2d + std * rng.normal(size=x2d.shape)
    return dict(x3d=x3d, x2d=x2d, R=R, t=t, K=camera.K, R_t=R_t, camera=camera)


def rotation_error_rad(R_a: np.ndarray, R_b: np.ndarray) -> np.ndarray:
    """Geodesic angle (B,) between rotations, accurate near 0 (from the antisymmetric part)."""
    rel = np.swapaxes(R_a, -1, -2) @ R_b
    axis_sin = np.stack([rel[..., 2, 1] - rel[..., 1, 2], rel[..., 0, 2] - rel[..., 2, 0],
                         rel[..., 1, 0] - rel[..., 0, 1]], -1) / 2
    cos = (np.trace(rel, axis1=-2, axis2=-1) - 1) / 2
    return np.arctan2(np.linalg.norm(axis_sin, axis=-1), cos)
