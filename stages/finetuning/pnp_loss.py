"""The PnP terms of the finetuning loss (paper eq. 4-6): the network's 2D and 3D outputs meet
in the differentiable PnP layer (stages.pnp.epro), in the full image's camera.

Mapping the 2D branch to the full image: mu (crop px) goes through the crop's inverse warp,
a similarity with scale s_inv = sqrt|det A| full px per crop px; sigma is isotropic, so
sigma_full = sigma_crop * s_inv and the PnP weights are w2d = 1 / sigma_full (1 / px).

Terms (per sample; the batch value is the mean over the samples the layer accepts):
  pnp:  eq. 5, mean_v |P_pred X_gt - P_gt X_gt| + mean_v |P_pred X_pred - P_gt X_gt|, in mm
        (the score's unit). The paper gives no unit for lambda.pnp = 2. Measured on the demo
        (5 epochs from the train model, cosine from 5e-5, val): in mm, lambda.pnp = 2 took the
        score from 81.37 to 79.99 and ADD from 21.69 to 21.06 mm, against 80.37 and 21.24 for
        the same run without the PnP terms; in metres (lambda 2 -> 1000x weaker) the run was
        that control to three decimals. (At a constant 1e-4 the mm term had made one epoch's
        landmarks worse: README "Differentiable PnP and EPro-PnP finetuning".)
  mc:   EPro-PnP's Monte Carlo NLL of the true pose, cost(P_gt) + log Z (nats); it is what
        trains sigma together with the pose (the cost is a sum over the PnP points, like eq. 1).
Under DDP both means run over the accepted samples of the whole global batch (masked_mean).
Samples the layer flags as degenerate (non-finite outputs, too few weighted points, no valid
solution) are left out of both terms; their inputs are replaced before any arithmetic, so
their gradients are exactly zero, never NaN.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
import torch.distributed as dist

from stages.common.cuda_graph import graphed
from stages.pnp.compiled import compiled_or_eager
from stages.pnp.diffpose import pnp_loss
from stages.pnp.epro import epro_pnp
from stages.wcpa.score import MM_PER_M


@dataclass(frozen=True)
class PnPSettings:
    """How the layer is run: mc_samples Monte Carlo poses per sample over amis_iters proposals,
    lm_iters the most Levenberg-Marquardt iterations of the solve (it starts from both the
    closed-form pose and the true one, stages.pnp.epro), points the vertices used by
    the PnP (0 = all; a random subset per batch otherwise), dtype of the PnP arithmetic, compiled:
    the layer's inputs, the layer (stages.pnp.epro) and eq. 5 through torch.compile
    (stages.pnp.compiled)."""

    mc_samples: int
    amis_iters: int
    lm_iters: int = 50
    points: int = 0
    dtype: torch.dtype = torch.float32
    compiled: bool = False


def crop_to_full(mu: torch.Tensor, sigma: torch.Tensor, inv_warps: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """mu (B, V, 2) crop px, sigma (B, V) crop px, inv_warps (B, 2, 3) crop -> full similarity
    -> x2d (B, V, 2) full-image px and w2d (B, V, 2) = 1 / sigma_full (1 / full px)."""
    linear = inv_warps[:, :, :2]
    x2d = mu @ linear.transpose(1, 2) + inv_warps[:, None, :, 2]
    scale = torch.sqrt(torch.abs(torch.linalg.det(linear)))
    w2d = 1.0 / (sigma * scale[:, None])
    return x2d, w2d[..., None].expand(-1, -1, 2)


def finite_samples(*tensors: torch.Tensor) -> torch.Tensor:
    """(B,) bool: every value of sample b is finite in all tensors (B, ...)."""
    ok = torch.ones(tensors[0].shape[0], dtype=torch.bool, device=tensors[0].device)
    for x in tensors:
        ok &= torch.isfinite(x.detach()).flatten(1).all(-1)
    return ok


def neutralise(x: torch.Tensor, keep: torch.Tensor, fill: float) -> torch.Tensor:
    """x (B, ...) with the samples outside `keep` (B,) set to `fill` (zero gradient there)."""
    return torch.where(keep.view((-1,) + (1,) * (x.dim() - 1)), x, torch.full_like(x, fill))


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of values (B,) over mask (B,); 0 (still in the graph) when the mask is empty.

    Under DDP (a process group of N processes) each process holds B of the global batch's N x B
    samples, and DDP averages the processes' gradients: the sum is then divided by the mask's
    count over all the processes, over N, so that every accepted sample of the global batch
    weighs alike whatever the process it fell to (a process with none accepted adds 0)."""
    return masked_means(mask, values)[0]


def masked_means(mask: torch.Tensor, *values: torch.Tensor) -> list[torch.Tensor]:
    """`masked_mean` of each of `values` (B,) over the one mask (B,), its count all-reduced once."""
    count = mask.sum()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        count = count.to(torch.float64)
        dist.all_reduce(count)
        count = count.clamp_min(1) / dist.get_world_size()
    else:
        count = count.clamp_min(1)
    return [torch.where(mask, v, torch.zeros_like(v)).sum() / count.to(v.dtype) for v in values]


def pnp_terms(out: dict, batch: dict, settings: PnPSettings, generator: torch.Generator | None = None,
              layer: Callable | None = None) -> dict[str, torch.Tensor]:
    """The PnP terms of a batch.

    out: network outputs mu (B, V, 2) crop px, sigma (B, V) crop px, verts (B, V, 3) metres.
    batch: verts (B, V, 3) metres (ground truth), R_gt (B, 3, 3), t_gt (B, 3) metres (OpenCV
    pose), K (B, 3, 3), pnp_inv_warps (B, 2, 3) (PoseBatches'). layer: `sample_terms`' signature without its
    keywords (default: sample_terms with these settings and generator; `pnp_layer` builds
    either). Returns pnp (eq. 5, mm) and mc (nats), scalars with gradients, and the diagnostics
    valid (B,) bool and ess (the accepted samples' mean effective sample size, detached), the
    three means over one count of the accepted samples (masked_means).
    """
    layer = layer or pnp_layer(settings, generator)
    inputs = (out["mu"], out["sigma"], out["verts"], batch["pnp_inv_warps"], batch["R_gt"], batch["t_gt"], batch["K"],
              batch["verts"])
    pnp, mc, valid, ess = layer(*(x.to(settings.dtype) for x in inputs))
    pnp, mc, ess = masked_means(valid, pnp, mc, ess.detach())
    return {"pnp": MM_PER_M * pnp.float(), "mc": mc.float(), "valid": valid.detach(), "ess": ess.float()}


def pnp_layer(settings: PnPSettings, generator: torch.Generator | None = None, cuda_graph: bool = False) -> Callable:
    """`sample_terms` with these settings and generator; cuda_graph: replayed from CUDA graphs
    (stages.common.cuda_graph; finetune.cuda_graph), the generator drawing as it would eagerly."""
    layer = partial(sample_terms, settings=settings, generator=generator)
    return graphed(layer, generator, "the PnP layer") if cuda_graph else layer


def sample_terms(mu: torch.Tensor, sigma: torch.Tensor, verts: torch.Tensor, inv_warps: torch.Tensor,
                 R_gt: torch.Tensor, t_gt: torch.Tensor, K: torch.Tensor, verts_gt: torch.Tensor, *,
                 settings: PnPSettings, generator: torch.Generator | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The PnP terms of each sample, all inputs in settings.dtype: the network's mu (B, V, 2) crop px,
    sigma (B, V) crop px and verts (B, V, 3) metres; the crops' inv_warps (B, 2, 3), the true
    poses R_gt (B, 3, 3), t_gt (B, 3) metres, K (B, 3, 3) and the true meshes verts_gt (B, V, 3)
    metres -> eq. 5 (B,) metres, the NLL (B,) nats, valid (B,) bool (the samples both count
    over) and ess (B,)."""
    inputs = compiled_or_eager(layer_inputs, "the PnP layer's inputs", settings.compiled)
    finite, x2d, w2d, verts = inputs(mu, sigma, verts, inv_warps)
    subset = point_subset(verts.shape[1], settings.points, generator, verts.device)
    x3d, x2d, w2d = verts[:, subset], x2d[:, subset], w2d[:, subset]
    layer = epro_pnp(x3d, x2d, w2d, K, R_gt, t_gt, n_samples=settings.mc_samples,
                     n_iters=settings.amis_iters, generator=generator, max_iters=settings.lm_iters,
                     compiled=settings.compiled)
    pnp = compiled_or_eager(pnp_loss, "eq. 5", settings.compiled)(layer.R, layer.t, R_gt, t_gt, verts_gt, verts)
    return pnp, layer.loss, layer.mask & finite, layer.ess


def layer_inputs(mu: torch.Tensor, sigma: torch.Tensor, verts: torch.Tensor, inv_warps: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The network's mu (B, V, 2) crop px, sigma (B, V) crop px and verts (B, V, 3) metres, with
    the crops' inverse warps (B, 2, 3) -> finite (B,) bool (`finite_samples`), x2d (B, V, 2) full
    px, w2d (B, V, 2) and verts (B, V, 3): the samples that are not finite neutralised (zero
    weights, so that they neither move the layer nor get a gradient)."""
    finite = finite_samples(mu, sigma, verts)
    mu, sigma, verts = neutralise(mu, finite, 0.0), neutralise(sigma, finite, 1.0), neutralise(verts, finite, 0.0)
    x2d, w2d = crop_to_full(mu, sigma, inv_warps)
    return finite, x2d, neutralise(w2d, finite, 0.0), verts


def point_subset(n_verts: int, points: int, generator: torch.Generator | None,
                 device: torch.device) -> torch.Tensor:
    """Indices of the PnP points: all (points = 0 or >= n_verts) or a random subset of `points`."""
    if points <= 0 or points >= n_verts:
        return torch.arange(n_verts, device=device)
    return torch.randperm(n_verts, generator=generator, device=device)[:points].sort().values
