"""Reprojection costs of many sampled poses per problem, chunked, with a hand-written backward.

The Monte Carlo loss needs the cost of S poses for each of B problems: B * S * N point
projections (256 * 512 * 1220 = 160 M). Autograd would keep several (B, S, N) arrays alive for
the backward pass; here the forward pass keeps only the inputs, evaluates the costs in chunks
of poses, and the backward pass recomputes each chunk and accumulates the gradients w.r.t.
x3d, x2d and w2d in closed form. The sampled poses are constants (no gradient).

Cost of pose s of problem b: stages.pnp.cost.robust_cost of its weighted residuals.
Gradients, with e = d cost / d r (r for least squares, r * rho'(|r|) / |r| for Huber) times
the incoming gradient of cost_bs:
  d / d x2d = -w2d * sum_s e,   d / d w2d = sum_s (proj - x2d) * e,
  d / d x3d = sum_s R_s^T d cost / d X_s,  d cost / d X = (a_u, a_v, -(a_u X + a_v Y) / Z)
  with a_u = e_u w_u fx / Z, a_v = e_v w_v fy / Z.
Points in planar layout (stages.pnp.cost.planar).
"""
from __future__ import annotations

import torch

from stages.pnp.cost import intrinsics


class _Chunk:
    """Residual terms of one chunk of poses: X (B, S, 3, N), ratios and residuals (B, S, N)."""

    def __init__(self, R, t, x3d, terms):
        B, S = R.shape[:2]
        wfx, wfy, off_u, off_v = terms
        X = (R.reshape(B, S * 3, 3) @ x3d).view(B, S, 3, -1) + t[..., None]
        self.inv_z = X[:, :, 2].reciprocal()
        self.xz = X[:, :, 0] * self.inv_z
        self.yz = X[:, :, 1] * self.inv_z
        self.ru = torch.addcmul(off_u, self.xz, wfx)
        self.rv = torch.addcmul(off_v, self.yz, wfy)

    def costs(self, huber_delta: float | None) -> torch.Tensor:
        """(B, S) robust costs."""
        sq = torch.addcmul(self.ru * self.ru, self.rv, self.rv)
        if huber_delta is None:
            return 0.5 * sq.sum(-1)
        norm = sq.clamp_min(torch.finfo(sq.dtype).tiny).sqrt()
        return torch.where(norm <= huber_delta, 0.5 * sq,
                           huber_delta * norm - 0.5 * huber_delta ** 2).sum(-1)

    def residual_gradients(self, huber_delta: float | None) -> tuple[torch.Tensor, torch.Tensor]:
        """d cost / d r_u and d cost / d r_v, each (B, S, N)."""
        if huber_delta is None:
            return self.ru, self.rv
        norm = torch.addcmul(self.ru * self.ru, self.rv, self.rv).clamp_min(
            torch.finfo(self.ru.dtype).tiny).sqrt()
        scale = torch.where(norm <= huber_delta, torch.ones_like(norm), huber_delta / norm)
        return self.ru * scale, self.rv * scale


def _point_terms(x2d: torch.Tensor, w2d: torch.Tensor, K: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per-point factors (B, 1, N): w_u fx, w_v fy, w_u (cx - u), w_v (cy - v)."""
    fx, fy, cx, cy = intrinsics(K, x2d.shape[0])
    wu, wv = w2d[:, None, 0], w2d[:, None, 1]
    return (wu * fx[..., None], wv * fy[..., None], wu * (cx[..., None] - x2d[:, None, 0]),
            wv * (cy[..., None] - x2d[:, None, 1]))


def _chunks(n_samples: int, batch: int, chunk_size: int) -> list[slice]:
    """Slices over the sample axis with about chunk_size poses (all problems) per chunk."""
    step = max(1, chunk_size // max(batch, 1))
    return [slice(i, min(i + step, n_samples)) for i in range(0, n_samples, step)]


class SampleCost(torch.autograd.Function):
    """costs (B, S) = SampleCost.apply(x3d (B, 3, N), x2d (B, 2, N), w2d (B, 2, N), K,
    R (B, S, 3, 3), t (B, S, 3), huber_delta, chunk_size)."""

    @staticmethod
    def forward(ctx, x3d, x2d, w2d, K, R, t, huber_delta, chunk_size):
        ctx.save_for_backward(x3d, x2d, w2d, K, R, t)
        ctx.huber_delta, ctx.chunk_size = huber_delta, chunk_size
        terms = _point_terms(x2d, w2d, K)
        costs = [_Chunk(R[:, c], t[:, c], x3d, terms).costs(huber_delta)
                 for c in _chunks(R.shape[1], R.shape[0], chunk_size)]
        return torch.cat(costs, 1)

    @staticmethod
    def backward(ctx, grad_costs):
        x3d, x2d, w2d, K, R, t = ctx.saved_tensors
        fx, fy, cx, cy = intrinsics(K, x3d.shape[0])
        terms = _point_terms(x2d, w2d, K)
        wfx, wfy = terms[0][:, 0], terms[1][:, 0]
        sum_eu = torch.zeros_like(x2d[:, 0])
        sum_ev, sum_xz_eu, sum_yz_ev = (torch.zeros_like(sum_eu) for _ in range(3))
        grad_x3d = torch.zeros_like(x3d)
        for c in _chunks(R.shape[1], R.shape[0], ctx.chunk_size):
            chunk = _Chunk(R[:, c], t[:, c], x3d, terms)
            gu, gv = chunk.residual_gradients(ctx.huber_delta)
            go = grad_costs[:, c, None]
            eu, ev = gu * go, gv * go
            xz_eu, yz_ev = chunk.xz * eu, chunk.yz * ev
            sum_eu += eu.sum(1)
            sum_ev += ev.sum(1)
            sum_xz_eu += xz_eu.sum(1)
            sum_yz_ev += yz_ev.sum(1)
            dX = torch.empty(eu.shape[:2] + (3,) + eu.shape[2:], dtype=eu.dtype, device=eu.device)
            torch.mul(eu * chunk.inv_z, wfx[:, None], out=dX[:, :, 0])
            torch.mul(ev * chunk.inv_z, wfy[:, None], out=dX[:, :, 1])
            torch.mul(torch.addcmul(xz_eu * wfx[:, None], yz_ev, wfy[:, None]), -chunk.inv_z,
                      out=dX[:, :, 2])
            B, S = dX.shape[:2]
            grad_x3d += R[:, c].reshape(B, S * 3, 3).transpose(1, 2) @ dX.view(B, S * 3, -1)
        wu, wv = w2d[:, 0], w2d[:, 1]
        grad_x2d = -torch.stack([wu * sum_eu, wv * sum_ev], 1)
        grad_w2d = torch.stack([fx * sum_xz_eu + (cx - x2d[:, 0]) * sum_eu,
                                fy * sum_yz_ev + (cy - x2d[:, 1]) * sum_ev], 1)
        return grad_x3d, grad_x2d, grad_w2d, None, None, None, None, None


def sample_costs(x3d: torch.Tensor, x2d: torch.Tensor, w2d: torch.Tensor, K: torch.Tensor,
                 R: torch.Tensor, t: torch.Tensor, huber_delta: float | None = None,
                 chunk_size: int = 8192) -> torch.Tensor:
    """Costs (B, S) of poses R (B, S, 3, 3), t (B, S, 3) (constants) for the problems x3d
    (B, 3, N), x2d, w2d (B, 2, N) (differentiable), K (3, 3) or (B, 3, 3). chunk_size: poses
    (over all problems) evaluated at once; memory is about 12 * chunk_size * N numbers."""
    return SampleCost.apply(x3d, x2d, w2d, K.expand(x3d.shape[0], 3, 3), R.detach(),
                            t.detach(), huber_delta, chunk_size)
