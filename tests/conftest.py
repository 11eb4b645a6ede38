"""Shared fixtures: the challenge's camera, and realistic random poses and face-sized points."""
import numpy as np
import pytest

from stages.wcpa.camera import Camera, rt_from_euler

CHALLENGE_PROJ = np.array([[1.57443701, 0, 0, 0], [0, 1.57443701, 0, 0],
                           [0, 0, -0.99999976, -1], [0, 0, -0.001, 0]])


@pytest.fixture
def camera() -> Camera:
    return Camera(CHALLENGE_PROJ, 800, 800)


def random_poses(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 4, 4) R_t drawn from the statistics of the challenge's training labels."""
    ypr = rng.normal([-0.018, -0.018, 0.025], [0.272, 0.314, 0.082], size=(n, 3))
    t = rng.normal([-0.0054, 0.0012, -0.532], [0.0222, 0.0488, 0.065], size=(n, 3))
    return rt_from_euler(ypr, t)


def face_points(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 3) points on a face-sized half ellipsoid (metres, +z towards the viewer)."""
    direction = rng.normal(size=(n, 3))
    direction[:, 2] = np.abs(direction[:, 2])
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    return direction * np.array([0.078, 0.092, 0.048])


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end tests that run dvc repro (minutes)")
