"""Inference of the two-branch network on a crop store (paper sec. 2.5): flip & merge, unwarp, PnP.

Per batch of crops (read from the memory-mapped store while the previous batch runs):
  1. one forward pass of the batch concatenated with its mirror (u -> S - u), on CUDA with AMP
     when present (stages.nets.flipmerge maps the mirrored outputs back and merges them);
  2. landmarks and sigma go from crop px to full-image px through the store's inv_warps;
  3. the pose comes from PnP between the landmarks and the predicted canonical mesh
     (stages.nets.poses), solved in a thread pool while the next batch runs through the network.
     A network with the direct 6DoF head (train.pose_head = direct6dof) gives the pose itself, in
     its crop's frame: it is mapped to the camera (stages.nets.crop_pose) from the original crop's
     outputs (flip & merge applies to its mesh), its landmarks are the mesh projected with that
     pose and its sigma is NaN (it has none).

Skipped samples (the crop store's index.csv `skipped` = 1: no usable crop) get the fallback
prediction: the PCA mean mesh in the mean training pose (chordal mean rotation, mean translation
of artifacts/pca/poses_train.npy), its projection as landmarks and sigma NaN. Any other row
with a non-finite mesh or landmark stops the run with the rows named. Rows whose PnP fails (or puts the face behind the camera) keep their mesh and get
the fallback pose, up to infer.max_pnp_failures of the split; past that the run stops.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pandas as pd
import torch
from scipy.spatial.transform import Rotation
from tqdm import tqdm

from stages.common.precision import amp_dtype, autocast
from stages.common.threads import single_thread_blas
from stages.face.warp import apply_warp, invert_warp
from stages.nets.crop_pose import crop_to_camera
from stages.nets.dataset import CropStore
from stages.nets.flipmerge import check_mode, merge_outputs, unmirror_outputs
from stages.nets.model import FaceNet
from stages.nets.poses import solve_poses
from stages.wcpa.camera import Camera, make_rt
from stages.wcpa.layout import ID_COLUMNS, labelled_rows

log = logging.getLogger(__name__)
OUTPUT_KEYS = ("mu", "sigma", "verts")
POSE_KEYS = ("R_crop", "t_code")    # the direct 6DoF head's outputs


class InferenceError(RuntimeError):
    """The network or the PnP produced non-finite predictions for usable samples."""


@dataclass(frozen=True)
class InferSettings:
    """params infer.*: see stages/common/schema.py."""

    batch_size: int
    flip_merge: str     # none | 3d | both
    pnp: str            # opencv | batched
    pnp_flags: str      # OpenCV solvePnP method name (ITERATIVE, EPNP, SQPNP, ...)
    device: torch.device
    amp: bool
    workers: int        # PnP threads
    max_pnp_failures: float = 0.0   # fraction of usable rows whose PnP may fail (they get the fallback pose)

    @classmethod
    def of(cls, cfg) -> "InferSettings":
        """From the infer params section (a namespace of infer.*)."""
        return cls(batch_size=cfg.batch_size, flip_merge=cfg.flip_merge, pnp=cfg.pnp, pnp_flags=cfg.pnp_flags,
                   device=pick_device(cfg.device), amp=cfg.amp, workers=cfg.workers,
                   max_pnp_failures=cfg.max_pnp_failures)


@dataclass(frozen=True)
class Fallback:
    """The prediction of a skipped sample: verts (V, 3) metres, R_t (4, 4)."""

    verts: np.ndarray
    R_t: np.ndarray


def pick_device(name: str) -> torch.device:
    """infer.device: auto (CUDA when present) | cpu | cuda."""
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"infer.device={name!r}: expected auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("infer.device=cuda but CUDA is not available")
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


def mean_pose(poses: np.ndarray) -> np.ndarray:
    """Poses (N, 4, 4) -> their mean R_t (4, 4): chordal L2 mean rotation, mean translation.
    NaN rows (samples the pca stage skipped) are left out."""
    poses = np.asarray(poses, dtype=np.float64)
    poses = poses[labelled_rows(poses)]
    rotation = Rotation.from_matrix(poses[:, :3, :3]).mean().as_matrix()
    return make_rt(rotation, poses[:, 3, :3].mean(0))


def _to_numpy(out: dict[str, torch.Tensor], rows: slice) -> dict[str, np.ndarray]:
    return {key: out[key][rows].float().cpu().numpy() for key in OUTPUT_KEYS + POSE_KEYS if key in out}


def direct_poses(R_crop: np.ndarray, t_code: np.ndarray, inv_warps: np.ndarray, camera: Camera,
                 crop_size: int) -> np.ndarray:
    """The direct head's crop-frame poses R_crop (B, 3, 3), t_code (B, 3) of crops with warps
    inv_warps (B, 2, 3) crop -> full px -> R_t (B, 4, 4); NaN for rows with NaN warps (skipped)."""
    out = np.full((len(R_crop), 4, 4), np.nan)
    rows = np.flatnonzero(np.isfinite(inv_warps).all((1, 2)))
    if len(rows):
        out[rows] = crop_to_camera(R_crop[rows], t_code[rows], invert_warp(inv_warps[rows]), camera, crop_size)
    return out


def _read_batch(images: np.ndarray, start: int, batch_size: int, pin: bool) -> torch.Tensor:
    """Crops [start, start + batch_size) of a (memory-mapped) store -> (B, S, S, 3) uint8 tensor
    (in pinned memory for a fast copy to the GPU when `pin`)."""
    batch = torch.from_numpy(np.array(images[start:start + batch_size]))
    return batch.pin_memory() if pin else batch


@torch.no_grad()
def network_outputs(model: FaceNet, images: np.ndarray, batch_size: int, device: torch.device, amp: bool,
                    perm: np.ndarray | None) -> Iterator[tuple[slice, dict, dict | None]]:
    """Run the network over crops (N, S, S, 3) uint8 (a memmap is read batch by batch).

    Yields (rows, plain, mirrored_back): the outputs mu (B, V, 2) crop px, sigma (B, V) crop px,
    verts (B, V, 3) metres of the crops, and those of their mirrors mapped back to the original
    crops (None when perm is None: no mirror pass). With a mirror, each batch is one forward of
    2B images (the crops, then their mirrors).
    """
    model = model.to(device).eval()
    dtype = amp_dtype(device, amp)
    size = images.shape[2]
    starts = list(range(0, len(images), batch_size))
    pin = device.type == "cuda"
    with ThreadPoolExecutor(1) as reader:
        pending = reader.submit(_read_batch, images, starts[0], batch_size, pin) if starts else None
        for i, start in enumerate(tqdm(starts, desc="infer", leave=False, disable=len(starts) < 10)):
            batch = pending.result()
            if i + 1 < len(starts):
                pending = reader.submit(_read_batch, images, starts[i + 1], batch_size, pin)
            x = batch.to(device, non_blocking=True).permute(0, 3, 1, 2).contiguous()    # NCHW, as in training
            n = len(x)
            if perm is not None:
                x = torch.cat([x, x.flip(-1)])
            with autocast(device, dtype):
                out = model(x)
            back = None if perm is None else unmirror_outputs(_to_numpy(out, slice(n, 2 * n)), perm, size)
            yield slice(start, start + n), _to_numpy(out, slice(0, n)), back


def to_full_image(mu: np.ndarray, sigma: np.ndarray, inv_warps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop px -> full-image px: landmarks (B, V, 2) through inv_warps (B, 2, 3), sigma (B, V)
    scaled by each similarity's scale (NaN out for NaN warps)."""
    with np.errstate(invalid="ignore"):      # skipped rows have NaN warps
        scale = np.sqrt(np.abs(np.linalg.det(np.asarray(inv_warps, dtype=np.float64)[:, :, :2])))
    return apply_warp(inv_warps, mu), sigma * scale[:, None]


def batch_predictions(plain: dict, back: dict | None, inv_warps: np.ndarray,
                      mode: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merged outputs of a batch in full-image px -> verts (B, V, 3), landmarks (B, V, 2), sigma (B, V)."""
    merged = merge_outputs(plain, back if back is not None else plain, mode)
    uv, sigma = to_full_image(merged["mu"], merged["sigma"], inv_warps)
    return merged["verts"], uv, sigma


def skipped_rows(store: CropStore) -> np.ndarray:
    """(N,) bool: rows the crop stage skipped (index.csv `skipped` = 1)."""
    if "skipped" not in store.index.columns:
        return np.zeros(len(store), dtype=bool)
    return store.index["skipped"].astype(str).str.strip().isin(["1", "True", "true"]).to_numpy()


def apply_fallback(pred: dict[str, np.ndarray], skipped: np.ndarray, fallback: Fallback, camera: Camera) -> None:
    """Give skipped rows the fallback mesh and pose, its projection as landmarks and NaN sigma."""
    if not skipped.any():
        return
    pred["verts"][skipped] = fallback.verts
    pred["R_t"][skipped] = fallback.R_t
    pred["landmarks"][skipped] = camera.project(fallback.verts, fallback.R_t)
    pred["sigma"][skipped] = np.nan


def check_network(pred: dict[str, np.ndarray], skipped: np.ndarray, table: pd.DataFrame, where: str) -> None:
    """Stop when the network gave a usable row a non-finite mesh or landmarks, naming up to 5 rows."""
    bad = ~(_finite(pred, "verts") & _finite(pred, "landmarks")) & ~skipped
    if bad.any():
        raise InferenceError(f"{where}: the network gave non-finite outputs for {int(bad.sum())} sample(s): "
                             + _names(table, np.flatnonzero(bad)))


def repair_poses(pred: dict[str, np.ndarray], skipped: np.ndarray, fallback: Fallback, table: pd.DataFrame,
                 max_fraction: float, where: str) -> np.ndarray:
    """Rows whose PnP failed (non-finite pose, or the face behind the camera: tz >= 0, which the
    submission validator rejects) get the fallback pose and keep their predicted mesh.

    Returns (N,) bool of those rows; stops, naming them, when they are more than `max_fraction`
    of the usable rows (a broken network or a PnP method unfit for its landmarks)."""
    failed = ~(_finite(pred, "R_t") & (pred["R_t"][:, 3, 2] < 0)) & ~skipped
    usable = max(int((~skipped).sum()), 1)
    if failed.sum() > max_fraction * usable:
        raise InferenceError(f"{where}: PnP failed or put the face behind the camera for {int(failed.sum())} of "
                             f"{usable} sample(s) (infer.max_pnp_failures={max_fraction}); another "
                             "infer.pnp_flags, e.g. EPNP or SQPNP, may solve them: " + _names(table, np.flatnonzero(failed)))
    if failed.any():
        pred["R_t"][failed] = fallback.R_t
        log.warning("%s: PnP failed for %d sample(s): they get the mean training pose (%s)", where,
                    int(failed.sum()), _names(table, np.flatnonzero(failed)))
    return failed


def _finite(pred: dict[str, np.ndarray], key: str) -> np.ndarray:
    return np.isfinite(pred[key].reshape(len(pred[key]), -1)).all(1)


def _names(table: pd.DataFrame, rows: np.ndarray) -> str:
    """'subject/action/img (row i)' of up to 5 rows."""
    names = ["/".join(map(str, table.iloc[i][ID_COLUMNS])) + f" (row {i})" for i in rows[:5]]
    return ", ".join(names) + (", ..." if len(rows) > 5 else "")


def predict_store(model: FaceNet, store: CropStore, perm: np.ndarray | None, camera: Camera,
                  settings: InferSettings) -> dict[str, np.ndarray]:
    """verts (N, V, 3), R_t (N, 4, 4), landmarks (N, V, 2) full px, sigma (N, V) full px for a
    store's rows (fallback rows not yet filled: see `apply_fallback`)."""
    return predict_crops(model, store.images, store.inv_warps, perm, camera, settings)


def predict_crops(model: FaceNet, images: np.ndarray, inv_warps: np.ndarray, perm: np.ndarray, camera: Camera,
                  settings: InferSettings) -> dict[str, np.ndarray]:
    """Crops (N, S, S, 3) uint8 (a memmap is read batch by batch) and their crop -> full-image
    warps (N, 2, 3) -> verts (N, V, 3) metres, R_t (N, 4, 4), landmarks (N, V, 2) full px,
    sigma (N, V) full px. numpy's BLAS gets one thread (stages.common.threads): the PnP
    threads and torch share the cores."""
    single_thread_blas()
    mode = check_mode(settings.flip_merge)
    mirror = perm if mode != "none" else None
    parts: dict[str, list] = {"verts": [], "landmarks": [], "sigma": []}
    with ThreadPoolExecutor(max(1, settings.workers)) as solvers:
        poses = []
        for rows, plain, back in network_outputs(model, images, settings.batch_size, settings.device,
                                                 settings.amp, mirror):
            verts, uv, sigma = batch_predictions(plain, back, inv_warps[rows], mode)
            if "R_crop" in plain:
                poses.append(solvers.submit(direct_poses, plain["R_crop"], plain["t_code"], inv_warps[rows], camera,
                                            images.shape[1]))
            else:
                poses.append(solvers.submit(solve_poses, settings.pnp, verts, uv, sigma, camera,
                                            settings.pnp_flags, 1))
            for key, value in zip(("verts", "landmarks", "sigma"), (verts, uv, sigma)):
                parts[key].append(value)
        R_t = [future.result() for future in poses]
    if not R_t:
        n_verts = model.config.n_verts
        return {"verts": np.zeros((0, n_verts, 3), np.float32), "R_t": np.zeros((0, 4, 4)),
                "landmarks": np.zeros((0, n_verts, 2), np.float32), "sigma": np.zeros((0, n_verts), np.float32)}
    out = {key: np.concatenate(value).astype(np.float32) for key, value in parts.items()}
    out["R_t"] = np.concatenate(R_t)
    if model.pose is not None:
        out["landmarks"] = camera.project(out["verts"], out["R_t"]).astype(np.float32)
        out["sigma"] = np.full_like(out["sigma"], np.nan)
    return out


def infer_split(model: FaceNet, store: CropStore, table: pd.DataFrame, perm: np.ndarray | None, camera: Camera,
                settings: InferSettings, fallback: Fallback, where: str) -> dict[str, np.ndarray]:
    """Predictions of one split, fallback rows filled and checked: the arrays of the predictions
    file (verts, R_t, landmarks, sigma, skipped (N,) bool, pnp_failed (N,) bool). `where` names the run in errors."""
    skipped = skipped_rows(store)
    pred = predict_store(model, store, perm, camera, settings)
    apply_fallback(pred, skipped, fallback, camera)
    check_network(pred, skipped, table, where)
    pred["pnp_failed"] = repair_poses(pred, skipped, fallback, table, settings.max_pnp_failures, where)
    if skipped.any():
        log.warning("%s: %d skipped sample(s) got the fallback prediction (PCA mean mesh, mean training pose)",
                    where, int(skipped.sum()))
    else:
        log.info("%s: no skipped samples", where)
    pred["skipped"] = skipped
    return pred
