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

    The FC output is normalised: mu = (o + 1) * S / 2, so o in [-1, 1] spans the crop, and
    sigma = softplus(o_sigma) * S / 20 + SIGMA_MIN_PX (about S / 29 px at o_sigma = 0).
    """

    def __init__(self, features: int, n_verts: int, crop_size: int):
        super().__init__()
        self.n_verts = n_verts
        self.half = crop_size / 2.0
        self.fc = nn.Linear(features, n_verts * 3)

    def init_mean(self, mean_uv: torch.Tensor) -> None:
        """Start mu at the mean target position (V, 2) crop px, so training begins there."""
        with torch.no_grad():
            bias = self.fc.bias.view(self.n_verts, 3)
            bias[:, :2] = torch.as_tensor(mean_uv, dtype=bias.dtype) / self.half - 1.0
            bias[:, 2] = 0.0

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.fc(features).float().view(-1, self.n_verts, 3)
        mu = (out[..., :2] + 1.0) * self.half
        sigma = F.softplus(out[..., 2]) * (self.half / 10.0) + SIGMA_MIN_PX
        return mu, sigma


class ShapeHead(nn.Module):
    """features (B, F) -> verts (B, V, 3) metres and normalised PCA coefficients (B, K).

    mode 'pca': the FC gives the K coefficients in units of each component's std (well
    conditioned), the mesh is mean + (a * std) @ components. mode 'direct': the FC gives all
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

    def set_basis(self, mean, components, std) -> None:
        """Load a PCA basis: mean (V, 3), components (K, V, 3) orthonormal, std (K,), metres."""
        with torch.no_grad():
            self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32).reshape(-1))
            self.components.copy_(torch.as_tensor(components, dtype=torch.float32).reshape(len(std), -1))
            self.std.copy_(torch.as_tensor(std, dtype=torch.float32))

    def to_verts(self, coeffs: torch.Tensor) -> torch.Tensor:
        """Normalised coefficients (B, K) -> meshes (B, V, 3) metres."""
        return (self.mean + (coeffs * self.std) @ self.components).view(-1, self.n_verts, 3)

    def to_coeffs(self, verts: torch.Tensor) -> torch.Tensor:
        """Meshes (B, V, 3) -> least-squares normalised coefficients (B, K)."""
        return ((verts.reshape(len(verts), -1) - self.mean) @ self.components.T) / self.std

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.fc(features).float()
        if self.mode == "pca":
            return self.to_verts(out), out
        verts = (self.mean + out * DIRECT_SCALE_M).view(-1, self.n_verts, 3)
        return verts, self.to_coeffs(verts)
