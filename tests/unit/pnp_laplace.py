"""An independent closed form of the EPro-PnP loss for the PnP tests: the Laplace approximation.

For a pose posterior p(y) proportional to exp(-cost(y)) that is nearly Gaussian (small noise,
many points), log Z = log int exp(-cost) dy is close to
    -cost(y*) + 3 log 2 pi - log det H / 2,
H the full Hessian of the cost at its minimum y*, in the local coordinates
(exp(hat(delta)) R*, t* + dt) whose measure is the Haar (rotations) x Lebesgue (translations)
measure near y* (the Haar density there is 1 - |delta|^2 / 12). The loss of the true pose is
cost(y_gt) + log Z. The cost, its derivatives (autograd) and the minimum (Newton's method from
the true pose) are written here in float64 without stages.pnp.
"""
from __future__ import annotations

import math

import numpy as np
import torch

F64 = torch.float64


def _hat(v: torch.Tensor) -> torch.Tensor:
    """(3,) -> (3, 3) with hat(v) @ x = v x x."""
    zero = torch.zeros_like(v[0])
    return torch.stack([torch.stack([zero, -v[2], v[1]]), torch.stack([v[2], zero, -v[0]]),
                        torch.stack([-v[1], v[0], zero])])


def _local_cost(x3d, x2d, w2d, K, R0, t0):
    """cost(y) = sum (w2d * (proj(exp(hat(delta)) R0 x3d + t0 + dt) - x2d))^2 / 2, y = (delta,
    dt); exp truncated after the cubic term (exact to the second derivative at y = 0)."""
    focal, centre = K[[0, 1], [0, 1]], K[:2, 2]

    def cost(y: torch.Tensor) -> torch.Tensor:
        A = _hat(y[:3])
        R = (torch.eye(3, dtype=F64) + A + A @ A / 2 + A @ A @ A / 6) @ R0
        X = x3d @ R.T + t0 + y[3:]
        return 0.5 * ((w2d * (X[:, :2] / X[:, 2:] * focal + centre - x2d)) ** 2).sum()

    return cost


def _minimum(x3d, x2d, w2d, K, R, t, max_steps: int = 12):
    """Newton's method from R (3, 3), t (3,): the minimum R*, t* and the Hessian there."""
    zero = torch.zeros(6, dtype=F64)
    for _ in range(max_steps):
        cost = _local_cost(x3d, x2d, w2d, K, R, t)
        H = torch.autograd.functional.hessian(cost, zero)
        step = -torch.linalg.solve(H, torch.autograd.functional.jacobian(cost, zero))
        if step.abs().max() < 1e-12:
            return R, t, H
        R, t = torch.linalg.matrix_exp(_hat(step[:3])) @ R, t + step[3:]
    raise AssertionError(f"Newton's method did not converge (last step {step.tolist()})")


def laplace_loss(x3d, x2d, w2d, K, R, t) -> float:
    """cost(R, t) + Laplace log Z of one problem: x3d (N, 3) m, x2d (N, 2) px, w2d (N, 2) 1/px,
    K (3, 3), the true OpenCV pose R (3, 3), t (3,); arrays of any float type, used in float64."""
    x3d, x2d, w2d, K, R, t = (torch.as_tensor(np.asarray(a), dtype=F64)
                              for a in (x3d, x2d, w2d, K, R, t))
    zero = torch.zeros(6, dtype=F64)
    cost_gt = _local_cost(x3d, x2d, w2d, K, R, t)(zero)
    R, t, H = _minimum(x3d, x2d, w2d, K, R, t)
    cost_min = _local_cost(x3d, x2d, w2d, K, R, t)(zero)
    return float(cost_gt - cost_min + 3 * math.log(2 * math.pi) - 0.5 * torch.logdet(H))


def laplace_losses(case: dict, w2d: np.ndarray) -> np.ndarray:
    """laplace_loss (B,) of the problems of a tests.unit.pnp_cases.make_problems case."""
    return np.array([laplace_loss(case["x3d"][b], case["x2d"][b], w2d[b], case["K"],
                                  case["R"][b], case["t"][b]) for b in range(len(case["x3d"]))])
