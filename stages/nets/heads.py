"""The two regressors on the shared features (paper sec. 2.2, 2.3): one FC layer each.

LandmarkHead: every mesh vertex's position on the crop, mu (crop pixels), and its uncertainty
sigma (crop pixels). ShapeHead: the canonical mesh (metres), from normalised PCA coefficients
(sec. 2.3) or, as in the paper's Table 2 ablation, regressed directly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SIGMA_MIN_PX = 0.01     # floor of sigma, crop pixels (keeps the GNLL finite)
DIRECT_SCALE_M = 0.01   # direct vertex regression: one output unit moves a vertex by 1 cm


class LandmarkHead(nn.Module):
    """features (B, F) -> mu (B, V, 2) crop px (continuous coordinates), sigma (B, V) crop px.

    Outputs are normalised: mu = centre + o * S / 20 and sigma = softplus(o_sigma) * S / 20
    + SIGMA_MIN_PX, where centre (V, 2) is the mean training target (`init_mean`; the crop
    centre before) and S / 20 px is about the spread of the targets around it in an aligned
    crop. The FC weights start at zero, so training starts from the mean landmarks with
    sigma ~ S / 29 px, and one unit of output is a step of the size the task needs. mu and
    sigma are two FC layers (one FC of 3V outputs split in two), so that a loss without sigma
    (MSE) leaves sigma's out of the backward. With `sigma_trains_backbone` False (set by the
    trainer, train.sigma_backbone) sigma's FC reads the features through a stop-gradient: the
    values are the same, and sigma's loss gradient trains its FC alone, not the shared backbone.
    """

    sigma_trains_backbone: bool = True

    def __init__(self, features: int, n_verts: int, crop_size: int):
        super().__init__()
        self.n_verts = n_verts
        self.unit = crop_size / 20.0
        self.register_buffer("centre", torch.full((n_verts, 2), crop_size / 2.0))
        self.mu = nn.Linear(features, n_verts * 2)
        self.sigma = nn.Linear(features, n_verts)
        for fc in (self.mu, self.sigma):
            nn.init.zeros_(fc.weight)
            nn.init.zeros_(fc.bias)

    def init_mean(self, mean_uv: torch.Tensor) -> None:
        """Centre the outputs on the mean target position (V, 2) crop px."""
        with torch.no_grad():
            self.centre.copy_(torch.as_tensor(mean_uv, dtype=torch.float32))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu = self.centre + self.mu(features).float().view(-1, self.n_verts, 2) * self.unit
        sigma_in = features if self.sigma_trains_backbone else features.detach()
        sigma = F.softplus(self.sigma(sigma_in).float()) * self.unit + SIGMA_MIN_PX
        return mu, sigma


class ShapeHead(nn.Module):
    """features (B, F) -> verts (B, V, 3) metres and normalised PCA coefficients (B, C).

    mode 'pca': the FC gives the K coefficients in units of each component's std (well
    conditioned), the mesh is mean + (a * std) @ components. The FC starts at zero (the mean mesh). mode 'direct': the FC gives all
    vertices (offsets from the mean mesh in cm) and the coefficients are their projection.
    The basis is kept in buffers, so a saved model carries it.
    """

    def __init__(self, features: int, n_verts: int, n_components: int, mode: str = "pca"):
        super().__init__()
        if mode not in ("pca", "direct"):
            raise ValueError(f"train.shape_head={mode!r}: expected 'pca' or 'direct'")
        self.mode, self.n_verts = mode, n_verts
        self.register_buffer("mean", torch.zeros(n_verts * 3))
        self.register_buffer("components", torch.zeros(n_components, n_verts * 3))
        self.register_buffer("std", torch.ones(n_components))
        self.fc = nn.Linear(features, n_components if mode == "pca" else n_verts * 3)
        nn.init.zeros_(self.fc.weight)      # start at the mean mesh
        nn.init.zeros_(self.fc.bias)

    def set_basis(self, mean, components, std) -> None:
        """Load a PCA basis: mean (V, 3), components (C, V, 3) orthonormal, std (C,), metres."""
        with torch.no_grad():
            self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32).reshape(-1))
            self.components.copy_(torch.as_tensor(components, dtype=torch.float32).reshape(len(std), -1))
            self.std.copy_(torch.as_tensor(std, dtype=torch.float32))

    def to_verts(self, coeffs: torch.Tensor) -> torch.Tensor:
        """Normalised coefficients (B, C) -> meshes (B, V, 3) metres."""
        return (self.mean + (coeffs * self.std) @ self.components).view(-1, self.n_verts, 3)

    def to_coeffs(self, verts: torch.Tensor) -> torch.Tensor:
        """Meshes (B, V, 3) -> least-squares normalised coefficients (B, C)."""
        return ((verts.reshape(len(verts), -1) - self.mean) @ self.components.T) / self.std

    def forward(self, features: torch.Tensor, with_verts: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
        """-> (verts, coeffs); in 'pca' mode verts is None when not `with_verts` (a loss on
        the coefficients alone does not need the decode)."""
        out = self.fc(features).float()
        if self.mode == "pca":
            return (self.to_verts(out) if with_verts else None), out
        verts = (self.mean + out * DIRECT_SCALE_M).view(-1, self.n_verts, 3)
        return verts, self.to_coeffs(verts)
