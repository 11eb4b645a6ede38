"""EPro-PnP (Chen et al., CVPR 2022): the pose as a distribution, its Monte Carlo NLL loss.

The pose y = (R, t) of a problem has the density p(y) = exp(-cost(y)) / Z with respect to the
Haar measure on rotations (normalised to match Lebesgue measure on rotation vectors near any
rotation) times Lebesgue measure on translations. The training loss of a problem is the
negative log-likelihood of its ground-truth pose,
    loss = cost(y_gt) + log Z,
differentiable w.r.t. x2d, x3d and w2d. Z is estimated by AMIS (stages.pnp.amis) in the local
coordinates y = (exp(delta) R*, t* + dt) around the LM solution (R*, t*), starting from its
Laplace approximation N(0, H^-1); the Haar density in these coordinates is
stages.pnp.rotation.haar_log_density, and |delta| < pi keeps the chart one-to-one.
With correct weights the cost's scale is meaningful: scaling every weight by s adds
cost * (s^2 - 1) to cost(y_gt) and about -6 log s to log Z, which is what trains w2d.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from stages.pnp.amis import amis_log_normaliser
from stages.pnp.api import PnPResult, solve_sanitised, uniform_weights
from stages.pnp.checks import sanitise
from stages.pnp.compiled import compiled_or_eager
from stages.pnp.cost import planar, residuals, robust_cost
from stages.pnp.diffpose import gauss_newton_pose
from stages.pnp.rotation import haar_log_density, so3_exp
from stages.pnp.sample_cost import cost_gradient, pose_costs
from stages.pnp.smallmat import matmul

MINIMUM_RTOL = 1e-4     # float32 rounding of a cost: below 1e-5 relative (measured 6e-6)


@dataclass
class EProPnPOutput:
    """Per-problem outputs of `epro_pnp` (B problems).

    loss (B,): NLL of the ground-truth pose (0 where mask is false); mask (B,) bool: problems
    that count (well-posed, solved, a solution whose cost is not above the ground truth's,
    finite ground truth and loss); take the mean of loss[mask]. cost_gt (B,), log_z (B,): the two terms of the loss. ess (B,): effective sample
    size of the final importance weights. R (B, 3, 3), t (B, 3): the differentiable pose (one
    Gauss-Newton step from the LM solution; for eq. 5, see stages.pnp.diffpose.pnp_loss).
    solution: the LM solution (no gradients).
    """

    loss: torch.Tensor
    mask: torch.Tensor
    cost_gt: torch.Tensor
    log_z: torch.Tensor
    ess: torch.Tensor
    R: torch.Tensor
    t: torch.Tensor
    solution: PnPResult


def pose_log_normaliser(x3d: torch.Tensor, x2d: torch.Tensor, w2d: torch.Tensor,
                        K: torch.Tensor, R0: torch.Tensor, t0: torch.Tensor, cov: torch.Tensor,
                        huber_delta: float | None = None, n_samples: int = 512,
                        n_iters: int = 4, chunk_size: int | None = None, dof: int = 3,
                        compiled: bool = False, generator: torch.Generator | None = None):
    """AMIS estimate (stages.pnp.amis.NormaliserEstimate) of log Z = log int exp(-cost) d mu
    around R0 (B, 3, 3), t0 (B, 3) with first proposal covariance cov (B, 6, 6). Points in
    planar layout: x3d (B, 3, N), x2d, w2d (B, 2, N). The sampled poses' costs are evaluated
    without gradients (`pose_costs`), and their gradient is attached to all of them at once
    (`cost_gradient`)."""
    R0, t0 = R0.detach(), t0.detach()
    pose_terms = compiled_or_eager(sample_pose_terms, "the sampled poses", compiled)
    cost_args = (huber_delta, chunk_size, compiled)

    def neg_log_integrand(y: torch.Tensor) -> torch.Tensor:
        R, t, rest = pose_terms(y, R0, t0)
        return pose_costs(x3d, x2d, w2d, K, R, t, *cost_args) + rest

    def with_gradient(y: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            R, t, _ = pose_terms(y, R0, t0)
        return values + cost_gradient(x3d, x2d, w2d, K, R, t, *cost_args)

    mean = torch.zeros_like(t0.new_zeros(t0.shape[0], 6))
    return amis_log_normaliser(neg_log_integrand, mean, cov, n_samples, n_iters, dof, generator,
                               with_gradient, compiled)


def sample_pose_terms(y: torch.Tensor, R0: torch.Tensor, t0: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The poses R (B, S, 3, 3), t (B, S, 3) at local coordinates y (B, S, 6) around R0
    (B, 3, 3), t0 (B, 3), and the rest of -log integrand there (B, S): minus the log Haar
    density, +inf outside the chart (|delta| >= pi)."""
    R = matmul(so3_exp(y[..., :3]), R0[:, None])
    t = t0[:, None] + y[..., 3:]
    inside = y[..., :3].norm(dim=-1) < math.pi
    return R, t, torch.where(inside, -haar_log_density(y[..., :3]), math.inf)


def epro_pnp(x3d: torch.Tensor, x2d: torch.Tensor, w2d: torch.Tensor | None, K: torch.Tensor,
             R_gt: torch.Tensor, t_gt: torch.Tensor, n_samples: int = 512, n_iters: int = 4,
             chunk_size: int | None = None, huber_delta: float | None = None, dof: int = 3,
             compiled: bool = False, generator: torch.Generator | None = None,
             solution: PnPResult | None = None, max_iters: int = 50) -> EProPnPOutput:
    """The EPro-PnP loss and the differentiable pose of B problems.

    x3d (B, N, 3) object points, x2d (B, N, 2) pixels, w2d (B, N, 2) weights 1 / sigma (None:
    1), all differentiable; K (3, 3) or (B, 3, 3); R_gt (B, 3, 3), t_gt (B, 3) the true OpenCV
    poses. n_samples: Monte Carlo samples per problem, over n_iters AMIS proposals; chunk_size:
    sampled poses (all problems together) whose costs are evaluated at once (None: the
    device's default, stages.pnp.sample_cost.default_chunk); dof: degrees of
    freedom of the Student-t proposals; compiled: the layer's steps through torch.compile (the
    checks, the closed-form start, off the CPU the LM iteration, the AMIS draws, refits and sample
    costs, the loss and the differentiable pose: stages.pnp.compiled); generator: for
    reproducible samples. solution: a given LM solution (on the same inputs) instead of solving;
    the solve runs at most max_iters LM iterations from both the closed-form start and the true
    pose (stages.pnp.api).
    Degenerate problems, and those whose solution is not a minimum the loss can trust (its
    cost is above the true pose's, `is_minimum`), are masked out and get zero loss and zero
    gradients.
    """
    w2d = uniform_weights(x2d) if w2d is None else w2d
    K = K.to(dtype=x3d.dtype, device=x3d.device)
    R_gt, t_gt = R_gt.to(x3d.dtype), t_gt.to(x3d.dtype)
    x3d_p, x2d_p, w2d_p, ok = compiled_or_eager(planar_sanitised, "the degeneracy checks", compiled)(x3d, x2d, w2d, K)
    if solution is None:
        solution = solve_sanitised(x3d_p.detach(), x2d_p.detach(), w2d_p.detach(), K,
                                   huber_delta, max_iters, start=(R_gt, t_gt), compiled=compiled)
        solution.valid = solution.valid & ok
    start = compiled_or_eager(start_and_true_cost, "the true pose's cost", compiled)
    valid = solution.valid & ok
    gt_ok, R0, t0, cov, cost_gt = start(solution.R, solution.t, solution.cov, valid, R_gt, t_gt, x3d_p, x2d_p, w2d_p,
                                        K, huber_delta)
    estimate = pose_log_normaliser(x3d_p, x2d_p, w2d_p, K, R0, t0, cov, huber_delta,
                                   n_samples, n_iters, chunk_size, dof, compiled, generator)
    loss, mask = compiled_or_eager(masked_loss, "the loss", compiled)(cost_gt, estimate.log_z, valid & gt_ok,
                                                                       solution.cost)
    step = compiled_or_eager(gauss_newton_pose, "the differentiable pose", compiled)
    R, t = step(x3d_p, x2d_p, w2d_p, K, R0, t0, huber_delta)
    return EProPnPOutput(loss, mask, cost_gt, estimate.log_z, estimate.ess, R, t, solution)


def planar_sanitised(x3d: torch.Tensor, x2d: torch.Tensor, w2d: torch.Tensor, K: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """stages.pnp.checks.sanitise of x3d (B, N, 3), x2d, w2d (B, N, 2), its outputs in planar
    layout (stages.pnp.cost.planar): x3d (B, 3, N), x2d, w2d (B, 2, N) and ok (B,) bool."""
    x3d_s, x2d_s, w2d_s, ok = sanitise(x3d, x2d, w2d, K)
    return planar(x3d_s), planar(x2d_s), planar(w2d_s), ok


def start_and_true_cost(R: torch.Tensor, t: torch.Tensor, cov: torch.Tensor, valid: torch.Tensor,
                        R_gt: torch.Tensor, t_gt: torch.Tensor, x3d: torch.Tensor, x2d: torch.Tensor,
                        w2d: torch.Tensor, K: torch.Tensor, huber_delta: float | None
                        ) -> tuple[torch.Tensor, ...]:
    """From the LM solutions R (B, 3, 3), t (B, 3), cov (B, 6, 6), valid (B,) bool and the true
    poses R_gt, t_gt: gt_ok (B,) bool (a finite true pose), the AMIS start R0, t0, cov
    (`_finite_start`) and the true pose's cost (B,) on the planar points x3d (B, 3, N), x2d,
    w2d (B, 2, N) (the start pose's where the true one is not finite)."""
    R0, t0, cov = _finite_start(R, t, cov, valid)
    gt_ok = torch.isfinite(R_gt).flatten(1).all(-1) & torch.isfinite(t_gt).all(-1)
    R_gt = torch.where(gt_ok[:, None, None], R_gt, R0)
    t_gt = torch.where(gt_ok[:, None], t_gt, t0)
    return gt_ok, R0, t0, cov, robust_cost(residuals(R_gt, t_gt, x3d, x2d, w2d, K), huber_delta)


def masked_loss(cost_gt: torch.Tensor, log_z: torch.Tensor, usable: torch.Tensor,
                cost: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss cost_gt + log_z (B,), 0 outside its mask, and the mask (B,) bool: usable
    (a valid solution and a finite true pose), a solution whose cost (B,) `is_minimum` and a
    finite loss."""
    loss = cost_gt + log_z
    mask = usable & is_minimum(cost, cost_gt.detach()) & torch.isfinite(loss.detach())
    return torch.where(mask, loss, torch.zeros_like(loss)), mask


def is_minimum(cost: torch.Tensor, cost_gt: torch.Tensor) -> torch.Tensor:
    """(B,) bool: the solutions' costs (B,) are not above the true poses' costs cost_gt (B,)
    by more than MINIMUM_RTOL (1 + cost). A solution above it is not the global minimum (a
    local one, or unconverged), and log Z estimated around it misses the mass near the true
    pose: the loss, cost_gt + log Z, would come out too low by at least the difference."""
    return cost_gt >= cost - MINIMUM_RTOL * (1 + cost.abs())


def _finite_start(R: torch.Tensor, t: torch.Tensor, cov: torch.Tensor,
                  valid: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The solutions' R (B, 3, 3), t (B, 3), cov (B, 6, 6); a harmless stand-in (identity
    rotation, unit depth, unit covariance) where a solution is not valid (B,) bool."""
    eye3 = torch.eye(3, dtype=t.dtype, device=t.device)
    unit_t = torch.zeros_like(t)
    unit_t[:, 2] = 1
    eye6 = torch.eye(6, dtype=t.dtype, device=t.device)
    keep = valid[:, None, None]
    return torch.where(keep, R, eye3), torch.where(valid[:, None], t, unit_t), torch.where(keep, cov, eye6)
