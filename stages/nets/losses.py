"""Training losses (paper eq. 1-3, and the direct 6DoF head's of sec. 3.2.1) and their units.

Units (the paper gives none; with its weights 0.01 / 20 / 10 the demo's weighted terms are 35 /
575 / 287 in the first epoch and 15 / 273 / 137 in the last: the shape terms dominate):
  gnll: summed over the V landmarks of a sample (eq. 1), positions and sigma in crop pixels;
        at a 2-px error and sigma = 2 px a point adds ~1.9, so ~2000 per sample -> x 0.01 ~ 20.
  vdc:  mean over vertices of the squared distance, mm^2 (a 1.7 mm error -> ~3 -> x 20 ~ 60).
  wpdc: sum_k (w_k * delta a_k)^2 with w_k in mm per normalised coefficient (stages.face.pca),
        i.e. the in-span mean squared vertex error, mm^2 (x 10 ~ 30); with
        train.wpdc_weights per_sample, 3DDFA's (`wpdc_per_sample`), unitless (a weighted sum of
        squared normalised coefficient errors, each weight at most 1).
The direct 6DoF head (train.pose_head) regresses the pose in place of the landmarks; its terms
(geodesic loss + MSE), in degrees and mm^2, weighted by lambda.rot = 20 and lambda.trans = 0.05
(measured against 1, at which the translation term took the shared features: docs/experiments.md):
  rot:   geodesic angle between the predicted and true rotations in the head's frame
         (train.pose_frame), degrees (the same angle as between the camera-frame rotations: the
         frame change cancels);
  trans: squared distance between the predicted and true translations, mm^2 (likewise equal in
         either frame).
Each loss returns the mean over the batch.
"""
from __future__ import annotations

import math

import torch

from stages.nets.pose_frame import translation_from_codes
from stages.nets.rotation6d import geodesic


def gnll(mu: torch.Tensor, sigma: torch.Tensor, target: torch.Tensor, beta: float = 0.0) -> torch.Tensor:
    """Eq. 1: sum_i log(sigma_i^2) + ||mu_i - target_i||^2 / (2 sigma_i^2), mean over the batch.

    mu, target: (B, V, 2) crop px; sigma: (B, V) crop px (isotropic per point).
    beta: beta-NLL (Seitzer et al. 2022) as a weighting of the gradient only: each point's
    gradient (of mu and sigma) is multiplied by stop_grad(sigma_i^(2 beta)), so the means move
    as under MSE at beta = 1; the value stays eq. 1's at any beta.
    """
    var = sigma.float() ** 2
    sq = ((mu.float() - target.float()) ** 2).sum(-1)
    per_point = torch.log(var) + sq / (2 * var)
    if beta:
        per_point = per_point.detach() + var.detach() ** beta * (per_point - per_point.detach())
    return per_point.sum(-1).mean()


def mean_gain(sigma: torch.Tensor, beta: float = 0.0) -> torch.Tensor:
    """The GNLL's gradient on the means relative to MSE's, sigma_i^(2 beta) / sigma_i^2 (the
    factor on mu_i - target_i), averaged over the points of sigma (B, V) crop px; a diagnostic."""
    var = sigma.detach().float() ** 2
    return (var ** (beta - 1)).mean()


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
    """Eq. 3: ||w * (a_pred - a_gt)||^2, coeffs (B, C) normalised, weights (C,) mm -> mm^2."""
    return ((weights * (coeffs.float() - target.float())) ** 2).sum(-1).mean()


def wpdc_per_sample(coeffs: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Eq. 3 with 3DDFA's weights (its training code's WPDC): in each sample coefficient k
    weighs w_k = weights_k |delta a_k|, the mesh displacement that its error alone causes
    (weights (C,), e.g. the fixed WPDC weights: proportional to std_k, the components being
    orthonormal), over the sample's largest w, without gradient; then sum_k w_k delta a_k^2.
    coeffs, target (B, C) normalised -> mean over the batch (3DDFA averages over its 62
    parameters instead of summing: a constant factor)."""
    delta = coeffs.float() - target.float()
    moved = (weights * delta.abs()).detach()
    share = moved / moved.amax(-1, keepdim=True).clamp_min(torch.finfo(moved.dtype).tiny)
    return (share * delta ** 2).sum(-1).mean()


def rotation_deg(R_pred: torch.Tensor, R_gt: torch.Tensor) -> torch.Tensor:
    """The direct head's rot term: mean geodesic angle in degrees; R_pred, R_gt (B, 3, 3)."""
    return geodesic(R_pred.float(), R_gt.float()).mean() * (180.0 / math.pi)


def translation_mm2(code_pred: torch.Tensor, code_gt: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The direct head's trans term: mean squared translation error in mm^2 of codes (B, 3)
    (stages.nets.pose_frame) in frames with scales (B,) (the crop frame's crop px per full px; 1
    for the camera frame)."""
    t_pred = translation_from_codes(code_pred.float(), scale.float())
    t_gt = translation_from_codes(code_gt.float(), scale.float())
    return (((t_pred - t_gt) * 1000.0) ** 2).sum(-1).mean()
