"""Training losses (paper eq. 1-3) and their units.

Units, chosen so that the paper's weights 0.01 / 20 / 10 give terms of one order of magnitude:
  gnll: summed over the V landmarks of a sample (eq. 1), positions and sigma in crop pixels;
        at a 2-px error and sigma = 2 px a point adds ~1.9, so ~2000 per sample -> x 0.01 ~ 20.
  vdc:  mean over vertices of the squared distance, mm^2 (a 1.7 mm error -> ~3 -> x 20 ~ 60).
  wpdc: sum_k (w_k * delta a_k)^2 with w_k in mm per normalised coefficient (stages.face.pca),
        i.e. the in-span mean squared vertex error, mm^2 (x 10 ~ 30).
Each loss returns the mean over the batch.
"""
from __future__ import annotations

import torch


def gnll(mu: torch.Tensor, sigma: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 1: sum_i log(sigma_i^2) + ||mu_i - target_i||^2 / (2 sigma_i^2), mean over the batch.

    mu, target: (B, V, 2) crop px; sigma: (B, V) crop px (isotropic per point).
    """
    var = sigma.float() ** 2
    sq = ((mu.float() - target.float()) ** 2).sum(-1)
    return (torch.log(var) + sq / (2 * var)).sum(-1).mean()


def landmark_mse(mu: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The MSE alternative: eq. 1 with sigma fixed to 1 px, i.e. sum_i ||mu_i - target_i||^2 / 2."""
    return (((mu.float() - target.float()) ** 2).sum(-1) / 2).sum(-1).mean()


def vdc(verts: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 2: mean over vertices of the squared distance in mm^2; verts, target (B, V, 3) metres."""
    return (((verts.float() - target.float()) * 1000.0) ** 2).sum(-1).mean(-1).mean()


def vdc_from_coeffs(wpdc_value: torch.Tensor, off_span_mm2: torch.Tensor) -> torch.Tensor:
    """Eq. 2 for a mesh decoded from a PCA basis (orthonormal components, stages.face.pca), with
    the WPDC weights w_k = 1000 std_k / sqrt(V) mm: the predicted mesh lies in the basis' span, so
    its squared distance to the target splits (Pythagoras) into the in-span part, which is WPDC
    exactly, and the target's own distance from the span, off_span_mm2 (B,) (PCABasis.off_span_mm2),
    a constant. Same value and gradient as `vdc` on the decoded mesh, without the decode."""
    return wpdc_value + off_span_mm2.float().mean()


def wpdc(coeffs: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Eq. 3: ||w * (a_pred - a_gt)||^2, coeffs (B, K) normalised, weights (K,) mm -> mm^2."""
    return ((weights * (coeffs.float() - target.float())) ** 2).sum(-1).mean()
