"""Adaptive importance sampling (AMIS-style refitted proposals) of a normaliser
log Z = log int exp(-f(y)) dy.

Batched over B independent integrals on R^D. Proposals are multivariate Student-t
distributions (integer degrees of freedom `dof`; heavier tails than the Laplace approximation
they start from). Iteration k draws S / K samples from proposal k, weighted against that
proposal alone: w = exp(-f(y)) / q_k(y). Proposal k + 1 takes the weighted mean and covariance
of all samples so far (plus a small share of the first covariance, so that it never
collapses). Each sample is weighted by the proposal it was drawn from, which was fixed before
it was drawn, so Z_hat = mean_i w_i is unbiased; weighting every sample against the mixture of
all proposals (deterministic-mixture AMIS) instead re-uses the samples that fitted the later
proposals and biases log Z_hat low by about 0.05 with 512 samples in 6-D (measured), which is
more than its spread. The estimate
  log Z_hat = logsumexp_i (-f(y_i) - log q_k(i)(y_i)) - log S
is differentiable through f (the samples and the proposals are constants): its gradient is the
self-normalised estimate of E_p[-grad f]. f is evaluated without gradients while the proposals
are refitted; its gradient is attached to all the samples' values at once at the end. The
effective sample size (sum w)^2 / sum w^2 of the final weights is returned with it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from stages.pnp.compiled import compiled_or_eager

COVARIANCE_FLOOR = 0.01     # share of the first proposal's covariance kept in refitted ones


@dataclass
class StudentT:
    """Multivariate t proposals: mean (B, D), scale_tril (B, D, D) lower Cholesky factor."""

    mean: torch.Tensor
    scale_tril: torch.Tensor
    dof: int

    def sample(self, n: int, generator: torch.Generator | None, compiled: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples (B, n, D) = mean + L z / sqrt(chi2_dof / dof) and their log densities (B, n)."""
        B, D = self.mean.shape
        kw = dict(dtype=self.mean.dtype, device=self.mean.device, generator=generator)
        z = torch.randn(B, n, D, **kw)
        chi = torch.randn(B, n, self.dof, **kw)
        draw = compiled_or_eager(_student_t_draw, "the AMIS draws", compiled)
        return draw(self.mean, self.scale_tril, z, chi, self.dof)


def _student_t_draw(mean: torch.Tensor, scale_tril: torch.Tensor, z: torch.Tensor, chi: torch.Tensor,
                    dof: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples y (B, n, D) = mean + L z / sqrt(chi2 / dof) of the t distribution (mean (B, D),
    scale_tril L (B, D, D)) from standard normals z (B, n, D) and chi (B, n, dof) (chi2 = |chi|^2),
    and their log densities (B, n): L^-1 (y - mean) = z / sqrt(chi2 / dof), so the Mahalanobis
    term is |z|^2 dof / chi2 without a triangular solve."""
    chi2 = (chi ** 2).sum(-1)
    D, nu = z.shape[-1], float(dof)
    inv_scale = torch.rsqrt(chi2 / nu)
    y = mean[:, None] + (z @ scale_tril.transpose(1, 2)) * inv_scale[..., None]
    maha = (z * z).sum(-1) * (inv_scale * inv_scale)
    log_det = torch.log(torch.diagonal(scale_tril, dim1=-2, dim2=-1)).sum(-1)
    const = math.lgamma((nu + D) / 2) - math.lgamma(nu / 2) - D / 2 * math.log(nu * math.pi)
    return y, const - log_det[:, None] - (nu + D) / 2 * torch.log1p(maha / nu)


@dataclass
class NormaliserEstimate:
    """log_z (B,) differentiable through f; ess (B,) effective sample size; samples (B, S, D);
    log_weights (B, S) (detached, unnormalised)."""

    log_z: torch.Tensor
    ess: torch.Tensor
    samples: torch.Tensor
    log_weights: torch.Tensor


def _refit(samples: torch.Tensor, f_values: torch.Tensor, log_q: torch.Tensor, first_cov: torch.Tensor,
           first_tril: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (B, D) and scale factor (B, D, D) of the next t proposal: the weighted mean and
    covariance of samples (B, S, D) with log weights -f_values - log_q (B, S each); the first
    proposal's scale first_tril (B, D, D) where that covariance has no Cholesky factor."""
    w = torch.softmax(-f_values - log_q, -1)
    w = torch.where(torch.isfinite(w), w, torch.zeros_like(w))
    mean = (w[..., None] * samples).sum(1)
    diff = samples - mean[:, None]
    cov = (w[..., None] * diff).transpose(1, 2) @ diff + COVARIANCE_FLOOR * first_cov
    L, info = torch.linalg.cholesky_ex(cov)
    return mean, torch.where((info == 0)[:, None, None], L, first_tril)


def _cholesky(cov: torch.Tensor) -> torch.Tensor:
    """Lower Cholesky factors (B, D, D) of covariances (B, D, D); the identity where one is not
    positive definite (without the host sync of torch.linalg.cholesky's error check)."""
    L, info = torch.linalg.cholesky_ex(cov)
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
    return torch.where((info == 0)[:, None, None], L, eye)


def _ess(log_w: torch.Tensor) -> torch.Tensor:
    """Effective sample size (B,) of weights given as logs (B, S)."""
    return torch.exp(2 * torch.logsumexp(log_w, -1) - torch.logsumexp(2 * log_w, -1))


def amis_log_normaliser(neg_log_integrand: Callable[[torch.Tensor], torch.Tensor],
                        mean: torch.Tensor, cov: torch.Tensor, n_samples: int = 512,
                        n_iters: int = 4, dof: int = 3,
                        generator: torch.Generator | None = None,
                        with_gradient: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                        compiled: bool = False) -> NormaliserEstimate:
    """Estimate log int exp(-f(y)) dy for B problems.

    neg_log_integrand: f, maps y (B, s, D) to (B, s) (may be +inf where the integrand is 0,
    must not be NaN); it is called without gradients, on each proposal's samples.
    with_gradient(samples (B, S, D), values (B, S)): the values f(samples) carrying f's
    gradient (None: f evaluated again on all the samples, with gradients). mean (B, D), cov
    (B, D, D): the first proposal (e.g. the Laplace approximation). n_samples in all, split
    evenly over n_iters proposals. compiled: the draws, refits and the final estimate through torch.compile.
    """
    per_iter = max(1, n_samples // n_iters)
    first = StudentT(mean.detach(), _cholesky(cov.detach()), dof)
    refit = compiled_or_eager(_refit, "the AMIS refits", compiled)
    proposal, samples, f_values, log_q = first, [], [], []
    with torch.no_grad():
        for k in range(n_iters):
            y, log_q_k = proposal.sample(per_iter, generator, compiled)
            samples.append(y)
            log_q.append(log_q_k)
            f_values.append(neg_log_integrand(y))
            if k + 1 < n_iters:
                so_far = (torch.cat(x, 1) for x in (samples, f_values, log_q))
                proposal = StudentT(*refit(*so_far, cov.detach(), first.scale_tril), dof)
        samples, f_values, log_q = (torch.cat(x, 1) for x in (samples, f_values, log_q))
    values = neg_log_integrand(samples) if with_gradient is None else with_gradient(samples, f_values)
    log_z, ess, log_ratio = compiled_or_eager(_estimate, "the AMIS estimate", compiled)(values, log_q)
    return NormaliserEstimate(log_z, ess, samples, log_ratio)


def _estimate(values: torch.Tensor, log_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log Z_hat (B,) (differentiable through values), the effective sample size (B,) and the
    detached log weights (B, S) of the samples' -log integrand values and log proposal
    densities log_q (B, S each)."""
    log_ratio = -values - log_q
    log_z = torch.logsumexp(log_ratio, -1) - math.log(log_ratio.shape[1])
    return log_z, _ess(log_ratio.detach()), log_ratio.detach()
