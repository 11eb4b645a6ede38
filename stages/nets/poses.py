"""Head poses from predicted meshes and landmarks at inference, in parallel chunks.

A thin layer over the pipeline's pose-from-landmarks entry point (stages.pnp.opencv):
  opencv   cv2.solvePnP per sample (infer.pnp_flags: ITERATIVE, EPNP, SQPNP, ...), all points
           weighted alike
  batched  the project's batched Levenberg-Marquardt solver (stages.pnp.api), each point
           weighted by 1 / sigma, the landmark head's uncertainty
Chunks run in joblib threads (OpenCV and torch release the GIL). Rows with NaN input (skipped
samples) are not solved and come back NaN, like the problems the solver rejects.
"""
from __future__ import annotations

import numpy as np
from joblib import Parallel, delayed

from stages.pnp.opencv import METHODS, opencv_flag, pose_from_landmarks
from stages.wcpa.camera import Camera

CHUNK = 64      # samples per task


def _solve_chunk(method: str, verts: np.ndarray, uv: np.ndarray, sigma: np.ndarray, camera: Camera,
                 flags: str) -> np.ndarray:
    weights = None if method == "opencv" else np.repeat(np.asarray(sigma, np.float64)[..., None], 2, -1)
    return pose_from_landmarks(verts, uv, camera, method=method, flags=flags, sigma=weights)


def solve_poses(method: str, verts: np.ndarray, uv: np.ndarray, sigma: np.ndarray, camera: Camera,
                flags: str = "ITERATIVE", workers: int = 1) -> np.ndarray:
    """verts (N, V, 3) metres, uv (N, V, 2) full-image px, sigma (N, V) full-image px (used by
    'batched') -> R_t (N, 4, 4) float64, NaN where the input has NaN or PnP fails."""
    if method not in METHODS:
        raise ValueError(f"infer.pnp={method!r}: expected one of {', '.join(METHODS)}")
    if method == "opencv":
        try:
            opencv_flag(flags)
        except ValueError as err:
            raise ValueError(f"infer.pnp_flags: {err}") from None
    finite = np.isfinite(uv).all((1, 2)) & np.isfinite(verts).all((1, 2)) & np.isfinite(sigma).all(1)
    rows = np.flatnonzero(finite)
    out = np.full((len(verts), 4, 4), np.nan)
    chunks = [rows[s:s + CHUNK] for s in range(0, len(rows), CHUNK)]
    solved = Parallel(n_jobs=max(1, workers), prefer="threads")(
        delayed(_solve_chunk)(method, verts[c], uv[c], sigma[c], camera, flags) for c in chunks)
    for chunk, poses in zip(chunks, solved):
        out[chunk] = poses
    return out
