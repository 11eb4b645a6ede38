"""The continuous 6D rotation representation (Zhou et al., CVPR 2019) and the geodesic distance.

A rotation is represented by its first two columns (6 numbers); `rotation_from_6d` maps any 6
numbers (two non-parallel 3-vectors) back to a rotation by Gram-Schmidt: b1 = a1 / |a1|,
b2 = the part of a2 orthogonal to b1, normalised, b3 = b1 x b2 (det +1). The map is continuous
and onto, unlike Euler angles or quaternions, which is why a network regresses it well.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-8


def rotation_from_6d(x: torch.Tensor) -> torch.Tensor:
    """(..., 6) = the two columns (a1, a2) -> rotation matrices (..., 3, 3) with columns b1, b2, b3."""
    a1, a2 = x[..., :3], x[..., 3:]
    b1 = F.normalize(a1, dim=-1, eps=EPS)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1, eps=EPS)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def rotation_to_6d(R: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (..., 3, 3) -> (..., 6): the first column, then the second."""
    return torch.cat([R[..., :, 0], R[..., :, 1]], dim=-1)


def geodesic(R_a: torch.Tensor, R_b: torch.Tensor) -> torch.Tensor:
    """Angle (...,) in radians of the rotation R_a^T R_b, for rotations (..., 3, 3).

    atan2(|sin|, cos) of the relative rotation (sin from its skew part, cos from its trace):
    accurate near 0 and pi and with a finite gradient everywhere, where arccos of the trace has
    an infinite one at 0 (a perfect prediction)."""
    rel = R_a.transpose(-1, -2) @ R_b
    cos = (rel.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    skew = torch.stack([rel[..., 2, 1] - rel[..., 1, 2], rel[..., 0, 2] - rel[..., 2, 0],
                        rel[..., 1, 0] - rel[..., 0, 1]], dim=-1)
    sin = torch.sqrt((skew ** 2).sum(-1) / 4 + EPS ** 2)
    return torch.atan2(sin, cos)
