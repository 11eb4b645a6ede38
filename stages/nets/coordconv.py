"""CoordConv input (Liu et al. 2018): RGB plus two position maps, X then Y. Either the crop's own
pixel positions (paper sec. 2.2.2) or each crop pixel's position in the full image (the Direct
6DoF baseline's maps, sec. 3.2.1)."""
from __future__ import annotations

import torch


def coord_maps(size: int, batch: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(batch, 2, size, size) X and Y maps: crop pixel index 0..size-1 scaled linearly to [-1, 1]."""
    ramp = torch.linspace(-1.0, 1.0, size, device=device, dtype=dtype)
    x = ramp.view(1, 1, 1, size).expand(batch, 1, size, size)
    y = ramp.view(1, 1, size, 1).expand(batch, 1, size, size)
    return torch.cat([x, y], dim=1)


def add_coord_channels(images: torch.Tensor) -> torch.Tensor:
    """Square images (B, C, S, S) -> (B, C + 2, S, S) with the X map then the Y map appended."""
    batch, _, height, width = images.shape
    if height != width:
        raise ValueError(f"CoordConv expects square crops, got {height}x{width}")
    return torch.cat([images, coord_maps(width, batch, images.device, images.dtype)], dim=1)


def image_coord_maps(inv_warps: torch.Tensor, crop_size: int, size: int, image_size: tuple[int, int]) -> torch.Tensor:
    """(B, 2, size, size) X and Y maps: the full-image position of each pixel's centre of an input
    of side `size` made from crops of side `crop_size` (pixel k's centre at crop px
    (k + 0.5) crop_size / size), through the crop -> full-image warps inv_warps (B, 2, 3), scaled
    from [0, W] x [0, H] (image_size (W, H), px) to [-1, 1]."""
    inv_warps = inv_warps.float()
    centres = (torch.arange(size, device=inv_warps.device, dtype=torch.float32) + 0.5) * (crop_size / size)
    u, v = centres.view(1, 1, size), centres.view(1, size, 1)
    maps = [inv_warps[:, i, 0, None, None] * u + inv_warps[:, i, 1, None, None] * v + inv_warps[:, i, 2, None, None]
            for i in range(2)]
    return torch.stack([maps[0] * (2.0 / image_size[0]) - 1.0, maps[1] * (2.0 / image_size[1]) - 1.0], dim=1)
