"""The crop warp of stages/face/warp.py (`warp_image`) in torch, for a batch on any device: the
crop stage's torch path (crop.decode), which decodes and warps on the GPU.

`warp_images` reproduces warp_image's OpenCV convention: the warp maps continuous full-image
coordinates (pixel i has its centre at i + 0.5) to continuous crop coordinates, which are
grid_sample's with align_corners=False (the grid of F.affine_grid, computed elementwise:
`sampling_grid`); bilinear, pixels outside the image black (zeros padding, each of the four
taps on its own, as BORDER_CONSTANT 0), results rounded to the nearest grey
level (half up, as OpenCV's fixed-point rounding). The anti-alias pre-shrink follows the same
rule (stages.face.warp.area_shrink: an integer factor k = int(1 / scale) when the warp's scale
is below 0.5; the image padded with black to multiples of k and each k x k block averaged, as
stages.face.warp.area_downscale does with cv2.resize's INTER_AREA).

What is left differs only by arithmetic (OpenCV: positions and weights in fixed point, float32
sums; here float32 sampling): crops within 1 grey level of warp_image, at most 0.19 % of the
values off by 1 without the pre-shrink and 0.38 % with it (tests/unit/test_warp_torch.py).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from stages.common.device import host_to_device
from stages.face.warp import area_shrinks, compose, invert_warp, shrunk_size


def grid_theta(warps: np.ndarray, width: int, height: int, size: int) -> np.ndarray:
    """affine_grid's theta (B, 2, 3) (float64) of warps (B, 2, 3) full -> crop px from a
    width x height image into size x size crops: it maps the crop's normalized coordinates
    (align_corners=False: -1 and 1 are the outer edges) to the image's normalized coordinates,
    through the inverse warp in continuous pixel coordinates."""
    from_crop = np.array([[size / 2, 0.0, size / 2], [0.0, size / 2, size / 2]])
    to_image = np.array([[2.0 / width, 0.0, -1.0], [0.0, 2.0 / height, -1.0]])
    return compose(to_image, compose(invert_warp(warps), from_crop))


def sampling_grid(theta: torch.Tensor, size: int) -> torch.Tensor:
    """F.affine_grid(theta, (n, C, size, size), align_corners=False) computed elementwise: (n, size,
    size, 2) float32. affine_grid is a batched matrix product, which CUDA runs in TF32 (10-bit
    mantissa: up to 0.4 px off at 800 px) where torch.backends.cuda.matmul.allow_tf32 or
    NVIDIA_TF32_OVERRIDE ask for it; products and sums of single numbers never do."""
    line = (torch.arange(size, device=theta.device, dtype=torch.float32) * 2 + 1) / size - 1
    x, y = line[None, None, :], line[None, :, None]
    coeff = theta[..., None, None]                     # (n, 2, 3, 1, 1)
    grid = coeff[:, :, 0] * x + coeff[:, :, 1] * y + coeff[:, :, 2]
    return grid.permute(0, 2, 3, 1)


def round_half_up(values: torch.Tensor) -> torch.Tensor:
    """float grey levels rounded half up (OpenCV's fixed-point rounding) and clipped to 0-255, in place."""
    return values.add_(0.5).floor_().clamp_(0, 255)


def area_resize(images: torch.Tensor, factor: int) -> torch.Tensor:
    """uint8 (n, C, H, W) -> float32 (n, C, ceil(H / k), ceil(W / k)) with k = factor: as
    stages.face.warp.area_downscale, padded with black to multiples of k, the mean of each k x k
    block rounded half up to a whole grey level (exact in float32: sums below 2^24, and a mean
    within 1 / k^2 of a half is at least that far from it)."""
    height, width = images.shape[-2:]
    small = shrunk_size(width, height, factor)
    padded = F.pad(images.float(), (0, small[0] * factor - width, 0, small[1] * factor - height))
    return round_half_up(F.avg_pool2d(padded, factor))


def _warp_group(images: torch.Tensor, theta: torch.Tensor, size: int, factor: int) -> torch.Tensor:
    """uint8 (n, C, H, W) images, the affine_grid thetas (n, 2, 3) float32 on their device of
    their warps from the images shrunk `factor` times (0: not shrunk) -> uint8 (n, size, size, C)."""
    source = images.float() if factor == 0 else area_resize(images, factor)
    crops = F.grid_sample(source, sampling_grid(theta, size), mode="bilinear", padding_mode="zeros",
                          align_corners=False)
    return round_half_up(crops).to(torch.uint8).permute(0, 2, 3, 1)


def warp_images(images: torch.Tensor, warps: np.ndarray, size: int, piece: int = 32) -> torch.Tensor:
    """Resample uint8 images (B, C, H, W) on any device into uint8 crops (B, size, size, C) on the
    same device through warps (B, 2, 3) (numpy, full -> crop in continuous px): warp_image of
    each image, batched. The images are resampled `piece` at a time, grouped by their pre-shrink
    (the float copies of a piece are the only extra memory). The rows' order and the thetas go to
    the device in one copy each, from pinned memory: the host queues every piece without waiting
    for the GPU."""
    warps = np.asarray(warps, dtype=np.float64)
    if warps.shape != (len(images), 2, 3):
        raise ValueError(f"warps of shape {warps.shape} for {len(images)} images")
    out = torch.empty((len(images), size, size, images.shape[1]), dtype=torch.uint8, device=images.device)
    factors, sources = area_shrinks(warps)
    order = np.argsort(factors, kind="stable")
    theta = np.empty_like(warps)
    height, width = images.shape[-2:]
    for factor in np.unique(factors):
        rows = factors == factor
        small = (width, height) if factor == 0 else shrunk_size(width, height, int(factor))
        theta[rows] = grid_theta(sources[rows], *small, size)
    index = host_to_device(torch.from_numpy(order), images.device)
    theta = host_to_device(torch.from_numpy(theta[order]).float(), images.device)
    bounds = np.flatnonzero(np.diff(factors[order])) + 1
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(order)]):
        for start in range(lo, hi, piece):
            rows = slice(start, min(start + piece, hi))
            out[index[rows]] = _warp_group(images[index[rows]], theta[rows], size, int(factors[order[start]]))
    return out
