"""The batched PnP solver: closed-form start, Levenberg-Marquardt, covariance, validity.

Everything is in OpenCV's camera frame: x_cam = R x3d + t, pixels in the project's continuous
coordinates, K the (3, 3) intrinsic matrix (stages.wcpa.camera.Camera.K). Convert to the
challenge's R_t with stages.wcpa.camera.opencv_to_rt only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from stages.pnp.checks import sanitise
from stages.pnp.compiled import compiled_or_eager
from stages.pnp.cost import planar, transform
from stages.pnp.init import dlt_pose
from stages.pnp.rotation import orthogonalise, rvec_t
from stages.pnp.solver import covariance, levenberg_marquardt

FLOAT32_START_RTOL = 1e-4     # stop of the float32 LM that starts a float64 solve (benchmarks.bench_pnp)


@dataclass
class PnPResult:
    """Solutions of a batch of PnP problems (B problems).

    R (B, 3, 3), t (B, 3): OpenCV pose, x_cam = R x + t (t in the units of x3d).
    rvec_t (B, 6): the pose as (rotation vector in rad, t). cost (B,): the cost at the solution (see
    stages.pnp.cost). cov (B, 6, 6): covariance of the left increment (delta, dt), H^-1.
    valid (B,) bool: false for degenerate problems; their R, t, rvec_t, cost and cov are NaN in
    `solve_pnp`'s answer. iterations: LM iterations run (the most over the batch; a 0-dim
    tensor from the compiled masked LM, stages.pnp.solver).
    """

    R: torch.Tensor
    t: torch.Tensor
    rvec_t: torch.Tensor
    cost: torch.Tensor
    cov: torch.Tensor
    valid: torch.Tensor
    iterations: int | torch.Tensor

    def masked(self) -> "PnPResult":
        """The same result with NaN in every field of the invalid problems."""
        nan = torch.tensor(float("nan"), dtype=self.t.dtype, device=self.t.device)

        def mask(x: torch.Tensor) -> torch.Tensor:
            return torch.where(self.valid.view((-1,) + (1,) * (x.dim() - 1)), x, nan)

        return PnPResult(mask(self.R), mask(self.t), mask(self.rvec_t), mask(self.cost),
                         mask(self.cov), self.valid, self.iterations)


def uniform_weights(x2d: torch.Tensor) -> torch.Tensor:
    """Unit weights (B, N, 2) like x2d."""
    return torch.ones_like(x2d)


def solve_sanitised(x3d: torch.Tensor, x2d: torch.Tensor, w2d: torch.Tensor, K: torch.Tensor,
                    huber_delta: float | None = None, max_iters: int = 50,
                    start: tuple[torch.Tensor, torch.Tensor] | None = None,
                    compiled: bool = False) -> PnPResult:
    """Solve problems already passed through stages.pnp.checks.sanitise (no gradients).

    Points in planar layout (stages.pnp.cost.planar): x3d (B, 3, N), x2d, w2d (B, 2, N).
    start: a second start pose R (B, 3, 3), t (B, 3), e.g. the true pose in training; LM then
    also runs from it and each problem keeps the better solution (`_better`). From the
    closed-form start alone, planar or near-planar points can end in a local minimum tens of
    degrees off (docs/method.md); the EPro-PnP reference, in training, likewise starts from the
    true pose where its cost is below that of its own initial solver's pose. Rows of start that
    are not finite use the closed-form start.
    Every field is finite; `valid` only reflects the checks after the solve (the covariance is
    positive definite and the weighted points lie in front of the camera). compiled: the LM
    iteration through torch.compile where it runs masked (off the CPU: stages.pnp.solver)."""
    with torch.no_grad():
        R0, t0 = _float32_start(x3d, x2d, w2d, K, huber_delta, max_iters, compiled)
        if start is None:
            return _refine(x3d, x2d, w2d, K, R0, t0, huber_delta, max_iters, compiled)
        R1, t1 = _finite_or(start, R0, t0)
        twice = [torch.cat([x, x]) for x in (x3d, x2d, w2d)]
        K2 = K if K.dim() == 2 else torch.cat([K, K])
        both = _refine(*twice, K2, torch.cat([R0, R1]), torch.cat([t0, t1]), huber_delta,
                       max_iters, compiled)
        return _better(both, compiled)


def _finite_or(start: tuple[torch.Tensor, torch.Tensor], R0: torch.Tensor,
               t0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The start pose R (B, 3, 3), t (B, 3) in R0's dtype, (R0, t0) where it is not finite."""
    R, t = (x.to(R0.dtype) for x in start)
    finite = torch.isfinite(R).flatten(1).all(-1) & torch.isfinite(t).all(-1)
    return torch.where(finite[:, None, None], R, R0), torch.where(finite[:, None], t, t0)


def _refine(x3d, x2d, w2d, K, R0, t0, huber_delta, max_iters, compiled) -> PnPResult:
    """LM from R0 (B, 3, 3), t0 (B, 3) on x3d (B, 3, N), x2d, w2d (B, 2, N), then the
    covariance and the validity checks: the PnPResult of these starts."""
    R, t, cost, H, iters = levenberg_marquardt(x3d, x2d, w2d, K, R0, t0, huber_delta, max_iters,
                                               compiled=compiled)
    fields = compiled_or_eager(solution_fields, "the solution's checks", compiled)
    return PnPResult(R, t, *fields(R, t, cost, H, x3d, w2d), iters)


def solution_fields(R: torch.Tensor, t: torch.Tensor, cost: torch.Tensor, H: torch.Tensor,
                    x3d: torch.Tensor, w2d: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """rvec_t (B, 6), cost (B,), cov (B, 6, 6) and valid (B,) of LM solutions R (B, 3, 3), t (B, 3)
    with costs (B,) and normal matrices H (B, 6, 6), for points x3d (B, 3, N), weights w2d
    (B, 2, N): valid where the covariance is positive definite, the weighted points lie in front
    of the camera and the cost is finite."""
    cov, cov_ok = covariance(H)
    depth = transform(R, t, x3d)[:, 2]
    weighted = (w2d != 0).any(1)
    in_front = ((depth > 0) | ~weighted).all(-1)
    return rvec_t(R, t), cost, cov, cov_ok & in_front & torch.isfinite(cost)


def _better(both: PnPResult, compiled: bool = False) -> PnPResult:
    """Of the solutions of two starts stacked as rows (2B,), each problem's better one: a valid
    solution before an invalid one, then the lower cost (the mirror image of a planar problem
    behind the camera has the same cost)."""
    pick = compiled_or_eager(better_rows, "the better solutions", compiled)
    return PnPResult(*pick(both.valid, both.cost, both.R, both.t, both.rvec_t, both.cov), both.iterations)


def better_rows(valid: torch.Tensor, cost: torch.Tensor, *fields: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """R, t, rvec_t, cost, cov, valid of the better of two solutions stacked as rows (2B, ...)
    (see `_better`); valid, cost (2B,), fields: R, t, rvec_t, cov."""
    batch = valid.shape[0] // 2
    v1, v2 = valid[:batch], valid[batch:]
    lower = cost[batch:] < cost[:batch]
    take = (v2 & ~v1) | ((v2 == v1) & lower)

    def pick(x: torch.Tensor) -> torch.Tensor:
        return torch.where(take.view((-1,) + (1,) * (x.dim() - 1)), x[batch:], x[:batch])

    R, t, rvec, cov = (pick(x) for x in fields)
    return R, t, rvec, pick(cost), cov, pick(valid)


def _float32_start(x3d, x2d, w2d, K, huber_delta, max_iters, compiled):
    """Start pose R (B, 3, 3), t (B, 3): the DLT, refined by float32 LM first when the problem
    is in float64 (the float64 LM then needs two iterations: about 2x faster). The float32
    refinement stops at FLOAT32_START_RTOL, since float64 finishes it."""
    start = compiled_or_eager(dlt_pose, "the closed-form start", compiled)
    if x3d.dtype != torch.float64:
        return start(x3d, x2d, w2d, K)
    args = [x.float() for x in (x3d, x2d, w2d, K)]
    R, t, _, _, _ = levenberg_marquardt(*args, *start(*args), huber_delta, max_iters,
                                        cost_rtol=FLOAT32_START_RTOL, compiled=compiled)
    return orthogonalise(R.double()), t.double()


def solve_pnp(x3d: torch.Tensor, x2d: torch.Tensor, K: torch.Tensor,
              w2d: torch.Tensor | None = None, huber_delta: float | None = None,
              max_iters: int = 50) -> PnPResult:
    """Solve B PnP problems at once (no gradients; see stages.pnp.epro for those).

    x3d (B, N, 3) object points; x2d (B, N, 2) pixels; K (3, 3) or (B, 3, 3) intrinsics;
    w2d (B, N, 2) per-coordinate weights, 1 / sigma in pixels (default 1);
    huber_delta: Huber threshold on each point's weighted residual norm (None: least squares).
    Works in the inputs' dtype (float32 or float64) and device. Degenerate problems (NaN
    inputs, fewer than 6 weighted points, collinear points, singular at the solution) come back
    with valid = False and NaN fields; the others are unaffected.
    """
    w2d = uniform_weights(x2d) if w2d is None else w2d
    K = K.to(dtype=x3d.dtype, device=x3d.device)
    x3d_s, x2d_s, w2d_s, ok = sanitise(x3d.detach(), x2d.detach(), w2d.detach(), K)
    result = solve_sanitised(planar(x3d_s), planar(x2d_s), planar(w2d_s), K, huber_delta,
                             max_iters)
    result.valid = result.valid & ok
    return result.masked()
