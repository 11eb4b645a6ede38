"""The left-right flip permutation of a mesh topology, of its landmark subset, and mirrored meshes."""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment



def flip_permutation(meshes: np.ndarray, tol: float = 0.05) -> np.ndarray:
    """Left-right flip permutation of a mesh topology.

    meshes: (N, V, 3) or (V, 3) canonical meshes (metres, x is the face's left). Returns perm
    (V,) int64 with mirror(v[i]) ~ v[perm[i]], an involution (perm[perm] == arange).

    Built on the symmetrised mean mesh with a one-to-one (Hungarian) assignment, because
    nearest-neighbour matching on one slightly asymmetric mesh is not one-to-one. Raises if
    the result is not an involution or a matched pair is further apart than `tol` times the
    mesh's width.
    """
    mean = np.asarray(meshes, dtype=np.float64)
    mean = mean.mean(axis=0) if mean.ndim == 3 else mean
    mirror = mean * np.array([-1.0, 1.0, 1.0])
    perm = _assign(mean, mirror)
    sym = (mean + mirror[perm]) / 2          # symmetric up to the assignment
    perm = _assign(sym, sym * np.array([-1.0, 1.0, 1.0]))
    if not np.array_equal(perm[perm], np.arange(len(perm))):
        raise ValueError("flip permutation is not an involution: the mesh is not left-right symmetric")
    gap = np.linalg.norm(mirror[perm] - mean, axis=1).max()
    width = np.ptp(mean[:, 0])
    if gap > tol * width:
        raise ValueError(f"flip permutation matches points {gap * 1000:.1f} mm apart: mesh is not symmetric")
    return perm.astype(np.int64)


def _assign(points: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """perm with points[i] ~ targets[perm[i]], minimising the summed squared distance."""
    cost = ((points[:, None, :] - targets[None, :, :]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(cost)
    perm = np.empty(len(points), dtype=np.int64)
    perm[rows] = cols
    return perm


def flip_mesh(verts: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """Mirror canonical meshes (..., V, 3) left-right and reorder them by the flip permutation."""
    return (np.asarray(verts) * np.array([-1.0, 1.0, 1.0], dtype=np.asarray(verts).dtype))[..., perm, :]


def kpt_flip_permutation(kpt_ind: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """Mirror order of the landmark subset: mirror(kpt k) is kpt kpt_perm[k]. (L,) int64."""
    where = {int(v): k for k, v in enumerate(kpt_ind)}
    try:
        return np.array([where[int(perm[v])] for v in kpt_ind], dtype=np.int64)
    except KeyError:
        raise ValueError("the landmark vertices are not closed under the flip permutation") from None


def flip_asymmetry_mm(mean: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """How far (V,) in mm the flip misses a mesh (V, 3) metres: |flip_mesh(mean) - mean| per
    vertex. A mirrored training target puts vertex i at the mirror of vertex perm[i]; on the
    mean training mesh that is off by this much, and a network trained with flips (or merged
    with its mirror pass) learns half of it as a bias. 0 for an exactly symmetric mesh."""
    mean = np.asarray(mean, dtype=np.float64)
    return 1000 * np.linalg.norm(flip_mesh(mean, perm) - mean, axis=-1)
