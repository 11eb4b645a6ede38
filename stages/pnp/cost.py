"""The weighted (optionally robust) reprojection cost, its residuals and analytic Jacobian.

Conventions (OpenCV pinhole, no distortion, continuous pixel coordinates):
  X = R x3d + t (camera frame, z forward),  proj(X) = (fx X/Z + cx, fy Y/Z + cy)
  r_n = w2d_n * (proj(X_n) - x2d_n)                      weighted residual of point n, (2,)
  cost = sum_n rho(|r_n|),  rho(s) = s^2 / 2             (no robust loss)
                            rho(s) = s^2 / 2 if s <= delta else delta s - delta^2 / 2   (Huber)
With w2d = 1 / sigma of gaussian pixel noise, cost at the true pose is chi^2 / 2 with 2N degrees
of freedom: its mean is N (the number of points).

The functions here take points in planar layout, coordinates first, which keeps every
per-point array contiguous and makes the batched code several times faster on CPU than the
(B, N, C) layout: x3d (B, 3, N), x2d (B, 2, N), w2d (B, 2, N) (see `planar`). K is (3, 3) or
(B, 3, 3), R (B, 3, 3), t (B, 3). The Jacobian is taken w.r.t. the left increment
(delta, dt) of stages.pnp.rotation.
"""
from __future__ import annotations

import torch

from stages.pnp.smallmat import inner_products, matmul

# Index tables as Python ints, never as tensors: indexing a GPU tensor with a host tensor copies
# the index to the device, and PyTorch waits for that copy (a host sync at every call).
# Index of P_i P_j (P = (x, y, z, 1)) among the 10 unique products, row by row of a 4x4.
SYMMETRIC_4x4 = ((0, 1, 2, 3), (1, 4, 5, 6), (2, 5, 7, 8), (3, 6, 8, 9))
# Index of C_kl among the 5 stored entries (c11, c22, c13, c23, c33; c12 = 0 is entry 5).
SYMMETRIC_3x3 = ((0, 5, 2), (5, 1, 3), (2, 3, 4))
# For each a, the (k, i, sign) with EPS[k, i, a] = sign != 0 (see `levi_civita`).
CROSS_TERMS = tuple(tuple((k, i, (k - i) * (i - a) * (a - k) // 2) for k in range(3) for i in range(3)
                          if len({k, i, a}) == 3) for a in range(3))
CPU_CHUNK_POINTS = 1 << 15      # points (problems x points each) per chunk of gauss_newton_system


def levi_civita(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The Levi-Civita symbol EPS (3, 3, 3), hat(P)[a, k] = sum_i EPS[a, i, k] P[i], made on
    the device: EPS[a, i, k] = (a - i)(i - k)(k - a) / 2, exact in floating point."""
    n = torch.arange(3, dtype=dtype, device=device)
    a, i, k = n[:, None, None], n[None, :, None], n[None, None, :]
    return (a - i) * (i - k) * (k - a) / 2


def symmetric_4x4(unique: torch.Tensor) -> torch.Tensor:
    """The symmetric 4x4 matrices (..., 4, 4) of products P_i P_j from their 10 unique entries
    (..., 10) in `symmetric_products`' order."""
    return torch.stack([torch.stack([unique[..., k] for k in row], -1) for row in SYMMETRIC_4x4], -2)


def symmetric_products(x: torch.Tensor) -> torch.Tensor:
    """Points (B, 3, N) -> the 10 unique products of X = (x, y, z, 1): (B, 10, N)."""
    a, b, c = x.unbind(1)
    return torch.stack([a * a, a * b, a * c, a, b * b, b * c, b, c * c, c, torch.ones_like(a)], 1)


def planar(x: torch.Tensor) -> torch.Tensor:
    """Points (B, N, C) -> contiguous planar layout (B, C, N)."""
    return x.transpose(1, 2).contiguous()


def intrinsics(K: torch.Tensor, batch: int) -> tuple[torch.Tensor, ...]:
    """fx, fy, cx, cy, each (B, 1), from K (3, 3) or (B, 3, 3)."""
    K = K.expand(batch, 3, 3)
    return K[:, 0, 0:1], K[:, 1, 1:2], K[:, 0, 2:3], K[:, 1, 2:3]


def transform(R: torch.Tensor, t: torch.Tensor, x3d: torch.Tensor) -> torch.Tensor:
    """Object points (B, 3, N) -> camera points (B, 3, N): R x + t."""
    return matmul(R, x3d) + t[..., None]


def project(X: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Camera points (B, 3, N) -> pixels (B, 2, N)."""
    fx, fy, cx, cy = intrinsics(K, X.shape[0])
    inv_z = 1 / X[:, 2]
    return torch.stack([fx * X[:, 0] * inv_z + cx, fy * X[:, 1] * inv_z + cy], 1)


def residuals(R: torch.Tensor, t: torch.Tensor, x3d: torch.Tensor, x2d: torch.Tensor,
              w2d: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Weighted residuals r (B, 2, N) = w2d * (proj(R x3d + t) - x2d), in weighted pixels."""
    return w2d * (project(transform(R, t, x3d), K) - x2d)


def robust_cost(r: torch.Tensor, huber_delta: float | None = None) -> torch.Tensor:
    """Residuals (..., 2, N) -> cost (...,): sum over points of rho(|r_n|) (see module doc)."""
    sq = (r * r).sum(-2)
    if huber_delta is None:
        return 0.5 * sq.sum(-1)
    norm = torch.sqrt(sq.clamp_min(torch.finfo(r.dtype).tiny))
    rho = torch.where(norm <= huber_delta, 0.5 * sq, huber_delta * norm - 0.5 * huber_delta ** 2)
    return rho.sum(-1)


def robust_point_weights(r: torch.Tensor, huber_delta: float | None = None) -> torch.Tensor:
    """IRLS weights (..., N) = rho'(s) / s of each point's residual norm s (1 without Huber)."""
    if huber_delta is None:
        return torch.ones_like(r[..., 0, :])
    norm = torch.sqrt((r * r).sum(-2).clamp_min(torch.finfo(r.dtype).tiny))
    return torch.where(norm <= huber_delta, torch.ones_like(norm), huber_delta / norm)


def _rotated_and_normalised(R: torch.Tensor, t: torch.Tensor, x3d: torch.Tensor):
    """P = R x3d (B, 3, N) and the camera point's X / Z, Y / Z, 1 / Z, each (B, N)."""
    P = matmul(R, x3d)
    X, Y, Z = (P + t[..., None]).unbind(1)
    inv_z = 1 / Z
    return P, X * inv_z, Y * inv_z, inv_z


def residuals_and_jacobian(R: torch.Tensor, t: torch.Tensor, x3d: torch.Tensor,
                           x2d: torch.Tensor, w2d: torch.Tensor,
                           K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Residuals r (B, 2, N) and their Jacobian J (B, 6, 2, N) w.r.t. the left increment.

    With P = R x3d (rotated, untranslated) and g = d r / d X (one row per residual),
    d r / d delta = P x g and d r / d dt = g.
    """
    fx, fy, cx, cy = intrinsics(K, x3d.shape[0])
    P, xz, yz, inv_z = _rotated_and_normalised(R, t, x3d)
    wu, wv = w2d.unbind(1)
    r = torch.stack([wu * (fx * xz + cx - x2d[:, 0]), wv * (fy * yz + cy - x2d[:, 1])], 1)
    a = wu * fx * inv_z                      # g_u = a (1, 0, -xz)
    b = wv * fy * inv_z                      # g_v = b (0, 1, -yz)
    Px, Py, Pz = P.unbind(1)
    a_xz, b_yz = a * xz, b * yz
    zero = torch.zeros_like(a)
    J = torch.stack([-a_xz * Py, -b_yz * Py - b * Pz,
                     a * Pz + a_xz * Px, b_yz * Px,
                     -a * Py, b * Px,
                     a, zero,
                     zero, b,
                     -a_xz, -b_yz], 1)
    return r, J.view(J.shape[0], 6, 2, -1)


def normal_equations(r: torch.Tensor, J: torch.Tensor,
                     huber_delta: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss-Newton (IRLS) normal equations: H = J^T W J (B, 6, 6) and g = J^T W r (B, 6)
    from r (B, 2, N) and J (B, 6, 2, N)."""
    Jf = J.reshape(J.shape[0], 6, -1)
    if huber_delta is None:
        Jw = Jf
    else:
        Jw = (J * robust_point_weights(r, huber_delta)[:, None, None, :]).reshape(Jf.shape)
    H = Jw @ Jf.transpose(1, 2)
    g = (Jw @ r.reshape(r.shape[0], -1, 1))[..., 0]
    return H, g


def gauss_newton_system(R: torch.Tensor, t: torch.Tensor, x3d: torch.Tensor, x2d: torch.Tensor,
                        w2d: torch.Tensor, K: torch.Tensor, huber_delta: float | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """cost (B,), H (B, 6, 6) and g (B, 6), equal to robust_cost and normal_equations of
    residuals_and_jacobian, without building the (B, 6, 2, N) Jacobian (`_moment_system`).

    On CPU the batch is taken CPU_CHUNK_POINTS points at a time: every temporary then stays
    small enough for the allocator to reuse, where whole-batch float64 temporaries (256 x 1220
    points: 2.5 MB each) went back to the OS and were page-faulted in again at every operation
    (benchmarks.bench_pnp: the float64 solve was several times slower than float32)."""
    batch, points = x3d.shape[0], x3d.shape[-1]
    rows = max(1, CPU_CHUNK_POINTS // max(points, 1))
    if x3d.device.type != "cpu" or batch <= rows:
        return _moment_system(R, t, x3d, x2d, w2d, K, huber_delta)
    K = K.expand(batch, 3, 3)
    parts = [_moment_system(*(x[i:i + rows] for x in (R, t, x3d, x2d, w2d, K)), huber_delta)
             for i in range(0, batch, rows)]
    return tuple(torch.cat(part) for part in zip(*parts))


def _moment_system(R: torch.Tensor, t: torch.Tensor, x3d: torch.Tensor, x2d: torch.Tensor,
                   w2d: torch.Tensor, K: torch.Tensor, huber_delta: float | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """gauss_newton_system on one chunk of the batch.

    Per point, J = A [-hat(P), I] with A = d r / d X (2 x 3); so J^T W J = [-hat(P), I]^T C
    [-hat(P), I] with C = A^T W A (3 x 3, five distinct entries) and J^T W r = [-hat(P), I]^T e
    with e = A^T W r. The sums over points reduce to the moments sum_n C_kl P_i P_j and
    sum_n e_k P_i, one batched matrix product with the products of P = R x3d."""
    fx, fy, cx, cy = intrinsics(K, x3d.shape[0])
    P, xz, yz, inv_z = _rotated_and_normalised(R, t, x3d)
    wu, wv = w2d.unbind(1)
    ru = wu * (fx * xz + cx - x2d[:, 0])
    rv = wv * (fy * yz + cy - x2d[:, 1])
    r = torch.stack([ru, rv], 1)
    cost = robust_cost(r, huber_delta)
    a = wu * fx * inv_z                      # d r_u / d X = a (1, 0, -xz)
    b = wv * fy * inv_z                      # d r_v / d X = b (0, 1, -yz)
    a2, b2 = a * a, b * b
    if huber_delta is not None:
        omega = robust_point_weights(r, huber_delta)
        a2, b2, ru, rv = a2 * omega, b2 * omega, ru * omega, rv * omega
    a2x, b2y = a2 * xz, b2 * yz
    eu, ev = a * ru, b * rv
    left = torch.stack([a2, b2, -a2x, -b2y, a2x * xz + b2y * yz,
                        eu, ev, -(eu * xz + ev * yz)], 1)
    moments = inner_products(left, symmetric_products(P))          # (B, 8, 10)
    return (cost,) + _assemble_normal_equations(moments)


def _assemble_normal_equations(moments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """H (B, 6, 6), g (B, 6) from the moments (B, 8, 10) of gauss_newton_system: by the library's
    einsum, or inside torch.compile entry by entry (`written_out_normal_equations`)."""
    if torch.compiler.is_compiling():
        return written_out_normal_equations(moments)
    sym = symmetric_4x4(moments)                                         # (B, 8, 4, 4)
    blocks = list(sym[:, :5].unbind(1)) + [torch.zeros_like(sym[:, 0])]
    M = torch.stack([torch.stack([blocks[k] for k in row], 1) for row in SYMMETRIC_3x3], 1)  # sum C_kl X_i X_j
    E = sym[:, 5:, :, 3]                                                 # sum e_k X_i: (B, 3, 4)
    eps = levi_civita(moments.dtype, moments.device)
    H_rr = torch.einsum("kia,ljc,nklij->nac", eps, eps, M[..., :3, :3])
    H_rt = -torch.einsum("kia,nkli->nal", eps, M[..., :3, 3])
    H_tt = M[..., 3, 3]
    H = torch.cat([torch.cat([H_rr, H_rt], 2), torch.cat([H_rt.transpose(1, 2), H_tt], 2)], 1)
    g = torch.cat([-torch.einsum("kia,nki->na", eps, E[..., :3]), E[..., 3]], 1)
    return H, g


def written_out_normal_equations(moments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`_assemble_normal_equations` with every entry of H and g a signed sum of moments over the
    Levi-Civita symbol's nonzero entries (Python indices, `CROSS_TERMS`): plain arithmetic that
    torch.compile fuses, where the einsums are three matrix-multiply kernels."""
    def moment(k: int, l: int, i: int, j: int) -> torch.Tensor | None:     # sum_n C_kl P_i P_j
        block = SYMMETRIC_3x3[k][l]
        return None if block == 5 else moments[:, block, SYMMETRIC_4x4[i][j]]

    def signed_sum(terms) -> torch.Tensor:
        total = torch.zeros_like(moments[:, 0, 0])
        for sign, value in terms:
            if value is not None:
                total = total + value if sign > 0 else total - value
        return total

    rot = [[signed_sum((s1 * s2, moment(k, l, i, j)) for k, i, s1 in CROSS_TERMS[a] for l, j, s2 in CROSS_TERMS[c])
            for c in range(3)] for a in range(3)]
    rot_t = [[signed_sum((-s, moment(k, l, i, 3)) for k, i, s in CROSS_TERMS[a]) for l in range(3)] for a in range(3)]
    trans = [[signed_sum([(1, moment(k, l, 3, 3))]) for l in range(3)] for k in range(3)]
    rows = [rot[a] + rot_t[a] for a in range(3)] + [[rot_t[c][k] for c in range(3)] + trans[k] for k in range(3)]
    H = torch.stack([torch.stack(row, -1) for row in rows], -2)
    g_rot = [signed_sum((-s, moments[:, 5 + k, SYMMETRIC_4x4[i][3]]) for k, i, s in CROSS_TERMS[a]) for a in range(3)]
    g_t = [moments[:, 5 + k, SYMMETRIC_4x4[3][3]] for k in range(3)]
    return H, torch.stack(g_rot + g_t, -1)
