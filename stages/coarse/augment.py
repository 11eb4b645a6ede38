"""Training augmentation of the detector, drawn per sample from a seeded generator.

Geometry is a warp, composed with the view's warp so that the full image is resampled once
(stages/coarse/sources.py): the random affine of albumentations' A.Affine (independent x and
y scales uniform in [1/scale, scale], a rotation uniform in [-rotate, rotate] degrees, both about
the centre of a source view `source` px wide, then a shift of int(u * source) px with u uniform in
[-shift, shift] along each axis), a centre crop of the input (size px) out of the source, and a
horizontal flip with probability flip_prob (landmarks mirrored and re-ordered by the landmark
flip order). For the refine pass the source is the view SOURCE_FIELD times wider than the input
(at the input's density), for locate the input itself: the distributions of the former
albumentations pipeline (Affine + CenterCrop + HorizontalFlip on a pre-cut source view).
Then the photometric augmentation at the input size: colour jitter, grey, blur, noise, JPEG.
"""
from __future__ import annotations

from dataclasses import dataclass

import albumentations as A
import numpy as np


@dataclass(frozen=True)
class Jitter:
    """Random geometry: shift (fraction of the source view), scale (max factor), rotate (degrees)."""

    shift: float
    scale: float
    rotate: float


def color_transforms() -> list[A.BasicTransform]:
    """Photometric augmentation shared by both passes."""
    return [
        A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.03, p=0.8),
        A.ToGray(p=0.05),
        A.GaussianBlur(blur_limit=(3, 5), p=0.2),
        A.GaussNoise(std_range=(0.01, 0.04), p=0.2),
        A.ImageCompression(quality_range=(40, 95), p=0.3),
    ]


def jitter_warp(rng: np.random.Generator, jitter: Jitter, source: int, size: int) -> np.ndarray:
    """A random (2, 3) warp, source view (source px) -> input (size px), continuous coordinates:
    scale and rotate about the source centre, shift, then crop the centre `size` px."""
    sx, sy = rng.uniform(1 / jitter.scale, jitter.scale, 2)
    angle = np.deg2rad(rng.uniform(-jitter.rotate, jitter.rotate))
    shift = np.trunc(rng.uniform(-jitter.shift, jitter.shift, 2) * source)
    cos, sin = np.cos(angle), np.sin(angle)
    linear = np.array([[cos, sin], [-sin, cos]]) @ np.diag([sx, sy])
    centre = np.array([source / 2, source / 2])
    crop = (source - size) / 2          # the source's centre lands on the input's, odd sizes too
    return np.concatenate([linear, (centre + shift - crop - linear @ centre)[:, None]], axis=1)


def flip_warp(size: int) -> np.ndarray:
    """(2, 3) horizontal mirror of a `size` px wide input (x -> size - x)."""
    return np.array([[-1.0, 0.0, size], [0.0, 1.0, 0.0]])


class Photometric:
    """Colour augmentation of an input (S, S, 3) uint8, reseeded per call (worker-independent)."""

    def __init__(self):
        self.color = A.Compose(color_transforms())

    def __call__(self, image: np.ndarray, seed: int) -> np.ndarray:
        self.color.set_random_seed(seed)
        return self.color(image=image)["image"]
