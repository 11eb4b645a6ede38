"""Head poses from predicted meshes and landmarks at inference, in parallel chunks.

A thin layer over the pipeline's pose-from-landmarks entry point (stages.pnp.opencv):
  opencv   cv2.solvePnP per sample, all points weighted alike. infer.pnp_flags names the
           method (ITERATIVE, EPNP, SQPNP, ...) or a method refined by OpenCV's iterative LM
           from its solution, 'EPNP+ITERATIVE' (the default): OpenCV's own start for ITERATIVE
           (DLT) puts the face behind the camera on noisy landmarks of a nearly flat face.
  batched  the project's batched Levenberg-Marquardt solver (stages.pnp.api), each point
           weighted by 1 / sigma, the landmark head's uncertainty; on the inference device:
           on a GPU a whole batch is one task, solved on a CUDA stream of its own beside the
           network's next forward, with no Python per sample
Chunks run in threads (OpenCV and torch release the GIL). Rows with NaN input (skipped
samples) are not solved and come back NaN, like the problems the solver rejects.
"""
from __future__ import annotations

import contextlib
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Callable

import cv2
import numpy as np
import torch

from stages.pnp.opencv import METHODS, opencv_flag, pose_from_landmarks
from stages.wcpa.camera import Camera, opencv_to_rt, rt_to_opencv

# samples per task: OpenCV's 16 spread a batch of 256 over 16 threads; the batched solver
# vectorises over its chunk
CHUNK = {"opencv": 16, "batched": 64}


def parse_flags(flags: str) -> tuple[str, bool]:
    """infer.pnp_flags -> (OpenCV method, refine with ITERATIVE): 'EPNP+ITERATIVE' -> ('EPNP', True)."""
    method, _, refine = flags.upper().partition("+")
    if refine not in ("", "ITERATIVE"):
        raise ValueError(f"infer.pnp_flags={flags!r}: only ITERATIVE can refine a solution ('<METHOD>+ITERATIVE')")
    try:
        opencv_flag(method)
    except ValueError as err:
        raise ValueError(f"infer.pnp_flags: {err}") from None
    return method, bool(refine)


def refine_iterative(verts: np.ndarray, uv: np.ndarray, R_t: np.ndarray, camera: Camera) -> np.ndarray:
    """OpenCV's iterative LM started from poses R_t (n, 4, 4) -> refined R_t (n, 4, 4); rows
    that are NaN or fail stay as they were."""
    R_cv, t_cv = rt_to_opencv(R_t)
    out = R_t.copy()
    for i in np.flatnonzero(np.isfinite(R_t).all((1, 2))):
        rvec = cv2.Rodrigues(R_cv[i])[0]
        ok, rvec, tvec = cv2.solvePnP(verts[i], uv[i], camera.K, None, rvec, t_cv[i].reshape(3, 1).copy(),
                                      useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
        if ok and np.isfinite(rvec).all() and np.isfinite(tvec).all():
            out[i] = opencv_to_rt(cv2.Rodrigues(rvec)[0], tvec.ravel())
    return out


def _solve_chunk(method: str, verts: np.ndarray, uv: np.ndarray, sigma: np.ndarray, camera: Camera,
                 flags: str, device: torch.device) -> np.ndarray:
    if method == "batched":
        with _side_stream(device):
            return pose_from_landmarks(verts, uv, camera, method=method, sigma=np.repeat(sigma[..., None], 2, -1),
                                       device=device)
    start, refine = parse_flags(flags)
    verts, uv = np.asarray(verts, np.float64), np.asarray(uv, np.float64)
    poses = pose_from_landmarks(verts, uv, camera, method=method, flags=start)
    return refine_iterative(verts, uv, poses, camera) if refine else poses


def _side_stream(device: torch.device) -> contextlib.AbstractContextManager:
    """A CUDA stream of its own for a task on a CUDA device (its copies and kernels then wait for
    nothing queued on the network's stream); nothing elsewhere."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    return torch.cuda.stream(torch.cuda.Stream(device))


def _chunk_size(method: str, device: torch.device, n: int) -> int:
    """Samples per task: CHUNK[method], or all n for the batched solver on a GPU."""
    return max(n, 1) if method == "batched" and device.type != "cpu" else CHUNK[method]


def check_pnp(method: str, flags: str) -> None:
    """Stop on an unknown PnP method (infer.pnp) or OpenCV flags (infer.pnp_flags)."""
    if method not in METHODS:
        raise ValueError(f"infer.pnp={method!r}: expected one of {', '.join(METHODS)}")
    if method == "opencv":
        parse_flags(flags)


def submit_poses(pool: Executor, method: str, verts: np.ndarray, uv: np.ndarray, sigma: np.ndarray,
                 camera: Camera, flags: str = "EPNP+ITERATIVE",
                 device: torch.device = torch.device("cpu")) -> Callable[[], np.ndarray]:
    """Put the PnP of a batch on `pool` in chunks of CHUNK[method] samples (a batch's poses
    spread over every thread; the batched solver on a GPU `device`: one task) -> a function that
    waits for them: R_t (N, 4, 4) float64, NaN where the input has NaN or PnP fails. Arrays as in
    `solve_poses`; a bad method or flags raise here."""
    check_pnp(method, flags)
    finite = np.isfinite(uv).all((1, 2)) & np.isfinite(verts).all((1, 2)) & np.isfinite(sigma).all(1)
    rows = np.flatnonzero(finite)
    size = _chunk_size(method, device, len(rows))
    chunks = [rows[s:s + size] for s in range(0, len(rows), size)]
    futures = [pool.submit(_solve_chunk, method, verts[c], uv[c], sigma[c], camera, flags, device) for c in chunks]

    def gather() -> np.ndarray:
        out = np.full((len(verts), 4, 4), np.nan)
        for chunk, future in zip(chunks, futures):
            out[chunk] = future.result()
        return out
    return gather


def solve_poses(method: str, verts: np.ndarray, uv: np.ndarray, sigma: np.ndarray, camera: Camera,
                flags: str = "EPNP+ITERATIVE", workers: int = 1,
                device: torch.device = torch.device("cpu")) -> np.ndarray:
    """verts (N, V, 3) metres, uv (N, V, 2) full-image px, sigma (N, V) full-image px (used by
    'batched', solved on `device`) -> R_t (N, 4, 4) float64, NaN where the input has NaN or PnP
    fails; on `workers` threads."""
    with ThreadPoolExecutor(max(1, workers)) as pool:
        return submit_poses(pool, method, verts, uv, sigma, camera, flags, device)()
