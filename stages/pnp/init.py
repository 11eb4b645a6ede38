"""Closed-form start for the PnP solver: a batched weighted DLT, orthogonalised.

For normalised image points m = ((u - cx) / fx, (v - cy) / fy) and the 3x4 camera matrix
P ~ [R | t], each point gives two linear equations p1.X - m_u p3.X = 0 and p2.X - m_v p3.X = 0
(X = (x, 1)), weighted by w2d. P is the eigenvector of the 12x12 normal matrix of these
equations with the smallest eigenvalue (torch.linalg.eigh, batched; inverse iteration inside
torch.compile, `smallest_eigenvector`); the normal matrix is
assembled from five weighted 4x4 moment matrices of X, so no (B, 2N, 12) array is built. The
3D points are centred and scaled first for conditioning. The rotation is the nearest rotation
to P's left block (inside torch.compile, its Gram-Schmidt rotation: no SVD, only a start for
the LM), the sign chosen so that the points lie in front of the camera, and t is then
re-solved in closed form with R fixed.
Needs non-coplanar points (a face is far from planar); degenerate problems give a finite but
meaningless start that the solver flags.
Shapes (planar layout, see stages.pnp.cost): x3d (B, 3, N), x2d (B, 2, N), w2d (B, 2, N).
"""
from __future__ import annotations

import torch

from stages.pnp.cost import intrinsics, symmetric_4x4
from stages.pnp.rotation import gram_schmidt, orthogonalise
from stages.pnp.smallmat import inner_products, matmul
from stages.pnp.solver import unrolled_cholesky, unrolled_cholesky_solve, unrolled_triangular_solves

INVERSE_SHIFT = 1e-4        # relative to the normal matrix's mean diagonal (compiled DLT)
INVERSE_ITERATIONS = 4


def normalised_points(x2d: torch.Tensor, K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels (B, 2, N) -> normalised image coordinates m_u, m_v, each (B, N)."""
    fx, fy, cx, cy = intrinsics(K, x2d.shape[0])
    return (x2d[:, 0] - cx) / fx, (x2d[:, 1] - cy) / fy


def _weighted_centre(x3d: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted centroid (B, 3) and RMS radius (B,) of points (B, 3, N), weights (B, N)."""
    tiny = torch.finfo(x3d.dtype).tiny
    total = weight.sum(-1, keepdim=True).clamp_min(tiny)
    centre = (x3d * weight[:, None]).sum(-1) / total
    spread = (((x3d - centre[..., None]) ** 2).sum(1) * weight).sum(-1) / total[:, 0]
    return centre, torch.sqrt(spread.clamp_min(tiny))


def dlt_camera_matrix(xn: torch.Tensor, mu: torch.Tensor, mv: torch.Tensor,
                      w2d: torch.Tensor) -> torch.Tensor:
    """P (B, 3, 4) (up to scale and sign) from normalised 3D points xn (B, 3, N), normalised
    image points mu, mv (B, N) and weights w2d (B, 2, N)."""
    x, y, z = xn.unbind(1)
    one = torch.ones_like(x)
    products = torch.stack([x * x, x * y, x * z, x, y * y, y * z, y, z * z, z, one], 1)
    wu2, wv2 = w2d[:, 0] ** 2, w2d[:, 1] ** 2
    G = torch.stack([wu2, wv2, wu2 * mu, wv2 * mv, wu2 * mu * mu + wv2 * mv * mv], 1)
    unique = inner_products(G, products)                      # (B, 5, 10): sums of G_k X_i X_j
    moments = symmetric_4x4(unique)                           # (B, 5, 4, 4)
    Su, Sv, Smu, Smv, Smm = moments.unbind(1)
    zero = torch.zeros_like(Su)
    normal = torch.cat([torch.cat([Su, zero, -Smu], 2), torch.cat([zero, Sv, -Smv], 2),
                        torch.cat([-Smu, -Smv, Smm], 2)], 1)
    scale = normal.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(torch.finfo(xn.dtype).tiny)
    return smallest_eigenvector(normal / scale[:, None, None]).reshape(-1, 3, 4)


def smallest_eigenvector(M: torch.Tensor) -> torch.Tensor:
    """Unit eigenvectors (B, n) of the smallest eigenvalues of symmetric positive semi-definite
    M (B, n, n) with mean diagonal 1. Eager: torch.linalg.eigh. Inside torch.compile (where the
    library's eigh would wait for the host on a GPU): INVERSE_ITERATIONS of inverse iteration
    with M + INVERSE_SHIFT I, its Cholesky factor written out (stages.pnp.solver), which
    converges at the ratio of the two smallest eigenvalues (plus the shift) an iteration: for
    the start of the LM, not for exact eigenvectors."""
    if not torch.compiler.is_compiling():
        return torch.linalg.eigh(M)[1][..., 0]
    n = M.shape[-1]
    L, _ = unrolled_cholesky(M + INVERSE_SHIFT * torch.eye(n, dtype=M.dtype, device=M.device))
    v = torch.ones_like(M[..., :1])
    for _ in range(INVERSE_ITERATIONS):
        v = unrolled_triangular_solves(L, v)
        v = v / v.norm(dim=-2, keepdim=True).clamp_min(torch.finfo(M.dtype).tiny)
    return v[..., 0]


def translation_given_rotation(R: torch.Tensor, x3d: torch.Tensor, mu: torch.Tensor,
                               mv: torch.Tensor, w2d: torch.Tensor) -> torch.Tensor:
    """Least-squares t (B, 3) of the weighted linear equations
    (R x + t)_x - m_u (R x + t)_z = 0 and (R x + t)_y - m_v (R x + t)_z = 0."""
    P = matmul(R, x3d)
    wu2, wv2 = w2d[:, 0] ** 2, w2d[:, 1] ** 2
    eu = P[:, 0] - mu * P[:, 2]                      # residual of the u equation at t = 0
    ev = P[:, 1] - mv * P[:, 2]
    s = torch.stack([wu2, wv2, wu2 * mu, wv2 * mv, wu2 * mu * mu + wv2 * mv * mv,
                     wu2 * eu, wv2 * ev, wu2 * mu * eu + wv2 * mv * ev], 1).sum(-1)
    zero = torch.zeros_like(s[:, 0])
    normal = torch.stack([torch.stack([s[:, 0], zero, -s[:, 2]], -1),
                          torch.stack([zero, s[:, 1], -s[:, 3]], -1),
                          torch.stack([-s[:, 2], -s[:, 3], s[:, 4]], -1)], 1)
    rhs = torch.stack([-s[:, 5], -s[:, 6], s[:, 7]], -1)
    eye = torch.eye(3, dtype=R.dtype, device=R.device)
    ridge = (1e-12 * normal.diagonal(dim1=-2, dim2=-1).mean(-1)
             + torch.finfo(R.dtype).tiny)[:, None, None] * eye
    if torch.compiler.is_compiling():
        return unrolled_cholesky_solve(normal + ridge, rhs)[0]
    t, _ = torch.linalg.solve_ex(normal + ridge, rhs[..., None])
    return t[..., 0]


def dlt_pose(x3d: torch.Tensor, x2d: torch.Tensor, w2d: torch.Tensor,
             K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form pose R (B, 3, 3), t (B, 3) from x3d (B, 3, N), x2d (B, 2, N) px,
    w2d (B, 2, N), K (3, 3) or (B, 3, 3)."""
    mu, mv = normalised_points(x2d, K)
    centre, radius = _weighted_centre(x3d, (w2d * w2d).sum(1))
    xn = (x3d - centre[..., None]) / radius[:, None, None]
    P = dlt_camera_matrix(xn, mu, mv, w2d)
    depth_sign = torch.where(P[:, 2, 3] < 0, -1.0, 1.0).to(P.dtype)
    M = P[:, :, :3] * depth_sign[:, None, None]
    R = gram_schmidt(M) if torch.compiler.is_compiling() else orthogonalise(M)
    t = translation_given_rotation(R, x3d, mu, mv, w2d)
    return R, t
