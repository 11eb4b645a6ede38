"""Random textured backgrounds (uint8 RGB): smooth colour noise, gradients and blurred shapes."""
from __future__ import annotations

import cv2
import numpy as np


def smooth_noise(rng: np.random.Generator, size: int, cells: int, amplitude: float) -> np.ndarray:
    """(size, size, 3) float32 colour noise: a cells x cells random grid upsampled bicubically."""
    grid = rng.uniform(-amplitude, amplitude, (cells, cells, 3)).astype(np.float32)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)


def gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float32 linear blend between two random colours along a random direction."""
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    t = np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None] + 0.5
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    return (a + t[..., None] * (b - a)).astype(np.float32)


def shapes(rng: np.random.Generator, image: np.ndarray, count: int) -> np.ndarray:
    """Draw `count` random filled rectangles, circles and thick lines on a uint8 image."""
    size = image.shape[0]
    out = image.copy()
    for _ in range(count):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = rng.integers(3)
        a = tuple(int(v) for v in rng.integers(-size // 4, size + size // 4, 2))
        if kind == 0:
            b = tuple(int(v) for v in rng.integers(-size // 4, size + size // 4, 2))
            cv2.rectangle(out, a, b, color, -1)
        elif kind == 1:
            cv2.circle(out, a, int(rng.integers(size // 20, size // 3)), color, -1, cv2.LINE_AA)
        else:
            b = tuple(int(v) for v in rng.integers(-size // 4, size + size // 4, 2))
            cv2.line(out, a, b, color, int(rng.integers(2, size // 25)), cv2.LINE_AA)
    return out


def random_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A (size, size, 3) uint8 RGB background: gradient or flat colour + smooth noise + shapes.

    Built at a quarter of the resolution (everything in it is smooth) and upsampled, plus a
    fine texture."""
    low = max(size // 4, 8)
    if rng.random() < 0.5:
        base = gradient(rng, low)
    else:
        base = np.full((low, low, 3), rng.uniform(20, 235, 3), dtype=np.float32)
    base += smooth_noise(rng, low, int(rng.integers(3, 12)), rng.uniform(10, 60))
    image = np.clip(base, 0, 255).astype(np.uint8)
    if rng.random() < 0.7:
        image = shapes(rng, image, int(rng.integers(2, 10)))
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.3, 1.5))
    image = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    texture = smooth_noise(rng, size // 2, size // 8, rng.uniform(2, 10))
    texture = cv2.resize(texture, (size, size), interpolation=cv2.INTER_LINEAR)
    texture += image                    # float32, in place: the bits of image + texture
    return np.clip(texture, 0, 255, out=texture).astype(np.uint8)
