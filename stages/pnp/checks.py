"""Degenerate PnP problems: detect them, and swap them for a harmless stand-in.

A problem of the batch is degenerate when any of its inputs is not finite, when fewer than
MIN_POINTS points have positive weights on both coordinates, or when its weighted 3D points are
(nearly) collinear. Such problems are replaced by a fixed well-posed stand-in (its own solution is
the identity rotation at 1 unit in front of the camera) so that a batch never fails as a whole;
the caller flags them invalid and leaves them out of losses. The replacement uses torch.where,
so gradients reach the inputs of the valid problems only (and stay finite).
"""
from __future__ import annotations

import torch

MIN_POINTS = 6          # the DLT start needs 6 points (11 unknowns, 2 equations per point)
COLLINEAR_RATIO = 1e-8  # about the second / largest eigenvalue of the 3D scatter below which points are collinear


def well_posed(x3d: torch.Tensor, x2d: torch.Tensor, w2d: torch.Tensor) -> torch.Tensor:
    """(B,) bool: finite inputs, enough weighted points, 3D points not collinear.

    Finiteness is read from per-problem sums (a NaN or inf anywhere makes the sum non-finite)."""
    with torch.no_grad():
        finite = (torch.isfinite(x3d.sum((1, 2))) & torch.isfinite(x2d.sum((1, 2)))
                  & torch.isfinite(w2d.sum((1, 2))))
        keep = finite[:, None, None]
        x3d = torch.where(keep, x3d, torch.zeros_like(x3d))
        w2d = torch.where(keep, w2d, torch.zeros_like(w2d))
        weighted = (w2d[..., 0] != 0) & (w2d[..., 1] != 0)
        enough = weighted.sum(-1) >= MIN_POINTS
        weight = weighted.to(x3d.dtype)[..., None]
        total = weight.sum(1).clamp_min(1)[..., None]
        x3d = x3d - x3d[:, :1]                   # moments about a point of the set, for accuracy
        xw = x3d * weight
        mean = xw.sum(1, keepdim=True) / total
        scatter = xw.transpose(1, 2) @ x3d / total - mean.transpose(1, 2) @ mean
        return finite & enough & not_collinear(scatter)


def not_collinear(scatter: torch.Tensor) -> torch.Tensor:
    """(B,) bool from 3D scatter matrices (B, 3, 3): the points are not (nearly) collinear.

    Tested through two invariants, with no eigenvalues (on a GPU the library's would wait for
    the host): c1 = tr S and c2, the sum of the principal 2 x 2 minors. With eigenvalues
    l1 <= l2 <= l3, c2 lies in [l2 l3, 3 l2 l3] and c1 in [l3, 3 l3], so c2 > r c1^2 holds
    whenever l2 / l3 > 9 r and fails whenever l2 / l3 < r / 3 (r = COLLINEAR_RATIO)."""
    s = scatter
    c1 = s[:, 0, 0] + s[:, 1, 1] + s[:, 2, 2]
    c2 = (s[:, 0, 0] * s[:, 1, 1] - s[:, 0, 1] * s[:, 1, 0] + s[:, 0, 0] * s[:, 2, 2]
          - s[:, 0, 2] * s[:, 2, 0] + s[:, 1, 1] * s[:, 2, 2] - s[:, 1, 2] * s[:, 2, 1])
    return c2 > COLLINEAR_RATIO * (c1 * c1).clamp_min(torch.finfo(s.dtype).tiny)


def stand_in_problem(n: int, K: torch.Tensor, dtype: torch.dtype,
                     device: torch.device) -> tuple[torch.Tensor, ...]:
    """A well-posed problem x3d (n, 3), x2d (n, 2), w2d (n, 2) solved by R = I, t = (0, 0, 1)."""
    i = torch.arange(n, dtype=dtype, device=device)
    x3d = 0.1 * torch.stack([torch.cos(i), torch.sin(2 * i), 0.5 * torch.cos(3 * i + 1)], -1)
    K = K.reshape(-1, 3, 3)[0].to(dtype)
    z = 1 + x3d[:, 2]
    x2d = torch.stack([K[0, 0] * x3d[:, 0] / z + K[0, 2], K[1, 1] * x3d[:, 1] / z + K[1, 2]], -1)
    return x3d, x2d, torch.ones_like(x2d)


def sanitise(x3d: torch.Tensor, x2d: torch.Tensor, w2d: torch.Tensor, K: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Replace the degenerate problems by the stand-in. Returns x3d, x2d, w2d and the (B,)
    mask of the problems kept. No branch on the mask: a GPU runs it without waiting for the host."""
    ok = well_posed(x3d, x2d, w2d)
    s3, s2, sw = stand_in_problem(x3d.shape[1], K, x3d.dtype, x3d.device)
    keep = ok[:, None, None]
    return (torch.where(keep, x3d, s3), torch.where(keep, x2d, s2), torch.where(keep, w2d, sw), ok)
