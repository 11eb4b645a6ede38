"""Validation of the two-branch network: predict on crops, unwarp, OpenCV PnP, challenge score."""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from stages.common.cropstore import read_rows
from stages.common.device import host_to_device
from stages.common.precision import autocast
from stages.common.threads import map_rows
from stages.face.warp import apply_warp, invert_warp
from stages.nets.dataset import crop_targets
from stages.nets.pose_frame import frame_poses
from stages.pnp.opencv import pose_from_landmarks
from stages.wcpa.camera import Camera
from stages.wcpa.score import sample_errors, summarize

ROWS = 256     # samples of a batch of the per-sample work on threads (evaluate, validation_targets)
BLOCK = 4096   # val samples whose predictions, labels and poses are held at once (about 0.5 GB)


@torch.no_grad()
def predict(model: torch.nn.Module, images: np.ndarray, inv_warps: np.ndarray, batch_size: int,
            device: torch.device, amp: torch.dtype | None = None, rows: np.ndarray | None = None
            ) -> dict[str, np.ndarray]:
    """Run the network over crops (N, S, S, 3) uint8, or their `rows` (M,) only, with the crops'
    crop -> full-image warps inv_warps (M, 2, 3) -> numpy mu (M, V, 2) crop px, sigma (M, V) crop
    px, verts (M, V, 3) metres, coeffs (M, C). Each batch's crops are read from a memory-mapped
    store's file (stages.common.cropstore.read_rows: the store never becomes resident) on a reader
    thread while the batch before runs, into pinned memory on CUDA (their copy to the device then
    waits for nothing queued before it). amp: the autocast type
    (stages.common.precision.amp_dtype), None for float32."""
    was_training = model.training
    model.eval()
    rows = np.arange(len(images)) if rows is None else np.asarray(rows)
    parts: dict[str, list[np.ndarray]] = {}
    starts = list(range(0, len(rows), batch_size))
    read = partial(_read_chunk, images, inv_warps, rows, batch_size=batch_size, pin=device.type == "cuda")
    with ThreadPoolExecutor(1) as reader:
        pending = reader.submit(read, starts[0]) if starts else None
        for k, start in enumerate(tqdm(starts, desc="predict", leave=False, disable=len(starts) < 10)):
            chunk, warps = pending.result()
            if k + 1 < len(starts):
                pending = reader.submit(read, starts[k + 1])
            x = host_to_device(chunk, device).permute(0, 3, 1, 2).contiguous()      # NCHW
            with autocast(device, amp):
                out = model(x, inv_warps=host_to_device(warps, device))
            for key, value in out.items():
                parts.setdefault(key, []).append(value.float().cpu().numpy())
    model.train(was_training)
    return {key: np.concatenate(value) for key, value in parts.items()}


def _read_chunk(images: np.ndarray, inv_warps: np.ndarray, rows: np.ndarray, start: int, batch_size: int,
                pin: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The crops (B, S, S, 3) uint8 of rows[start:start + batch_size] and their warps (B, 2, 3)
    float32 (inv_warps[start:start + batch_size]: one per row), in pinned memory when `pin`."""
    chunk = torch.from_numpy(read_rows(images, rows[start:start + batch_size]))
    warps = torch.as_tensor(np.asarray(inv_warps[start:start + batch_size], dtype=np.float32))
    return (chunk.pin_memory(), warps.pin_memory()) if pin else (chunk, warps)


def validation_poses(verts: np.ndarray, uv_full: np.ndarray, camera: Camera, flags: str,
                     workers: int = 1) -> np.ndarray:
    """Poses (N, 4, 4) from predicted meshes (N, V, 3) and their landmarks (N, V, 2) full-image
    px, by OpenCV's PnP (cv2.SOLVEPNP_<flags>, or '<METHOD>+ITERATIVE': stages.pnp.opencv) on
    all points on `workers` threads; NaN where it failed (unsolved)."""
    return pose_from_landmarks(verts, uv_full, camera, method="opencv", flags=flags, workers=workers)


def unsolved(poses: np.ndarray) -> np.ndarray:
    """(N,) bool: the poses (N, 4, 4) that PnP could not solve (NaN rows)."""
    return ~np.isfinite(poses).all(axis=(1, 2))


def median_pose(poses: np.ndarray, failed: np.ndarray) -> np.ndarray:
    """The element-wise median (4, 4) of the solved poses (N, 4, 4), the stand-in of the failed
    ones (N,) bool (PnP's, or a direct head's non-finite poses), so that the score stays defined."""
    if failed.all():
        raise ValueError("no validation sample has a pose: PnP failed on every one, or the network's poses "
                         "are not finite (a diverged run)")
    return np.median(poses[~failed], axis=0)


CALIBRATION_K = (1, 2)   # sigma multiples; a 2D isotropic Gaussian has 1 - exp(-k^2 / 2) = 39.3 % / 86.5 % within


def sigma_calibration(errors_px: np.ndarray, sigma_px: np.ndarray) -> dict[str, float]:
    """Fraction of landmark errors within k sigma for k in CALIBRATION_K, and the mean sigma.

    errors_px: (N, V) landmark distance to its target, sigma_px (N, V), the same px. A calibrated
    isotropic 2D Gaussian puts 1 - exp(-k^2 / 2) of its errors within k sigma (chi^2, 2 dof).
    -> {"sigma_within_1": .., "sigma_within_2": .., "sigma_mean_px": ..}.
    """
    ratio = errors_px / sigma_px
    fractions = {f"sigma_within_{k}": float((ratio <= k).mean()) for k in CALIBRATION_K}
    return {**fractions, "sigma_mean_px": float(np.mean(sigma_px, dtype=np.float64))}


def validation_targets(camera: Camera, verts: np.ndarray, poses: np.ndarray, warps: np.ndarray,
                       workers: int = 1) -> np.ndarray:
    """2D targets (N, V, 2) crop px of meshes (N, V, 3), poses (N, 4, 4) and crop warps (N, 2, 3)
    (stages.nets.dataset.crop_targets), in batches of ROWS samples on `workers` threads."""
    return np.concatenate(map_rows(lambda rows: crop_targets(camera, verts[rows], poses[rows], warps[rows]),
                                   len(verts), workers, ROWS))


def landmark_figures(mu: np.ndarray, uv_gt_crop: np.ndarray, uv_full: np.ndarray, inv_warps: np.ndarray,
                     sigma: np.ndarray | None) -> dict[str, float]:
    """Landmark figures of B samples, in float64: the mean point error in crop px (predictions
    mu (B, V, 2) against uv_gt_crop (B, V, 2)) and in full-image px (uv_full (B, V, 2) against
    the targets mapped by inv_warps (B, 2, 3)), and with sigma (B, V) crop px its calibration
    (sigma_calibration)."""
    crop_errors = np.linalg.norm(np.asarray(mu, np.float64) - uv_gt_crop, axis=-1)
    figures = {"landmark_crop_px": float(crop_errors.mean())}
    if sigma is not None:
        figures.update(sigma_calibration(crop_errors, sigma))
    figures["landmark_full_px"] = float(np.linalg.norm(uv_full - apply_warp(inv_warps, uv_gt_crop), axis=-1).mean())
    return figures


@dataclass
class BlockFigures:
    """What one block of validation samples leaves for the split's summary (summary_of):
    errors, their sample_errors table (failed rows NaN); poses (n, 4, 4) and failed (n,) bool,
    PnP's poses and the samples it did not solve; standins, the failed samples' (gt verts, gt
    poses, predicted verts), scored against the whole split's median pose; landmarks, the
    (samples, landmark_figures) of its batches of ROWS samples."""

    errors: pd.DataFrame
    poses: np.ndarray
    failed: np.ndarray
    standins: tuple[np.ndarray, np.ndarray, np.ndarray]
    landmarks: list[tuple[int, dict[str, float]]]


def block_figures(pred: dict[str, np.ndarray], inv_warps: np.ndarray, camera: Camera,
                  verts_gt: np.ndarray, poses_gt: np.ndarray, uv_gt_crop: np.ndarray,
                  pnp_flags: str = "SQPNP", crop_size: int = 0, pose_frame: str = "crop",
                  workers: int = 1) -> BlockFigures:
    """The figures of one block of n validation samples (evaluate's arguments): landmarks
    unwarped to the full image with inv_warps (n, 2, 3), the pose by PnP between them and the
    predicted canonical mesh (a direct head's from its R_frame and t_code: frame_poses, its
    landmarks the mesh projected with it), the per-sample errors of the samples with a finite
    pose (the others count as pnp_failed), and the landmark figures of each batch of ROWS
    samples on `workers` threads."""
    if "R_frame" in pred:
        poses = frame_poses(pred["R_frame"], pred["t_code"], inv_warps, camera, crop_size, pose_frame)
        uv_full = camera.project(pred["verts"], poses)
        pred = {**pred, "mu": apply_warp(invert_warp(inv_warps), uv_full)}
    else:
        uv_full = np.concatenate(map_rows(lambda rows: apply_warp(inv_warps[rows], pred["mu"][rows]), len(inv_warps),
                                          workers, ROWS))
        poses = validation_poses(pred["verts"], uv_full, camera, pnp_flags, workers)
    failed = unsolved(poses)
    solved = np.where(failed[:, None, None], np.eye(4), poses)      # the failed rows' errors: NaN below
    errors = sample_errors(verts_gt, poses_gt, pred["verts"], solved, workers)
    errors.loc[failed] = np.nan
    sigma = None if "R_frame" in pred else pred["sigma"]

    def figures(rows: slice) -> tuple[int, dict[str, float]]:
        """The number of samples in `rows` and their landmark figures."""
        return len(uv_full[rows]), landmark_figures(pred["mu"][rows], uv_gt_crop[rows], uv_full[rows], inv_warps[rows],
                                                    None if sigma is None else sigma[rows])

    standins = (np.asarray(verts_gt[failed]), np.asarray(poses_gt[failed]), np.asarray(pred["verts"][failed]))
    return BlockFigures(errors, poses, failed, standins, map_rows(figures, len(uv_full), workers, ROWS))


def summary_of(blocks: list[BlockFigures], workers: int = 1) -> dict[str, float]:
    """The split's metrics from its blocks' figures (block_figures, in row order): the
    challenge score and the paper's metrics (stages.wcpa.score.summarize), the samples PnP did
    not solve (pnp_failed; scored with the element-wise median of every solved pose of the
    split), and the landmark figures, their batches' weighted by their sizes. The same numbers
    as one block of every sample when the blocks are whole batches of ROWS."""
    failed = np.concatenate([block.failed for block in blocks])
    errors = pd.concat([block.errors for block in blocks], ignore_index=True)
    if failed.any():
        gt_verts, gt_poses, verts = (np.concatenate(part) for part in zip(*(block.standins for block in blocks)))
        median = median_pose(np.concatenate([block.poses for block in blocks]), failed)
        errors.loc[failed] = sample_errors(gt_verts, gt_poses, verts, np.broadcast_to(median, gt_poses.shape),
                                           workers)[errors.columns].to_numpy()
    summary = summarize(errors)
    summary["pnp_failed"] = int(failed.sum())
    parts = [part for block in blocks for part in block.landmarks]
    total = sum(count for count, _ in parts)
    summary.update({key: sum(count / total * part[key] for count, part in parts) for key in parts[0][1]})
    return {key: float(value) for key, value in summary.items()}


def block_rows(rows: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Consecutive blocks of about BLOCK of `rows` (M,), each a whole number of the network's
    batches (batch_size) and, where their least common multiple is at most BLOCK, of the
    threads' batches (ROWS): blocking then changes no figure. Otherwise (a batch size such as
    100 or 257) the threads' batches restart at each block: the landmark figures move by float
    rounding, the block stays small."""
    unit = math.lcm(batch_size, ROWS)
    unit = unit if unit <= BLOCK else batch_size
    size = unit * max(1, BLOCK // unit)
    return [rows[start:start + size] for start in range(0, len(rows), size)]


def evaluate(pred: dict[str, np.ndarray], inv_warps: np.ndarray, camera: Camera,
             verts_gt: np.ndarray, poses_gt: np.ndarray, uv_gt_crop: np.ndarray,
             pnp_flags: str = "SQPNP", crop_size: int = 0, pose_frame: str = "crop",
             workers: int = 1) -> dict[str, float]:
    """Validation metrics of predictions on one split.

    Landmarks are unwarped to the full image with inv_warps (N, 2, 3), the pose comes from PnP
    between them and the predicted canonical mesh; the challenge score and the paper's metrics
    follow (stages.wcpa.score), with sigma's calibration (sigma_calibration, crop px) for the
    landmark head. uv_gt_crop: (N, V, 2) target positions, crop px. Predictions of the direct
    head (R_frame in pred) take their pose from it (stages.nets.pose_frame.frame_poses in
    `pose_frame`, crop_size: the crops' side, px) and their landmarks from the mesh projected with it.
    workers: threads of the per-sample work, in batches of ROWS samples whatever their number
    (the landmark figures are the batches' figures weighted by their sizes: the same numbers on
    any thread count, and the same as over all samples at once to float rounding).
    """
    return summary_of([block_figures(pred, inv_warps, camera, verts_gt, poses_gt, uv_gt_crop, pnp_flags, crop_size,
                                     pose_frame, workers)], workers)
