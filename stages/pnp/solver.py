"""Batched Levenberg-Marquardt on the 6-DoF pose, and the pose covariance.

Each problem of the batch keeps its own damping lambda; a step solves
(H + lambda diag(H)) step = -g with H, g the (IRLS) normal equations of stages.pnp.cost, and
is kept only if it lowers the cost (then lambda / 10, else lambda * 10). A problem stops when
the next step's predicted decrease of the cost (from the quadratic model, tested before that
step is evaluated, and only while no step has been rejected since the last accepted one) is
below `cost_rtol * (1 + cost)`, when a rejected step changes the cost by no more than rounding,
or when lambda reaches its maximum; the iterations then run on the still active problems only.
The covariance of the pose (left increment coordinates (delta, dt)) is H^-1 at the solution,
the inverse of J^T W J (W the robust weights), i.e. the Laplace approximation of exp(-cost).
"""
from __future__ import annotations

import torch

from stages.pnp.cost import gauss_newton_system
from stages.pnp.rotation import apply_increment

LAMBDA_START = 1e-4
LAMBDA_MIN, LAMBDA_MAX = 1e-12, 1e12


def _damped_step(H: torch.Tensor, g: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """The LM step (b, 6) solving (H + lam diag(H)) step = -g; zero where the solve fails."""
    diag = H.diagonal(dim1=-2, dim2=-1)
    floor = 1e-12 * diag.amax(-1, keepdim=True) + torch.finfo(H.dtype).tiny
    A = H + torch.diag_embed(lam[:, None] * diag + floor)
    L, info = torch.linalg.cholesky_ex(A)
    ok = (info == 0) & torch.isfinite(A).flatten(1).all(-1)
    L = torch.where(ok[:, None, None], L, torch.eye(6, dtype=H.dtype, device=H.device))
    step = -torch.cholesky_solve(g[..., None], L)[..., 0]
    return torch.where(ok[:, None] & torch.isfinite(step), step, torch.zeros_like(step))


class _State:
    """Pose, cost and normal equations of the active problems."""

    def __init__(self, R, t, x3d, x2d, w2d, K, huber_delta):
        self.R, self.t = R, t
        self.cost, self.H, self.g = gauss_newton_system(R, t, x3d, x2d, w2d, K, huber_delta)

    def select(self, keep: torch.Tensor, other: "_State") -> None:
        """Take other's values where keep (b,) is true."""
        for name in ("R", "t", "cost", "H", "g"):
            mine, theirs = getattr(self, name), getattr(other, name)
            shape = (-1,) + (1,) * (mine.dim() - 1)
            setattr(self, name, torch.where(keep.view(shape), theirs, mine))


def levenberg_marquardt(x3d: torch.Tensor, x2d: torch.Tensor, w2d: torch.Tensor,
                        K: torch.Tensor, R: torch.Tensor, t: torch.Tensor,
                        huber_delta: float | None = None, max_iters: int = 50,
                        cost_rtol: float | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Refine poses by LM. Inputs in planar layout (stages.pnp.cost): x3d (B, 3, N), x2d,
    w2d (B, 2, N); K (3, 3) or (B, 3, 3); start R (B, 3, 3), t (B, 3). Returns R, t, cost (B,),
    H (B, 6, 6) at the solution and the iterations run. cost_rtol defaults to 1e-10 in float64
    (the pose then moves by < 1e-6 mm and 1e-8 rad with 1e-12) and 1e-7 in float32."""
    eps = torch.finfo(x3d.dtype).eps
    if cost_rtol is None:
        cost_rtol = 1e-10 if x3d.dtype == torch.float64 else 1e-7
    R_out, t_out = R.clone(), t.clone()
    cost_out = torch.empty_like(t[:, 0])
    H_out = torch.empty(t.shape[:1] + (6, 6), dtype=t.dtype, device=t.device)
    Kb = K.expand(x3d.shape[0], 3, 3)
    index = torch.arange(x3d.shape[0], device=x3d.device)
    state = _State(R, t, x3d, x2d, w2d, Kb, huber_delta)
    lam = torch.full_like(state.cost, LAMBDA_START)
    fresh = torch.ones_like(state.cost, dtype=torch.bool)     # no step rejected since the last accepted one
    iters = 0
    for iters in range(1, max_iters + 1):
        step = _damped_step(state.H, state.g, lam)
        curvature = (step * (state.H @ step[..., None])[..., 0]).sum(-1)
        predicted = -(step * state.g).sum(-1) - 0.5 * curvature
        converged = fresh & (predicted <= cost_rtol * (1 + state.cost))
        if converged.any():          # stop before evaluating a step that could not help
            _store(R_out, t_out, cost_out, H_out, index[converged], state, converged)
            if converged.all():
                break
            state, (index, lam, step, x3d, x2d, w2d, Kb) = _active(~converged, state, index, lam, step,
                                                                   x3d, x2d, w2d, Kb)
        R_new, t_new = apply_increment(state.R, state.t, step)
        trial = _State(R_new, t_new, x3d, x2d, w2d, Kb, huber_delta)
        accept = torch.isfinite(trial.cost) & (trial.cost < state.cost)
        unchanged = (trial.cost - state.cost).abs() <= 100 * eps * state.cost.abs()
        state.select(accept, trial)
        lam = torch.where(accept, lam / 10, lam * 10).clamp(LAMBDA_MIN, LAMBDA_MAX)
        fresh = accept
        done = (~accept & unchanged) | (lam >= LAMBDA_MAX) | ~torch.isfinite(state.cost)
        if iters == max_iters:
            done = torch.ones_like(done)
        _store(R_out, t_out, cost_out, H_out, index[done], state, done)
        if done.all():
            break
        state, (index, lam, fresh, x3d, x2d, w2d, Kb) = _active(~done, state, index, lam, fresh,
                                                               x3d, x2d, w2d, Kb)
    return R_out, t_out, cost_out, H_out, iters


def _store(R_out, t_out, cost_out, H_out, rows, state: _State, mask: torch.Tensor) -> None:
    """Write the finished problems (mask over the active ones) to the output rows."""
    R_out[rows] = state.R[mask]
    t_out[rows] = state.t[mask]
    cost_out[rows] = state.cost[mask]
    H_out[rows] = state.H[mask]


def _active(keep: torch.Tensor, state: _State, *tensors: torch.Tensor) -> tuple[_State, list]:
    """The state and the per-problem tensors (b, ...) of the problems where keep (b,) is true."""
    return _subset(state, keep), [x[keep] for x in tensors]


def _subset(state: _State, keep: torch.Tensor) -> _State:
    """The state of the problems where keep (b,) is true."""
    sub = _State.__new__(_State)
    for name in ("R", "t", "cost", "H", "g"):
        setattr(sub, name, getattr(state, name)[keep])
    return sub


def covariance(H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pose covariance H^-1 (B, 6, 6) and whether H is positive definite (B,) bool.

    Where it is not (a degenerate problem), the covariance returned is the identity."""
    finite = torch.isfinite(H).flatten(1).all(-1)
    eye = torch.eye(6, dtype=H.dtype, device=H.device).expand(H.shape)
    H = torch.where(finite[:, None, None], H, eye)
    scale = H.diagonal(dim1=-2, dim2=-1).clamp_min(torch.finfo(H.dtype).tiny).sqrt()
    Hn = H / (scale[:, :, None] * scale[:, None, :])
    eigenvalues = torch.linalg.eigvalsh(Hn)
    cond_ok = eigenvalues[:, 0] > 1e3 * torch.finfo(H.dtype).eps * eigenvalues[:, -1]
    L, info = torch.linalg.cholesky_ex(Hn)
    ok = finite & cond_ok & (info == 0)
    L = torch.where(ok[:, None, None], L, eye)
    cov = torch.cholesky_inverse(L) / (scale[:, :, None] * scale[:, None, :])
    return torch.where(ok[:, None, None], cov, eye), ok
