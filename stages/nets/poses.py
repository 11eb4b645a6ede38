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

import numpy as np
import torch

from stages.pnp.opencv import METHODS, pose_from_landmarks, split_flags
from stages.wcpa.camera import Camera

# samples per task: OpenCV's 16 spread a batch of 256 over 16 threads; the batched solver
# vectorises over its chunk
CHUNK = {"opencv": 16, "batched": 64}


def parse_flags(flags: str) -> tuple[str, bool]:
    """infer.pnp_flags -> (OpenCV method, refine with ITERATIVE): 'EPNP+ITERATIVE' -> ('EPNP', True)."""
    try:
        return split_flags(flags)
    except ValueError as err:
        raise ValueError(f"infer.pnp_flags={err}") from None


def _solve_chunk(method: str, verts: np.ndarray, uv: np.ndarray, sigma: np.ndarray, camera: Camera,
                 flags: str, device: torch.device) -> np.ndarray:
    if method == "batched":
        with _side_stream(device):
            return pose_from_landmarks(verts, uv, camera, method=method, sigma=np.repeat(sigma[..., None], 2, -1),
                                       device=device)
    return pose_from_landmarks(verts, uv, camera, method=method, flags=flags)


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
    `solve_poses`; the threads read them in place (a chunk of consecutive rows is a view), so
    they must not change until that function returns. A bad method or flags raise here."""
    check_pnp(method, flags)
    finite = np.isfinite(uv).all((1, 2)) & np.isfinite(verts).all((1, 2)) & np.isfinite(sigma).all(1)
    rows = np.flatnonzero(finite)
    size = _chunk_size(method, device, len(rows))
    chunks = [_view_index(rows[s:s + size]) for s in range(0, len(rows), size)]
    futures = [pool.submit(_solve_chunk, method, verts[c], uv[c], sigma[c], camera, flags, device) for c in chunks]

    def gather() -> np.ndarray:
        out = np.full((len(verts), 4, 4), np.nan)
        for chunk, future in zip(chunks, futures):
            out[chunk] = future.result()
        return out
    return gather


def _view_index(rows: np.ndarray) -> slice | np.ndarray:
    """Sorted row indices (n,) -> the slice they span when they are consecutive (an array indexed
    by it is a view: the usual chunk, of a batch without skipped rows), else themselves (a copy)."""
    if len(rows) and rows[-1] - rows[0] + 1 == len(rows):
        return slice(int(rows[0]), int(rows[-1]) + 1)
    return rows


def solve_poses(method: str, verts: np.ndarray, uv: np.ndarray, sigma: np.ndarray, camera: Camera,
                flags: str = "EPNP+ITERATIVE", workers: int = 1,
                device: torch.device = torch.device("cpu")) -> np.ndarray:
    """verts (N, V, 3) metres, uv (N, V, 2) full-image px, sigma (N, V) full-image px (used by
    'batched', solved on `device`) -> R_t (N, 4, 4) float64, NaN where the input has NaN or PnP
    fails; on `workers` threads."""
    with ThreadPoolExecutor(max(1, workers)) as pool:
        return submit_poses(pool, method, verts, uv, sigma, camera, flags, device)()
