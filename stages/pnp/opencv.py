"""OpenCV's solvePnP as the reference, and the pose-from-landmarks entry point of the pipeline.

OpenCV works in its own camera frame (x right, y down, z forward); the challenge's R_t is
reached only through stages.wcpa.camera.opencv_to_rt.
"""
from __future__ import annotations

import logging
import math

import cv2
import numpy as np
import torch

from stages.common.threads import map_rows
from stages.pnp.api import solve_pnp
from stages.wcpa.camera import Camera, opencv_to_rt

log = logging.getLogger(__name__)

METHODS = ("opencv", "batched")


def opencv_flag(name: str) -> int:
    """The cv2.SOLVEPNP_<name> constant, e.g. 'ITERATIVE', 'EPNP', 'SQPNP'."""
    flag = getattr(cv2, f"SOLVEPNP_{name.upper()}", None)
    if flag is None:
        raise ValueError(f"unknown OpenCV PnP method {name!r} (no cv2.SOLVEPNP_{name.upper()})")
    return flag


def split_flags(flags: str) -> tuple[str, bool]:
    """PnP flags 'METHOD' or 'METHOD+ITERATIVE' -> (METHOD, whether OpenCV's iterative LM refines
    the method's solution): 'EPNP+ITERATIVE' -> ('EPNP', True). An unknown method or another
    refinement raises ValueError."""
    method, _, refine = flags.upper().partition("+")
    if refine not in ("", "ITERATIVE"):
        raise ValueError(f"{flags!r}: only ITERATIVE can refine a solution ('<METHOD>+ITERATIVE')")
    try:
        opencv_flag(method)
    except ValueError as err:
        raise ValueError(f"{flags!r}: {err}") from None
    return method, bool(refine)


def solve_pnp_opencv(x3d: np.ndarray, x2d: np.ndarray, K: np.ndarray, flags: str = "ITERATIVE",
                     workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """cv2.solvePnP on each of B problems: x3d (B, N, 3), x2d (B, N, 2) pixels, K (3, 3), on
    `workers` threads (OpenCV releases the GIL), each a contiguous share of the problems. flags:
    cv2.SOLVEPNP_<METHOD>'s name, or 'METHOD+ITERATIVE': each solution then refined by OpenCV's
    iterative LM from it (a refinement that fails keeps the solution). Per problem the thread
    holds the GIL only around OpenCV's calls (about 20 us of Python a face in inference's chunks,
    where converting the pose between the calls made it 41-51: benchmarks/bench_pnp.py --gil).

    Returns OpenCV poses R (B, 3, 3), t (B, 3) float64 (x_cam = R x + t); NaN for a problem
    OpenCV rejects or fails on."""
    x3d = np.ascontiguousarray(x3d, dtype=np.float64)
    x2d = np.ascontiguousarray(x2d, dtype=np.float64)
    K = np.ascontiguousarray(K, dtype=np.float64)
    method, refine = split_flags(flags)
    flag = opencv_flag(method)
    R = np.full((len(x3d), 3, 3), np.nan)
    t = np.full((len(x3d), 3), np.nan)

    def solve(rows: slice) -> None:
        """Fill R, t of the problems in `rows` (each thread its own rows)."""
        for i in range(len(x3d))[rows]:
            points, pixels = x3d[i], x2d[i]
            pose = _solved(points, pixels, K, flag)
            if pose is not None and refine:
                pose = _solved(points, pixels, K, cv2.SOLVEPNP_ITERATIVE, pose) or pose
            if pose is not None:
                R[i] = cv2.Rodrigues(pose[0])[0]
                t[i] = pose[1][:, 0]

    map_rows(solve, len(x3d), workers)
    return R, t


def _solved(x3d: np.ndarray, x2d: np.ndarray, K: np.ndarray, flag: int,
            start: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """One cv2.solvePnP -> (rvec, tvec), each (3, 1) float64, or None where OpenCV rejects the
    problem, fails or returns a non-finite pose. start: (rvec, tvec) to refine from (copied:
    OpenCV writes its answer into them)."""
    try:
        if start is None:
            ok, rvec, tvec = cv2.solvePnP(x3d, x2d, K, None, flags=flag)
        else:
            ok, rvec, tvec = cv2.solvePnP(x3d, x2d, K, None, start[0].copy(), start[1].copy(),
                                          useExtrinsicGuess=True, flags=flag)
    except cv2.error:
        return None
    finite = ok and math.isfinite(sum(rvec.ravel().tolist()) + sum(tvec.ravel().tolist()))   # 5x numpy's on 3 numbers
    return (rvec, tvec) if finite else None


def pose_from_landmarks(verts: np.ndarray, uv: np.ndarray, camera: Camera,
                        method: str = "opencv", flags: str = "ITERATIVE",
                        sigma: np.ndarray | None = None,
                        device: torch.device = torch.device("cpu"), workers: int = 1) -> np.ndarray:
    """Poses R_t (B, 4, 4) float64 (row-vector form) from canonical vertices verts (B, V, 3)
    in metres and their image points uv (B, V, 2) in full-image pixels.

    method 'opencv': cv2.solvePnP with cv2.SOLVEPNP_<flags> per sample on `workers` threads
    ('<METHOD>+ITERATIVE': refined by OpenCV's LM; solve_pnp_opencv) (no weights: sigma must be None). method 'batched': stages.pnp.api.solve_pnp in float64 on `device`, with weights
    1 / sigma (sigma (B, V, 2) pixels) when given; the arrays go to the device in their own
    dtype and are widened there (the same numbers as widening them on the host). Problems that
    cannot be solved get NaN rows, and a warning says how many."""
    if method not in METHODS:
        raise ValueError(f"unknown PnP method {method!r}; expected one of {METHODS}")
    if method == "opencv":
        if sigma is not None:
            raise ValueError("OpenCV's solvePnP takes no per-point weights: use method='batched'"
                             " with sigma, or pass sigma=None")
        R, t = solve_pnp_opencv(verts, uv, camera.K, flags, workers)
    else:
        def on_device(x: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(x)).to(device).double()

        w2d = None if sigma is None else 1.0 / on_device(sigma)
        result = solve_pnp(on_device(verts), on_device(uv), on_device(camera.K), w2d)
        R, t = result.R.cpu().numpy(), result.t.cpu().numpy()
    failed = ~(np.isfinite(R).all((-1, -2)) & np.isfinite(t).all(-1))
    if failed.any():
        log.warning("PnP (%s) failed on %d of %d samples: their poses are NaN",
                    method, int(failed.sum()), len(failed))
    return opencv_to_rt(R, t)
