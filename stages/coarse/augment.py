"""Training augmentation of the detector (albumentations), landmarks kept consistent.

Geometry: a random affine (scale, shift, rotation) of a source view larger than the network
input, then a centre crop to the input size; horizontal flip with the landmarks mirrored and
re-ordered by the landmark flip order; colour jitter, blur, noise and JPEG artefacts.
albumentations puts pixel centres at integers, so landmarks are shifted by half a pixel at the
boundary (the project's pixel i has its centre at i + 0.5).
"""
from __future__ import annotations

from dataclasses import dataclass

import albumentations as A
import cv2
import numpy as np


@dataclass(frozen=True)
class Jitter:
    """Random geometry: shift (fraction of the input), scale (max factor), rotate (degrees)."""

    shift: float
    scale: float
    rotate: float


def colour_transforms() -> list[A.BasicTransform]:
    """Photometric augmentation shared by both passes."""
    return [
        A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.03, p=0.8),
        A.ToGray(p=0.05),
        A.GaussianBlur(blur_limit=(3, 5), p=0.2),
        A.GaussNoise(std_range=(0.01, 0.04), p=0.2),
        A.ImageCompression(quality_range=(40, 95), p=0.3),
    ]


class Augmenter:
    """Source view (S_src, S_src, 3) uint8 + landmarks (K, 2) px -> input (S, S, 3) + landmarks.

    flip_order: (K,) landmark mirror order, or None (then flip_prob must be 0); flip_prob:
    probability of a horizontal flip.
    """

    def __init__(self, size: int, jitter: Jitter, flip_order: np.ndarray | None, flip_prob: float, seed: int):
        if flip_order is None and flip_prob > 0:
            raise ValueError(f"flip_prob={flip_prob}: horizontal flips need a landmark flip order")
        keypoints = A.KeypointParams(format="xy", remove_invisible=False)
        self.geometry = A.Compose([
            A.Affine(scale=(1 / jitter.scale, jitter.scale), translate_percent=(-jitter.shift, jitter.shift),
                     rotate=(-jitter.rotate, jitter.rotate), border_mode=cv2.BORDER_CONSTANT, fill=0, p=1.0),
            A.CenterCrop(size, size),
        ], keypoint_params=keypoints, seed=seed)
        self.flip = A.Compose([A.HorizontalFlip(p=1.0)], keypoint_params=keypoints)
        self.colour = A.Compose(colour_transforms(), seed=seed + 1)
        self.flip_order = None if flip_order is None else np.asarray(flip_order)
        self.flip_prob = flip_prob
        self.rng = np.random.default_rng(seed + 2)

    def __call__(self, image: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.geometry(image=image, keypoints=np.asarray(landmarks) - 0.5)
        image, points = out["image"], np.asarray(out["keypoints"], dtype=np.float64)
        if self.rng.random() < self.flip_prob:
            out = self.flip(image=image, keypoints=points)
            image, points = out["image"], np.asarray(out["keypoints"], dtype=np.float64)[self.flip_order]
        return self.colour(image=image)["image"], points + 0.5
