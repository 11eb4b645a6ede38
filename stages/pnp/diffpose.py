"""The differentiable pose (one Gauss-Newton step with gradients) and eq. 5's loss L_pnp.

The LM solution (R*, t*) is found without gradients. One Gauss-Newton step from it, taken with
autograd on, has the same value (the gradient J^T W r vanishes at the minimum) and the implicit
function theorem's derivative: d pose / d theta = -H^-1 d(J^T W r) / d theta, for theta any of
x3d, x2d, w2d, with H the Gauss-Newton matrix J^T W J (the residuals' second derivatives left
out, as in EPro-PnP's "derivative regularisation" pose): against central finite differences of
the re-solved LM pose, eq. 5's gradient comes out 0.2-2.7 % off on a trained network's outputs
and 0.03 % off with i.i.d. 1.3 px noise (float64).
"""
from __future__ import annotations

import torch

from stages.pnp.cost import normal_equations, residuals_and_jacobian
from stages.pnp.rotation import apply_increment
from stages.pnp.solver import cholesky_solve


def gauss_newton_pose(x3d: torch.Tensor, x2d: torch.Tensor, w2d: torch.Tensor, K: torch.Tensor,
                      R: torch.Tensor, t: torch.Tensor, huber_delta: float | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """One differentiable Gauss-Newton step from the (detached) poses R (B, 3, 3), t (B, 3).

    Points in planar layout (stages.pnp.cost.planar): x3d (B, 3, N), x2d, w2d (B, 2, N).
    Returns R (B, 3, 3), t (B, 3) carrying gradients to x3d, x2d and w2d. Problems whose normal
    matrix is singular keep the start pose (no gradient)."""
    R, t = R.detach(), t.detach()
    r, J = residuals_and_jacobian(R, t, x3d, x2d, w2d, K)
    H, g = normal_equations(r, J, huber_delta)
    x, ok = cholesky_solve(H, g)
    step = -x
    ok = ok & torch.isfinite(step).all(-1)
    step = torch.where(ok[:, None], step, torch.zeros_like(step))
    return apply_increment(R, t, step)


def pnp_loss(R_pred: torch.Tensor, t_pred: torch.Tensor, R_gt: torch.Tensor, t_gt: torch.Tensor,
             x3d_gt: torch.Tensor, x3d_pred: torch.Tensor) -> torch.Tensor:
    """L_pnp, eq. 5 of the paper (the finetuning term `pnp`), per problem (B,):
        mean_v |P_pred X_gt - P_gt X_gt| + mean_v |P_pred X_pred - P_gt X_gt|
    with P X = R X + t (poses in one camera frame, e.g. OpenCV's; column vectors), |.| the
    Euclidean norm and mean_v the mean over the V vertices. R_* (B, 3, 3), t_* (B, 3),
    x3d_* (B, V, 3). The result is in the units of the inputs (metres for this project's
    meshes: multiply by 1000 for millimetres). The distance is smoothed below 1e-12 units so
    that its gradient stays finite where prediction and truth coincide."""
    target = x3d_gt @ R_gt.transpose(1, 2) + t_gt[:, None]
    true_mesh_error = x3d_gt @ R_pred.transpose(1, 2) + t_pred[:, None] - target
    pred_mesh_error = x3d_pred @ R_pred.transpose(1, 2) + t_pred[:, None] - target
    return _mean_distance(true_mesh_error) + _mean_distance(pred_mesh_error)


def _mean_distance(diff: torch.Tensor) -> torch.Tensor:
    """Mean over points of sqrt(|d|^2 + 1e-24): (B, V, 3) -> (B,)."""
    return torch.sqrt((diff * diff).sum(-1) + 1e-24).mean(-1)
