"""CoordConv input (Liu et al. 2018; paper sec. 2.2.2): RGB plus the crop's X and Y maps."""
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
