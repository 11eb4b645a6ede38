"""Reprojection costs of many sampled poses per problem, chunked, with a hand-written backward.

The Monte Carlo loss needs the cost of S poses for each of B problems: B * S * N point
projections (256 * 512 * 1220 = 160 M). Autograd would keep several (B, S, N) arrays alive for
the backward pass; here the costs are evaluated without gradients, in chunks of poses
(`pose_costs`), and a zero term added to them (`cost_gradient`) carries their gradient: its
backward pass recomputes each chunk and accumulates the gradients w.r.t. x3d, x2d and w2d in
closed form. The sampled poses are constants (no gradient).

Cost of pose s of problem b: stages.pnp.cost.robust_cost of its weighted residuals.
Gradients, with e = d cost / d r (r for least squares, r * rho'(|r|) / |r| for Huber) times
the incoming gradient of cost_bs:
  d / d x2d = -w2d * sum_s e,   d / d w2d = sum_s (proj - x2d) * e,
  d / d x3d = sum_s R_s^T d cost / d X_s,  d cost / d X = (a_u, a_v, -(a_u X + a_v Y) / Z)
  with a_u = e_u w_u fx / Z, a_v = e_v w_v fy / Z.
Points in planar layout (stages.pnp.cost.planar).

The per-chunk arithmetic is written as plain elementwise expressions so that torch.compile
(`compiled=True`, stages.pnp.compiled) fuses each pass into one loop: about 10x faster than
eager on CPU, and no (B, S, N) array is materialised.
"""
from __future__ import annotations

import torch

from stages.pnp.compiled import compiled_or_eager
from stages.pnp.cost import intrinsics

# Sampled poses (all problems together) whose costs are evaluated at once, by default. On CPU
# the eager temporaries, chunk x N numbers each, must stay small: on the finetune's shapes
# 8192 poses took several times as long as 256 (`python -m benchmarks.bench_pnp --chunks`,
# docs/method.md). On other devices the chunk only bounds memory and fewer, larger chunks
# launch fewer kernels; 8192 there is not measured. Compiled, a chunk is one fused loop that
# holds no (chunk, N) array, so off the CPU a call is one chunk (COMPILED_DEVICE_CHUNK_POSES).
CPU_CHUNK_POSES = 256
DEVICE_CHUNK_POSES = 8192
COMPILED_DEVICE_CHUNK_POSES = 1 << 20


def default_chunk(device: torch.device, compiled: bool = False) -> int:
    """The default chunk size (poses) on `device`, for the eager or the compiled kernels."""
    if device.type == "cpu":
        return CPU_CHUNK_POSES
    return COMPILED_DEVICE_CHUNK_POSES if compiled else DEVICE_CHUNK_POSES


def _camera_ratios(R: torch.Tensor, t: torch.Tensor, x3d: torch.Tensor):
    """X / Z, Y / Z and 1 / Z, each (B, S, N), of poses R (B, S, 3, 3), t (B, S, 3) applied
    to points x3d (B, 3, N), written as plain arithmetic so that a compiler can fuse it."""
    x, y, z = x3d[:, None, 0], x3d[:, None, 1], x3d[:, None, 2]
    r = R[..., None]
    X = r[:, :, 0, 0] * x + r[:, :, 0, 1] * y + r[:, :, 0, 2] * z + t[:, :, 0, None]
    Y = r[:, :, 1, 0] * x + r[:, :, 1, 1] * y + r[:, :, 1, 2] * z + t[:, :, 1, None]
    Z = r[:, :, 2, 0] * x + r[:, :, 2, 1] * y + r[:, :, 2, 2] * z + t[:, :, 2, None]
    inv_z = 1 / Z
    return X * inv_z, Y * inv_z, inv_z


def _huber_scale(ru: torch.Tensor, rv: torch.Tensor, huber_delta: float) -> torch.Tensor:
    """rho'(s) / s of the residual norms s = |(ru, rv)|, (B, S, N)."""
    norm = torch.sqrt(ru * ru + rv * rv + torch.finfo(ru.dtype).tiny)
    return torch.where(norm <= huber_delta, torch.ones_like(norm), huber_delta / norm)


def chunk_costs(R, t, x3d, wfx, wfy, off_u, off_v, huber_delta: float | None) -> torch.Tensor:
    """Costs (B, S) of poses R (B, S, 3, 3), t (B, S, 3) for points x3d (B, 3, N) with the
    per-point factors of `point_terms` (B, 1, N)."""
    xz, yz, _ = _camera_ratios(R, t, x3d)
    ru = off_u + xz * wfx
    rv = off_v + yz * wfy
    sq = ru * ru + rv * rv
    if huber_delta is None:
        return 0.5 * sq.sum(-1)
    norm = torch.sqrt(sq + torch.finfo(sq.dtype).tiny)
    return torch.where(norm <= huber_delta, 0.5 * sq,
                       huber_delta * norm - 0.5 * huber_delta ** 2).sum(-1)


def chunk_gradient_sums(R, t, x3d, wfx, wfy, off_u, off_v, grad_costs,
                        huber_delta: float | None) -> tuple[torch.Tensor, ...]:
    """For a chunk of poses and the incoming gradient grad_costs (B, S): sums over the poses of
    e_u, e_v, (X/Z) e_u, (Y/Z) e_v, each (B, N) (e = d cost / d r times grad_costs), and the
    gradient w.r.t. x3d (B, 3, N)."""
    xz, yz, inv_z = _camera_ratios(R, t, x3d)
    ru = off_u + xz * wfx
    rv = off_v + yz * wfy
    go = grad_costs[..., None]
    if huber_delta is not None:
        go = go * _huber_scale(ru, rv, huber_delta)
    eu, ev = ru * go, rv * go
    xz_eu, yz_ev = xz * eu, yz * ev
    a_u = eu * wfx * inv_z                      # d / dX
    a_v = ev * wfy * inv_z                      # d / dY
    a_z = -(xz_eu * wfx + yz_ev * wfy) * inv_z  # d / dZ
    r = R[..., None]
    grad_x3d = torch.stack([(r[:, :, 0, j] * a_u + r[:, :, 1, j] * a_v + r[:, :, 2, j] * a_z)
                            .sum(1) for j in range(3)], 1)
    return eu.sum(1), ev.sum(1), xz_eu.sum(1), yz_ev.sum(1), grad_x3d


def _kernels(compiled: bool):
    """(point_terms, chunk_costs, chunk_gradient_sums, input_gradients), through torch.compile
    when asked (stages.pnp.compiled): on a GPU each is one call of a few fused kernels where
    eager code dispatches tens of small operators."""
    return tuple(compiled_or_eager(fn, "sample costs", compiled)
                 for fn in (point_terms, chunk_costs, chunk_gradient_sums, input_gradients))


def point_terms(x2d: torch.Tensor, w2d: torch.Tensor, K: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per-point factors (B, 1, N): w_u fx, w_v fy, w_u (cx - u), w_v (cy - v), of points x2d,
    w2d (B, 2, N) and K (B, 3, 3)."""
    fx, fy, cx, cy = intrinsics(K, x2d.shape[0])
    wu, wv = w2d[:, None, 0], w2d[:, None, 1]
    return (wu * fx[..., None], wv * fy[..., None], wu * (cx[..., None] - x2d[:, None, 0]),
            wv * (cy[..., None] - x2d[:, None, 1]))


def _chunks(n_samples: int, batch: int, chunk_size: int) -> list[slice]:
    """Slices over the sample axis with about chunk_size poses (all problems) per chunk."""
    step = max(1, chunk_size // max(batch, 1))
    return [slice(i, min(i + step, n_samples)) for i in range(0, n_samples, step)]


def pose_costs(x3d: torch.Tensor, x2d: torch.Tensor, w2d: torch.Tensor, K: torch.Tensor,
               R: torch.Tensor, t: torch.Tensor, huber_delta: float | None = None,
               chunk_size: int | None = None, compiled: bool = False) -> torch.Tensor:
    """Costs (B, S) of poses R (B, S, 3, 3), t (B, S, 3) for the problems x3d (B, 3, N), x2d,
    w2d (B, 2, N), K (3, 3) or (B, 3, 3), without gradients. chunk_size: poses (over all
    problems, at least one per problem) evaluated at once, `default_chunk` if None; memory is
    about 12 * chunk_size * N numbers. compiled: the fused kernel (torch.compile)."""
    chunk_size = default_chunk(x3d.device, compiled) if chunk_size is None else chunk_size
    terms_fn, costs_fn, _, _ = _kernels(compiled)
    with torch.no_grad():
        terms = terms_fn(x2d, w2d, K.expand(x3d.shape[0], 3, 3))
        costs = [costs_fn(R[:, c], t[:, c], x3d, *terms, huber_delta)
                 for c in _chunks(R.shape[1], R.shape[0], chunk_size)]
    return costs[0] if len(costs) == 1 else torch.cat(costs, 1)


class CostGradient(torch.autograd.Function):
    """zeros (B, S) = CostGradient.apply(x3d (B, 3, N), x2d (B, 2, N), w2d (B, 2, N), K (B, 3, 3),
    R (B, S, 3, 3), t (B, S, 3), huber_delta, chunk_size, compiled): a zero term whose gradient
    is that of the poses' costs. Added to costs computed without gradients (`pose_costs`), it
    makes them differentiable without evaluating them again; the backward pass evaluates every
    pose's gradient terms at once, however many calls made the costs."""

    @staticmethod
    def forward(ctx, x3d, x2d, w2d, K, R, t, huber_delta, chunk_size, compiled):
        ctx.save_for_backward(x3d, x2d, w2d, K, R, t)
        ctx.options = (huber_delta, chunk_size, compiled)
        return R.new_zeros(R.shape[:2])

    @staticmethod
    def backward(ctx, grad_costs):
        x3d, x2d, w2d, K, R, t = ctx.saved_tensors
        huber_delta, chunk_size, compiled = ctx.options
        terms_fn, _, sums_fn, gradients_fn = _kernels(compiled)
        terms = terms_fn(x2d, w2d, K)
        grad_costs = grad_costs.contiguous()
        sums = None
        for c in _chunks(R.shape[1], R.shape[0], chunk_size):
            part = sums_fn(R[:, c], t[:, c], x3d, *terms, grad_costs[:, c], huber_delta)
            sums = list(part) if sums is None else [total + p for total, p in zip(sums, part)]
        *point_sums, grad_x3d = sums
        return (grad_x3d, *gradients_fn(x2d, w2d, K, *point_sums), None, None, None, None, None, None)


def input_gradients(x2d: torch.Tensor, w2d: torch.Tensor, K: torch.Tensor, sum_eu: torch.Tensor,
                    sum_ev: torch.Tensor, sum_xz_eu: torch.Tensor, sum_yz_ev: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradients w.r.t. x2d and w2d (B, 2, N) from the per-point sums over the poses of
    `chunk_gradient_sums` (B, N each); K (B, 3, 3). (Its x3d gradient is a sum already.)"""
    fx, fy, cx, cy = intrinsics(K, x2d.shape[0])
    wu, wv = w2d[:, 0], w2d[:, 1]
    grad_x2d = -torch.stack([wu * sum_eu, wv * sum_ev], 1)
    grad_w2d = torch.stack([fx * sum_xz_eu + (cx - x2d[:, 0]) * sum_eu,
                            fy * sum_yz_ev + (cy - x2d[:, 1]) * sum_ev], 1)
    return grad_x2d, grad_w2d


def cost_gradient(x3d: torch.Tensor, x2d: torch.Tensor, w2d: torch.Tensor, K: torch.Tensor,
                  R: torch.Tensor, t: torch.Tensor, huber_delta: float | None = None,
                  chunk_size: int | None = None, compiled: bool = False) -> torch.Tensor:
    """Zeros (B, S) carrying the gradient of the costs of poses R (B, S, 3, 3), t (B, S, 3)
    (constants) w.r.t. x3d (B, 3, N), x2d, w2d (B, 2, N) (see CostGradient; arguments as
    `pose_costs`)."""
    chunk_size = default_chunk(x3d.device, compiled) if chunk_size is None else chunk_size
    return CostGradient.apply(x3d, x2d, w2d, K.expand(x3d.shape[0], 3, 3), R.detach(),
                              t.detach(), huber_delta, chunk_size, compiled)


def sample_costs(x3d: torch.Tensor, x2d: torch.Tensor, w2d: torch.Tensor, K: torch.Tensor,
                 R: torch.Tensor, t: torch.Tensor, huber_delta: float | None = None,
                 chunk_size: int | None = None, compiled: bool = False) -> torch.Tensor:
    """Costs (B, S) of poses R (B, S, 3, 3), t (B, S, 3) (constants), differentiable w.r.t.
    the problems x3d (B, 3, N), x2d, w2d (B, 2, N) (arguments as `pose_costs`)."""
    args = (x3d, x2d, w2d, K, R, t, huber_delta, chunk_size, compiled)
    return pose_costs(*args) + cost_gradient(*args)
