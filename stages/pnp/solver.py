"""Batched Levenberg-Marquardt on the 6-DoF pose, and the pose covariance.

Each problem of the batch keeps its own damping lambda; a step solves
(H + lambda diag(H)) step = -g with H, g the (IRLS) normal equations of stages.pnp.cost, and
is kept only if it lowers the cost (then lambda / 10, else lambda * 10). A problem stops when
the next step's predicted decrease of the cost (from the quadratic model, tested before that
step is evaluated, and only while no step has been rejected since the last accepted one) is
below `cost_rtol * (1 + cost)`, when a rejected step changes the cost by no more than rounding,
or when lambda reaches its maximum. Finished problems leave the batch on the CPU and are frozen
by masks elsewhere (`levenberg_marquardt`: the same solutions, without a host sync an iteration).
The covariance of the pose (left increment coordinates (delta, dt)) is H^-1 at the solution,
the inverse of J^T W J (W the robust weights), i.e. the Laplace approximation of exp(-cost).
"""
from __future__ import annotations

import torch

from stages.pnp.compiled import compiled_or_eager
from stages.pnp.cost import gauss_newton_system
from stages.pnp.rotation import apply_increment
from stages.pnp.smallmat import matvec

LAMBDA_START = 1e-4
LAMBDA_MIN, LAMBDA_MAX = 1e-12, 1e12


def _damped_step(H: torch.Tensor, g: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """The LM step (b, 6) solving (H + lam diag(H)) step = -g; zero where the solve fails."""
    diag = H.diagonal(dim1=-2, dim2=-1)
    floor = 1e-12 * diag.amax(-1, keepdim=True) + torch.finfo(H.dtype).tiny
    A = H + torch.diag_embed(lam[:, None] * diag + floor)
    x, ok = cholesky_solve(A, g)
    step = -x
    ok = ok & torch.isfinite(A).flatten(1).all(-1)
    return torch.where(ok[:, None] & torch.isfinite(step), step, torch.zeros_like(step))


def cholesky_solve(A: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, n) solving A x = b for symmetric A (B, n, n), b (B, n), and ok (B,) bool: A has a
    Cholesky factor. Eager code calls torch.linalg (`library_cholesky_solve`); inside
    torch.compile the factor and solves are written out (`unrolled_cholesky_solve`), which fuse
    into the compiled kernel where the library's calls would read their error codes on the host."""
    solve = unrolled_cholesky_solve if torch.compiler.is_compiling() else library_cholesky_solve
    return solve(A, b)


def library_cholesky_solve(A: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, n) solving A x = b for symmetric A (B, n, n), b (B, n), and ok (B,) bool: A has a
    Cholesky factor (torch.linalg, differentiable; where it has none, x is that of the identity)."""
    L, info = torch.linalg.cholesky_ex(A)
    ok = info == 0
    L = torch.where(ok[:, None, None], L, torch.eye(A.shape[-1], dtype=A.dtype, device=A.device))
    return torch.cholesky_solve(b[..., None], L)[..., 0], ok


def unrolled_cholesky_solve(A: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`library_cholesky_solve` in plain tensor arithmetic, each entry of the factor and of the
    two triangular solves written out (for small n: 6 here): inside torch.compile it fuses into
    the iteration's own kernel, where on a GPU the library's factor and solve read their error
    codes on the host (3 waits a LM iteration in bench_finetune's profile). ok: every pivot is
    positive (a NaN one is not), as for the library's factor; x is not meaningful where not ok."""
    L, ok = unrolled_cholesky(A)
    return unrolled_triangular_solves(L, b[..., None])[..., 0], ok


def unrolled_cholesky(A: torch.Tensor) -> tuple[list[list[torch.Tensor]], torch.Tensor]:
    """The lower Cholesky factor of symmetric A (..., n, n) as its entries L[i][j] (...,),
    j <= i, and ok (...,) bool: every pivot is positive (a non-positive pivot is replaced by 1)."""
    n = A.shape[-1]
    ok = torch.ones(A.shape[:-2], dtype=torch.bool, device=A.device)
    L: list[list[torch.Tensor]] = [[] for _ in range(n)]         # L[i][j], j <= i
    for j in range(n):
        pivot = _less_products(A[..., j, j], [(L[j][k], L[j][k]) for k in range(j)])
        ok = ok & (pivot > 0)
        L[j].append(torch.sqrt(torch.where(pivot > 0, pivot, torch.ones_like(pivot))))
        for i in range(j + 1, n):
            L[i].append(_less_products(A[..., i, j], [(L[i][k], L[j][k]) for k in range(j)]) / L[j][j])
    return L, ok


def unrolled_triangular_solves(L: list[list[torch.Tensor]], b: torch.Tensor) -> torch.Tensor:
    """x (..., n, k) solving L L^T x = b (..., n, k) for a factor given by its entries
    (`unrolled_cholesky`)."""
    n = len(L)
    L = [[entry[..., None] for entry in row] for row in L]
    y: list[torch.Tensor] = []
    for i in range(n):                                             # L y = b
        y.append(_less_products(b[..., i, :], [(L[i][k], y[k]) for k in range(i)]) / L[i][i])
    x: dict[int, torch.Tensor] = {}
    for i in reversed(range(n)):                                   # L^T x = y
        x[i] = _less_products(y[i], [(L[k][i], x[k]) for k in range(i + 1, n)]) / L[i][i]
    return torch.stack([x[i] for i in range(n)], -2)


def spd_inverse(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse (B, n, n) of symmetric A (B, n, n) through its Cholesky factor, and ok (B,)
    bool: A has one (where not, the identity). Eager code calls torch.linalg; inside
    torch.compile the factor and solves are written out (`unrolled_cholesky`), with no error
    code read on the host."""
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device).expand(A.shape)
    if torch.compiler.is_compiling():
        L, ok = unrolled_cholesky(A)
        return torch.where(ok[:, None, None], unrolled_triangular_solves(L, eye), eye), ok
    L, info = torch.linalg.cholesky_ex(A)
    ok = info == 0
    return torch.cholesky_inverse(torch.where(ok[:, None, None], L, eye)), ok


def _less_products(value: torch.Tensor, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """value - sum of a * c over the pairs (a, c), subtracted in order."""
    for a, c in pairs:
        value = value - a * c
    return value


class _State:
    """Pose, cost and normal equations of the active problems (system: how the latter are
    computed, stages.pnp.cost.gauss_newton_system or its compiled version)."""

    def __init__(self, R, t, x3d, x2d, w2d, K, huber_delta, system=gauss_newton_system):
        self.R, self.t = R, t
        self.cost, self.H, self.g = system(R, t, x3d, x2d, w2d, K, huber_delta)

    def select(self, keep: torch.Tensor, other: "_State") -> None:
        """Take other's values where keep (b,) is true."""
        for name in ("R", "t", "cost", "H", "g"):
            mine, theirs = getattr(self, name), getattr(other, name)
            shape = (-1,) + (1,) * (mine.dim() - 1)
            setattr(self, name, torch.where(keep.view(shape), theirs, mine))


def levenberg_marquardt(x3d: torch.Tensor, x2d: torch.Tensor, w2d: torch.Tensor,
                        K: torch.Tensor, R: torch.Tensor, t: torch.Tensor,
                        huber_delta: float | None = None, max_iters: int = 50,
                        cost_rtol: float | None = None, masked: bool | None = None,
                        compiled: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Refine poses by LM. Inputs in planar layout (stages.pnp.cost): x3d (B, 3, N), x2d,
    w2d (B, 2, N); K (3, 3) or (B, 3, 3); start R (B, 3, 3), t (B, 3). Returns R, t, cost (B,),
    H (B, 6, 6) at the solution and the iterations run. cost_rtol defaults to 1e-10 in float64
    (the pose then moves by < 1e-6 mm and 1e-8 rad with 1e-12) and 1e-7 in float32.

    Two loops give the same solutions. On the CPU (masked None or False) each iteration runs on
    the still active problems only, which takes a host sync per iteration (their count). On
    other devices (masked None or True) every problem goes through every iteration, the
    finished ones frozen by masks, and the loop asks whether any is left every CHECK_EVERY
    iterations: a GPU then runs the loop without waiting for the host (`_masked_lm`). compiled:
    the masked loop's iteration through torch.compile (a few fused kernels instead of about 300
    operators), and all max_iters iterations run without asking the host (a finished problem's
    iteration is a few idle kernels): the iterations then come back as a 0-dim tensor, which
    waits for the GPU only when read."""
    if cost_rtol is None:
        cost_rtol = 1e-10 if x3d.dtype == torch.float64 else 1e-7
    if masked is None:
        masked = x3d.device.type != "cpu"
    Kb = K.expand(x3d.shape[0], 3, 3)
    system = compiled_or_eager(gauss_newton_system, "the LM iteration", compiled and masked)
    state, points = _State(R, t, x3d, x2d, w2d, Kb, huber_delta, system), (x3d, x2d, w2d, Kb)
    if masked:
        return _masked_lm(state, points, huber_delta, max_iters, cost_rtol, compiled)
    return _compacting_lm(state, points, huber_delta, max_iters, cost_rtol)


CHECK_EVERY = 4      # masked LM: iterations between the host's checks for a finished batch


def _proposal(state: _State, lam: torch.Tensor, fresh: torch.Tensor,
              cost_rtol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The next LM steps (b, 6) and which problems have converged (b,) bool: the step's
    predicted decrease is below cost_rtol (1 + cost), tested only while no step has been
    rejected since the last accepted one (fresh)."""
    step = _damped_step(state.H, state.g, lam)
    curvature = (step * matvec(state.H, step)).sum(-1)
    predicted = -(step * state.g).sum(-1) - 0.5 * curvature
    return step, fresh & (predicted <= cost_rtol * (1 + state.cost))


def _try_step(state: _State, step: torch.Tensor, lam: torch.Tensor, points: tuple, huber_delta,
              active: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Evaluate the steps (b, 6) and keep those that lower the cost (state updated in place).
    points: (x3d, x2d, w2d, K) of the problems. active (b,) bool: the problems that take part
    (None: all); the others keep their state, lam and fresh. Returns lam, fresh (an accepted
    step) and done (b,) bool: a rejected step changed the cost by no more than rounding, lam
    reached its maximum or the cost is not finite."""
    eps = torch.finfo(state.cost.dtype).eps
    trial = _State(*apply_increment(state.R, state.t, step), *points, huber_delta)
    accept = torch.isfinite(trial.cost) & (trial.cost < state.cost)
    unchanged = (trial.cost - state.cost).abs() <= 100 * eps * state.cost.abs()
    if active is not None:
        accept = accept & active
    state.select(accept, trial)
    new_lam = torch.where(accept, lam / 10, lam * 10).clamp(LAMBDA_MIN, LAMBDA_MAX)
    done = (~accept & unchanged) | (new_lam >= LAMBDA_MAX) | ~torch.isfinite(state.cost)
    if active is None:
        return new_lam, accept, done
    return torch.where(active, new_lam, lam), accept, done & active


def _compacting_lm(state: _State, points: tuple, huber_delta, max_iters: int, cost_rtol: float):
    """LM over the still active problems only (see levenberg_marquardt)."""
    R_out, t_out = state.R.clone(), state.t.clone()
    cost_out = torch.empty_like(state.cost)
    H_out = torch.empty_like(state.H)
    index = torch.arange(len(state.cost), device=state.cost.device)
    lam = torch.full_like(state.cost, LAMBDA_START)
    fresh = torch.ones_like(state.cost, dtype=torch.bool)     # no step rejected since the last accepted one
    iters = 0
    for iters in range(1, max_iters + 1):
        step, converged = _proposal(state, lam, fresh, cost_rtol)
        if converged.any():          # stop before evaluating a step that could not help
            _store(R_out, t_out, cost_out, H_out, index[converged], state, converged)
            if converged.all():
                break
            state, (index, lam, step, *points) = _active(~converged, state, index, lam, step, *points)
        lam, fresh, done = _try_step(state, step, lam, points, huber_delta)
        if iters == max_iters:
            done = torch.ones_like(done)
        _store(R_out, t_out, cost_out, H_out, index[done], state, done)
        if done.all():
            break
        state, (index, lam, fresh, *points) = _active(~done, state, index, lam, fresh, *points)
    return R_out, t_out, cost_out, H_out, iters


def _masked_lm(state: _State, points: tuple, huber_delta, max_iters: int, cost_rtol: float,
               compiled: bool = False):
    """LM over every problem, the finished ones frozen (see levenberg_marquardt); compiled: the
    iteration through torch.compile (stages.pnp.compiled)."""
    iteration = compiled_or_eager(_masked_iteration, "the LM iteration", compiled)
    lam = torch.full_like(state.cost, LAMBDA_START)
    fresh = torch.ones_like(state.cost, dtype=torch.bool)
    active = torch.ones_like(fresh)
    iterations = torch.zeros_like(state.cost, dtype=torch.int32)    # per problem, as the compacting loop counts
    values = (state.R, state.t, state.cost, state.H, state.g, lam, fresh, active, iterations)
    for iters in range(1, max_iters + 1):
        values = iteration(*values, *points, huber_delta, cost_rtol)
        if not compiled and iters % CHECK_EVERY == 0 and not bool(values[7].any()):
            break
    R, t, cost, H, _, _, _, _, iterations = values
    if not len(iterations):
        return R, t, cost, H, 0
    return R, t, cost, H, iterations.max() if compiled else int(iterations.max())


def _masked_iteration(R, t, cost, H, g, lam, fresh, active, iterations, x3d, x2d, w2d, K, huber_delta, cost_rtol):
    """One iteration of the masked loop on its tensors (the state's R, t, cost, H, g; lam, fresh,
    active (b,) bool and the per-problem iteration count) -> the same tensors after it."""
    state = _State.__new__(_State)
    state.R, state.t, state.cost, state.H, state.g = R, t, cost, H, g
    iterations = iterations + active.int()
    step, converged = _proposal(state, lam, fresh, cost_rtol)
    active = active & ~converged
    lam, accepted, done = _try_step(state, step, lam, (x3d, x2d, w2d, K), huber_delta, active)
    fresh = torch.where(active, accepted, fresh)
    return state.R, state.t, state.cost, state.H, state.g, lam, fresh, active & ~done, iterations


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
    """Pose covariance H^-1 (B, 6, 6) and whether H is positive definite and not too
    ill-conditioned (B,) bool. Where it is not (a degenerate problem), the covariance returned
    is the identity.

    The condition is that of the diagonally scaled Hn (unit diagonal): tr(Hn) tr(Hn^-1) must
    stay below 1 / (1e3 eps). It lies between cond(Hn) and 36 cond(Hn) (for a 6 x 6 matrix
    lambda_max <= tr <= 6 lambda_max), and needs no eigenvalues (on a GPU the library's would
    wait for the host); faces measure cond 10-60 and this product 75-190 (float32's limit:
    8,400)."""
    finite = torch.isfinite(H).flatten(1).all(-1)
    eye = torch.eye(6, dtype=H.dtype, device=H.device).expand(H.shape)
    H = torch.where(finite[:, None, None], H, eye)
    scale = H.diagonal(dim1=-2, dim2=-1).clamp_min(torch.finfo(H.dtype).tiny).sqrt()
    Hn = H / (scale[:, :, None] * scale[:, None, :])
    inverse, factor_ok = spd_inverse(Hn)
    spread = Hn.diagonal(dim1=-2, dim2=-1).sum(-1) * inverse.diagonal(dim1=-2, dim2=-1).sum(-1)
    ok = finite & factor_ok & (spread * 1e3 * torch.finfo(H.dtype).eps < 1)
    cov = inverse / (scale[:, :, None] * scale[:, None, :])
    return torch.where(ok[:, None, None], cov, eye), ok
