"""Flip & merge at inference (paper sec. 2.5, 4.1): outputs on a mirrored crop, mapped back.

The network run on a crop mirrored left-right (u -> S - u, continuous crop coordinates) predicts
the mirrored face: landmark i is vertex i of the mirrored mesh flip_mesh(verts, perm), as in
training (stages.nets.dataset.flip_targets). `unmirror_outputs` maps such outputs back to the
original crop; it is an involution (applying it twice gives the outputs back). `merge_outputs`
averages the original and the mapped-back predictions:

  none  the original crop's outputs alone
  3d    the mesh averaged, landmarks and sigma from the original crop (the paper's choice)
  both  mesh and landmarks averaged; sigma = sqrt of the mean variance (the spread of the two
        Gaussians' mixture about the averaged centre is not added: the two passes see the same
        pixels, so their disagreement is not independent evidence)
"""
from __future__ import annotations

import numpy as np
import torch

FLIP_MERGE_MODES = ("none", "3d", "both")


def check_mode(mode: str) -> str:
    if mode not in FLIP_MERGE_MODES:
        raise ValueError(f"infer.flip_merge={mode!r}: expected one of {', '.join(FLIP_MERGE_MODES)}")
    return mode


def unmirror_outputs(out: dict[str, torch.Tensor], perm: torch.Tensor | np.ndarray,
                     crop_size: int) -> dict[str, torch.Tensor]:
    """Outputs of mirrored crops -> the same predictions for the original crops, on their device
    (inference runs it on the GPU, before the outputs go to the host).

    out: tensors mu (B, V, 2) crop px, sigma (B, V) crop px, verts (B, V, 3) metres (other keys
    are dropped); perm (V,) the flip permutation (an involution; best a tensor on out's device:
    an array is copied there); crop_size S in px. The mesh is stages.face.mesh.flip_mesh's.
    """
    index = torch.as_tensor(perm, device=out["mu"].device)
    mu, verts = out["mu"][:, index], out["verts"][:, index]
    return {"mu": torch.stack([crop_size - mu[..., 0], mu[..., 1]], -1), "sigma": out["sigma"][:, index],
            "verts": torch.cat([-verts[..., :1], verts[..., 1:]], -1)}


def merge_outputs(plain: dict[str, np.ndarray], mirrored_back: dict[str, np.ndarray],
                  mode: str) -> dict[str, np.ndarray]:
    """Merge the original crops' outputs with the mapped-back mirrored ones (see module doc).

    Both: mu (B, V, 2), sigma (B, V), verts (B, V, 3). Returns the same three keys.
    """
    check_mode(mode)
    if mode == "none":
        return {key: plain[key] for key in ("mu", "sigma", "verts")}
    verts = (plain["verts"] + mirrored_back["verts"]) / 2
    if mode == "3d":
        return {"mu": plain["mu"], "sigma": plain["sigma"], "verts": verts}
    mu = (plain["mu"] + mirrored_back["mu"]) / 2
    sigma = np.sqrt((plain["sigma"] ** 2 + mirrored_back["sigma"] ** 2) / 2)
    return {"mu": mu, "sigma": sigma, "verts": verts}
