"""Batched rotations in PyTorch: the so(3) exp and log maps and the 6-DoF pose parametrisation.

A pose is (R, t) in OpenCV's camera frame: x_cam = R x + t. Its 6-vector is
rvec_t = (rotvec, t) with R = exp(hat(rotvec)) (axis-angle, radians; t in the units of x3d).
Local increments act on the left: (R, t) + (delta, dt) = (exp(hat(delta)) R, t + dt), so a
rotation increment is expressed in the camera frame. All functions take leading batch
dimensions and work in float32 or float64 on any device.
"""
from __future__ import annotations

import math

import torch

from stages.pnp.smallmat import matmul

SMALL_ANGLE = 1e-4     # below this angle (rad) the series expansions are used


def hat(v: torch.Tensor) -> torch.Tensor:
    """Vectors (..., 3) -> skew-symmetric matrices (..., 3, 3) with hat(v) @ x = v x x."""
    zero = torch.zeros_like(v[..., 0])
    x, y, z = v.unbind(-1)
    rows = (torch.stack([zero, -z, y], -1), torch.stack([z, zero, -x], -1),
            torch.stack([-y, x, zero], -1))
    return torch.stack(rows, -2)


def _safe_angle(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Angle |v| (...,) and its square, with a gradient that stays finite at 0."""
    theta2 = (v * v).sum(-1)
    small = theta2 < SMALL_ANGLE ** 2
    theta = torch.sqrt(torch.where(small, torch.ones_like(theta2), theta2))
    return torch.where(small, torch.zeros_like(theta), theta), theta2


def so3_exp(v: torch.Tensor) -> torch.Tensor:
    """Rotation vectors (..., 3) in radians -> rotation matrices (..., 3, 3) (Rodrigues)."""
    theta, theta2 = _safe_angle(v)
    small = theta2 < SMALL_ANGLE ** 2
    safe = torch.where(small, torch.ones_like(theta), theta)
    a = torch.where(small, 1 - theta2 / 6, torch.sin(safe) / safe)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(safe)) / safe ** 2)
    K = hat(v)
    eye = torch.eye(3, dtype=v.dtype, device=v.device).expand(K.shape)
    return eye + a[..., None, None] * K + b[..., None, None] * matmul(K, K)


def so3_log(R: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (..., 3, 3) -> rotation vectors (..., 3), angle in [0, pi].

    Uses the antisymmetric part away from pi and the symmetric part (the axis from the
    largest diagonal of R + I) near pi, where the antisymmetric part vanishes.
    """
    trace = R[..., 0, 0] + R[..., 1, 1] + R[..., 2, 2]
    cos = ((trace - 1) / 2).clamp(-1.0, 1.0)
    axis_sin = torch.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0],
                            R[..., 1, 0] - R[..., 0, 1]], -1) / 2          # sin(theta) * axis
    sin = axis_sin.norm(dim=-1)
    theta = torch.atan2(sin, cos)
    small = theta < SMALL_ANGLE
    safe_sin = torch.where(small, torch.ones_like(sin), sin)
    factor = torch.where(small, 1 + theta ** 2 / 6, theta / safe_sin)
    near_pi = cos < -0.9
    return torch.where(near_pi[..., None], _log_near_pi(R, theta, axis_sin),
                       factor[..., None] * axis_sin)


def _log_near_pi(R: torch.Tensor, theta: torch.Tensor, axis_sin: torch.Tensor) -> torch.Tensor:
    """Rotation vectors for angles near pi from the symmetric part of R: (..., 3)."""
    eye = torch.eye(3, dtype=R.dtype, device=R.device)
    B = (R + R.transpose(-1, -2)) / 2 - torch.cos(theta)[..., None, None] * eye
    column = torch.diagonal(B, dim1=-2, dim2=-1).argmax(-1)
    axis = torch.take_along_dim(B, column[..., None, None].expand(B.shape[:-1] + (1,)), -1)[..., 0]
    axis = axis / axis.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(R.dtype).tiny)
    sign = torch.where((axis * axis_sin).sum(-1) < 0, -1.0, 1.0).to(R.dtype)
    return axis * (sign * theta)[..., None]


def haar_log_density(delta: torch.Tensor) -> torch.Tensor:
    """Log of the Haar measure's density in exponential coordinates, (..., 3) -> (...,).

    d mu(exp(delta) R) = 2 (1 - cos|delta|) / |delta|^2 d delta = (sin(|delta|/2) / (|delta|/2))^2
    d delta; equal to 1 at delta = 0, so near any rotation the measure matches Lebesgue measure
    on rotation vectors. The sinc form has no cancellation: 1 - cos t rounds to 0 in float32 for
    t below about 2.5e-4 rad, which gave such samples a log density of -87 (docs/method.md).
    """
    theta, theta2 = _safe_angle(delta)
    small = theta2 < SMALL_ANGLE ** 2
    density = torch.where(small, 1 - theta2 / 12, torch.sinc(theta / (2 * math.pi)) ** 2)
    return torch.log(density.clamp_min(torch.finfo(delta.dtype).tiny))


def rvec_t(R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The pose R (..., 3, 3), t (..., 3) as 6-vectors (..., 6) = (rotvec, t)."""
    return torch.cat([so3_log(R), t], -1)


def apply_increment(R: torch.Tensor, t: torch.Tensor,
                    step: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left increment step (..., 6) = (delta, dt): (exp(delta) R, t + dt)."""
    return matmul(so3_exp(step[..., :3]), R), t + step[..., 3:]


def increment_between(R0: torch.Tensor, t0: torch.Tensor, R: torch.Tensor,
                      t: torch.Tensor) -> torch.Tensor:
    """The increment (..., 6) that takes (R0, t0) to (R, t): (log(R R0^T), t - t0)."""
    return torch.cat([so3_log(R @ R0.transpose(-1, -2)), t - t0], -1)


def gram_schmidt(M: torch.Tensor) -> torch.Tensor:
    """A rotation (..., 3, 3) near matrices M (..., 3, 3) without an SVD: the rows of M
    orthonormalised in order (Gram-Schmidt), the third their cross product (det +1). Not the
    nearest rotation (`orthogonalise`): the two agree when M is a scaled rotation."""
    tiny = torch.finfo(M.dtype).tiny
    a, b = M[..., 0, :], M[..., 1, :]
    r1 = a / a.norm(dim=-1, keepdim=True).clamp_min(tiny)
    b = b - (b * r1).sum(-1, keepdim=True) * r1
    r2 = b / b.norm(dim=-1, keepdim=True).clamp_min(tiny)
    return torch.stack([r1, r2, torch.linalg.cross(r1, r2)], -2)


def orthogonalise(M: torch.Tensor) -> torch.Tensor:
    """Nearest rotation (..., 3, 3) to matrices M (..., 3, 3) in Frobenius norm (SVD, det +1)."""
    U, _, Vh = torch.linalg.svd(M)
    d = torch.det(U @ Vh)
    S = torch.ones_like(U[..., 0])
    S = torch.cat([S[..., :2], d[..., None]], -1)
    return U @ (S[..., :, None] * Vh)
