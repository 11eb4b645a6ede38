"""The crop warp of stages/face/warp.py (`warp_image`) in torch, for a batch on any device: the
crop stage's torch path (crop.decode), which decodes and warps on the GPU.

`warp_images` reproduces warp_image's OpenCV convention: the warp maps continuous full-image
coordinates (pixel i has its centre at i + 0.5) to continuous crop coordinates, which are
grid_sample's with align_corners=False (the grid of F.affine_grid, computed elementwise:
`sampling_grid`); bilinear, pixels outside the image black (zeros padding, each of the four
taps on its own, as BORDER_CONSTANT 0), results rounded to the nearest grey
level (half up, as OpenCV's fixed-point rounding). The anti-alias pre-shrink follows the same
rule (stages.face.warp.area_shrink: an integer factor k = int(1 / scale) when the warp's scale
is below 0.5, the shrunk size rounded) and the same interpolation as cv2.resize's INTER_AREA,
also where the image side is not divisible by k: each shrunk pixel is the mean over its cell of
the image, a pixel the cell covers in part weighed by the covered fraction (from cumulative
sums in float64), rounded to uint8 like cv2.resize's result. (Plain adaptive average pooling,
torch's `area` interpolation, averages whole pixels of wider, overlapping cells instead: on
noise images up to 79 grey levels away from OpenCV where the side is not divisible.)

What is left differs only by arithmetic (OpenCV: positions and weights in fixed point, float32
sums; here float32 sampling): crops within 1 grey level of warp_image, at most 0.19 % of the
values off by 1 without the pre-shrink and 0.38 % with it (tests/unit/test_warp_torch.py).
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F

from stages.face.warp import area_shrink, compose, invert_warp


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


def _area_axis(values: torch.Tensor, out: int, dim: int) -> torch.Tensor:
    """OpenCV's INTER_AREA along axis `dim`, n -> out samples, in float64: output i is the mean of
    the input over its cell [i s, (i + 1) s), s = n / out, a pixel the cell covers in part weighed
    by the covered fraction. From the integral of the piecewise constant input, read at the cell
    edges e: the inclusive cumulative sum C at p = floor(e) (exact: int32 for uint8 input, else
    float64) less (1 - (e - p)) of pixel p."""
    n = values.shape[dim]
    scale = n / out
    edges = torch.arange(out + 1, dtype=torch.float64, device=values.device) * scale
    first = edges.floor().clamp(max=n - 1)
    index = first.long()
    sums = values.cumsum(dim, dtype=torch.float64 if values.is_floating_point() else torch.int32)
    shape = [1] * values.dim()
    shape[dim] = out + 1
    at_edges = sums.index_select(dim, index).double() + (edges - first - 1).view(shape) * values.index_select(dim, index)
    return (at_edges.narrow(dim, 1, out) - at_edges.narrow(dim, 0, out)) / scale


def area_resize(images: torch.Tensor, width: int, height: int, piece: int = 8) -> torch.Tensor:
    """uint8 (n, C, H, W) -> (n, C, height, width) shrunk as cv2.resize INTER_AREA does: each
    output pixel the mean over its cell, rounded half up to a whole grey level; float32. Sides
    divisible by the factor: the k x k block means of avg_pool2d (exact in float32: sums below
    2^24, and a mean within 1 / k^2 of a half is at least that far from it); others: _area_axis
    on rows, then columns, `piece` images at a time (their cumulative sums are the extra memory)."""
    rows, cols = images.shape[-2:]
    if rows % height == 0 and cols % width == 0:
        return round_half_up(F.avg_pool2d(images.float(), (rows // height, cols // width)))
    return torch.cat([round_half_up(_area_axis(_area_axis(part, height, -2), width, -1)).float()
                      for part in images.split(piece)])


def _warp_group(images: torch.Tensor, warps: np.ndarray, size: int, small: tuple[int, int] | None) -> torch.Tensor:
    """uint8 (n, C, H, W) images, their warps (already from the shrunk image when `small`, its
    (width, height), is given) -> uint8 (n, size, size, C)."""
    source = images.float() if small is None else area_resize(images, *small)
    theta = torch.from_numpy(grid_theta(warps, source.shape[-1], source.shape[-2], size)).to(
        device=images.device, dtype=torch.float32)
    crops = F.grid_sample(source, sampling_grid(theta, size), mode="bilinear", padding_mode="zeros",
                          align_corners=False)
    return round_half_up(crops).to(torch.uint8).permute(0, 2, 3, 1)


def warp_images(images: torch.Tensor, warps: np.ndarray, size: int, piece: int = 32) -> torch.Tensor:
    """Resample uint8 images (B, C, H, W) on any device into uint8 crops (B, size, size, C) on the
    same device through warps (B, 2, 3) (numpy, full -> crop in continuous px): warp_image of
    each image, batched. The images are resampled `piece` at a time, grouped by their pre-shrink
    (the float copies of a piece are the only extra memory: float32, float64 for a pre-shrink)."""
    warps = np.asarray(warps, dtype=np.float64)
    if warps.shape != (len(images), 2, 3):
        raise ValueError(f"warps of shape {warps.shape} for {len(images)} images")
    height, width = images.shape[-2:]
    out = torch.empty((len(images), size, size, images.shape[1]), dtype=torch.uint8, device=images.device)
    groups: dict = defaultdict(list)
    for index, warp in enumerate(warps):
        shrink = area_shrink(warp, width, height)
        groups[None if shrink is None else shrink[0]].append((index, warp if shrink is None else shrink[1]))
    for small, members in groups.items():
        for start in range(0, len(members), piece):
            rows, row_warps = zip(*members[start:start + piece])
            index = torch.tensor(rows, device=images.device)
            out[index] = _warp_group(images[index], np.stack(row_warps), size, small)
    return out
