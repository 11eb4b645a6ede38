"""Colour jitter of a whole batch on the training device, one affine colour map per image.

The four ColorJitter operations are affine maps of a pixel's RGB vector x (0-255), brightness,
contrast and saturation as torchvision and albumentations define them:
  brightness b:  x -> b x
  contrast c:    x -> c x + (1 - c) g,   g the image's mean grey level (grey = GREY . rgb)
  saturation s:  x -> s x + (1 - s) (GREY . x) (1, 1, 1)
  hue h:         x -> rotation of x by 2 pi h about the grey axis (1, 1, 1): a hue turn in the
                 same direction as theirs, which shift H in HSV and are not affine (at h = 0.05
                 (200, 80, 40) becomes (188, 110, 22) here, (200, 128, 40) in torchvision)
so any order of them is one affine map per image, composed here as (B, 3, 4) matrices from the
image's mean colour (which each map moves affinely: the contrast step's g is exact) and applied
in one batched product; the result is clipped to [0, 255] once, at the end (the libraries clip
after every step, which differs only where a step saturates). Per image this costs a 3x4 map
instead of four full-image passes through a per-image library call (README "Training").

`draw_jitter` draws the parameters on the CPU (numpy, reproducible per batch); `jitter_images`
applies them on the device.
"""
from __future__ import annotations

import math

import numpy as np
import torch

GREY = (0.299, 0.587, 0.114)      # ITU-R 601 luma weights, as torchvision's rgb_to_grayscale
OPERATIONS = 4                    # brightness, contrast, saturation, hue


def draw_jitter(rng: np.random.Generator, count: int, strength: float) -> np.ndarray:
    """Random jitter parameters (count, 8) float32: brightness, contrast and saturation factors in
    [max(0, 1 - strength), 1 + strength], hue shift in [-strength / 4, strength / 4] turns, then the
    order in which the four operations are applied (a permutation of 0-3 per row).
    strength 0: the identity (factors 1, hue 0)."""
    low = max(0.0, 1.0 - strength)
    factors = rng.uniform(low, 1.0 + strength, (count, 3))
    hue = rng.uniform(-strength / 4, strength / 4, (count, 1))
    order = np.argsort(rng.random((count, OPERATIONS)), axis=1)
    return np.concatenate([factors, hue, order], axis=1).astype(np.float32)


def _hue_rotations(turns: torch.Tensor) -> torch.Tensor:
    """Rotations (B, 3, 3) by 2 pi * turns (B,) about the unit grey axis (Rodrigues' formula)."""
    angle = 2 * math.pi * turns
    n = torch.full((3,), 1 / math.sqrt(3), dtype=turns.dtype, device=turns.device)
    cross = torch.tensor([[0, -1, 1], [1, 0, -1], [-1, 1, 0]], dtype=turns.dtype, device=turns.device) / math.sqrt(3)
    eye = torch.eye(3, dtype=turns.dtype, device=turns.device)
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    return cos * eye + sin * cross + (1 - cos) * torch.outer(n, n)


def _linear_parts(jitter: torch.Tensor) -> torch.Tensor:
    """The linear parts (B, 4, 3, 3) of brightness, contrast, saturation and hue (OPERATIONS order)."""
    count, dtype, device = len(jitter), jitter.dtype, jitter.device
    eye = torch.eye(3, dtype=dtype, device=device).expand(count, 3, 3)
    grey_rows = torch.tensor(GREY, dtype=dtype, device=device).expand(3, 3)
    b, c, s = (jitter[:, k, None, None] for k in range(3))
    return torch.stack([b * eye, c * eye, s * eye + (1 - s) * grey_rows, _hue_rotations(jitter[:, 3])], dim=1)


def color_maps(jitter: torch.Tensor, mean_rgb: torch.Tensor) -> torch.Tensor:
    """The composed affine colour map (B, 3, 4) of each image: x -> M[:, :3] x + M[:, 3].

    jitter: (B, 8) from draw_jitter; mean_rgb: (B, 3) the images' mean colour (0-255). Only the
    contrast step has a shift, (1 - c) g (1, 1, 1), with g the mean grey level when it is applied."""
    count = len(jitter)
    order = jitter[:, OPERATIONS:].long()
    steps = _linear_parts(jitter)[torch.arange(count, device=jitter.device)[:, None], order]   # (B, 4, 3, 3)
    grey = torch.tensor(GREY, dtype=jitter.dtype, device=jitter.device)
    contrast_shift = 1 - jitter[:, 1:2]                                                         # (B, 1)
    linear = torch.eye(3, dtype=jitter.dtype, device=jitter.device).repeat(count, 1, 1)
    shift = torch.zeros(count, 3, dtype=jitter.dtype, device=jitter.device)
    mean = mean_rgb.to(jitter.dtype)
    for k in range(OPERATIONS):
        step_shift = torch.where(order[:, k:k + 1] == 1, contrast_shift * (mean @ grey)[:, None], 0.0)
        linear = steps[:, k] @ linear
        shift_mean = (steps[:, k] @ torch.stack([shift, mean], dim=2)) + step_shift[..., None]
        shift, mean = shift_mean.unbind(dim=2)
    return torch.cat([linear, shift[..., None]], dim=2)


@torch.no_grad()
def jitter_images(images: torch.Tensor, jitter: torch.Tensor) -> torch.Tensor:
    """Colour-jittered images (B, 3, H, W) float32 in [0, 255] from images (B, 3, H, W) uint8 or
    float (0-255) and parameters (B, 8) from draw_jitter, on the images' device."""
    x = images.float()
    maps = color_maps(jitter.to(x.device, torch.float32), x.mean(dim=(2, 3)))
    out = torch.baddbmm(maps[:, :, 3:], maps[:, :, :3], x.flatten(2))
    return out.clamp_(0.0, 255.0).view_as(x)
