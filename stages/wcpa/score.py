"""The challenge score and the paper's metrics, per sample and summarised.

Challenge score, row vectors, R = R_t[:3, :3], t = R_t[3, :3]:
  X1 = V_gt @ R_gt + t_gt      X2 = V_pred @ R_pred + t_pred
  X3 = V_gt @ R_pred + t_pred  X4 = V_pred @ R_gt + t_gt
  d  = 1000 * (mean_v |X1 - X2| + mean_v |X1 - X3| + 10 * mean_v |X1 - X4|)   (mm)
The three terms are called cam (camera-space mesh error), add (ADD, the pose error on the true
mesh) and shape (the canonical vertex error, since |X1 - X4| = |V_gt - V_pred|).
The paper's metrics (its Tables 1-3): ADD (mm), MAE_r (deg, mean absolute yaw/pitch/roll
error), MAE_t (mm, mean absolute x/y/z error), mesh error median/mean (mm, per-sample mean
vertex error).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from stages.common.threads import map_rows
from stages.wcpa.camera import euler_from_rt, rotation_angle_deg, to_camera

MM_PER_M = 1000.0
SHAPE_WEIGHT = 10.0
CHUNK = 256             # samples per batch: (CHUNK, V, 3) float64 arrays of 7.5 MB for V = 1220 (faster than
                        # 2048's 60 MB: 0.12 against 0.17 ms a sample, benchmarks/bench_val.py)
ERROR_COLUMNS = ["score", "cam", "add", "shape", "rot_deg", "yaw_err", "pitch_err", "roll_err",
                 "tx_err", "ty_err", "tz_err"]


def mean_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean over vertices of the Euclidean distance: (N, V, 3), (N, V, 3) -> (N,) same units."""
    return np.linalg.norm(a - b, axis=-1).mean(axis=-1)


def score_terms(verts_gt: np.ndarray, Rt_gt: np.ndarray, verts_pred: np.ndarray,
                Rt_pred: np.ndarray) -> dict[str, np.ndarray]:
    """The three score terms and d of one batch, in mm.

    verts_*: (N, V, 3) metres, canonical; Rt_*: (N, 4, 4) row-vector poses.
    Returns {'cam', 'add', 'shape', 'score'}, each (N,); score = cam + add + 10 * shape.
    """
    x1 = to_camera(verts_gt, Rt_gt)
    x2 = to_camera(verts_pred, Rt_pred)
    x3 = to_camera(verts_gt, Rt_pred)
    x4 = to_camera(verts_pred, Rt_gt)
    cam = MM_PER_M * mean_distance(x1, x2)
    add = MM_PER_M * mean_distance(x1, x3)
    shape = MM_PER_M * mean_distance(x1, x4)
    return {"cam": cam, "add": add, "shape": shape, "score": cam + add + SHAPE_WEIGHT * shape}


def wrapped_abs_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| for angles in radians, with the difference wrapped to [-pi, pi]."""
    return np.abs((np.asarray(a) - np.asarray(b) + np.pi) % (2 * np.pi) - np.pi)


def pose_errors(Rt_gt: np.ndarray, Rt_pred: np.ndarray) -> dict[str, np.ndarray]:
    """Rotation and translation errors of (N, 4, 4) poses, each (N,).

    rot_deg: geodesic angle; yaw_err, pitch_err, roll_err: absolute Euler errors (deg, the
    challenge's 'yxz' angles of euler_from_rt); tx_err, ty_err, tz_err: absolute (mm).
    """
    angle_err = np.degrees(wrapped_abs_diff(euler_from_rt(Rt_gt), euler_from_rt(Rt_pred)))
    t_err = MM_PER_M * np.abs(Rt_gt[:, 3, :3] - Rt_pred[:, 3, :3])
    out = {"rot_deg": rotation_angle_deg(Rt_gt[:, :3, :3], Rt_pred[:, :3, :3])}
    out.update({name: angle_err[:, k] for k, name in enumerate(["yaw_err", "pitch_err", "roll_err"])})
    out.update({name: t_err[:, k] for k, name in enumerate(["tx_err", "ty_err", "tz_err"])})
    return out


def _check_shapes(verts_gt, Rt_gt, verts_pred, Rt_pred) -> None:
    n, v = verts_gt.shape[:2]
    if verts_gt.shape != (n, v, 3) or verts_pred.shape != (n, v, 3):
        raise ValueError(f"vertex arrays must both be (N, V, 3): {verts_gt.shape} vs {verts_pred.shape}")
    if Rt_gt.shape != (n, 4, 4) or Rt_pred.shape != (n, 4, 4):
        raise ValueError(f"poses must both be ({n}, 4, 4): {Rt_gt.shape} vs {Rt_pred.shape}")


def sample_errors(verts_gt: np.ndarray, Rt_gt: np.ndarray, verts_pred: np.ndarray,
                  Rt_pred: np.ndarray, workers: int = 1) -> pd.DataFrame:
    """Per-sample errors, one row per sample, columns ERROR_COLUMNS (mm and degrees).

    verts_*: (N, V, 3) metres canonical; Rt_*: (N, 4, 4) row-vector poses. Computed in float64
    in batches of at most CHUNK samples, on `workers` threads (numpy releases the GIL in its
    array loops); a sample's errors do not depend on the batches.
    """
    _check_shapes(verts_gt, Rt_gt, verts_pred, Rt_pred)
    if not len(verts_gt):
        return pd.DataFrame({name: np.empty(0) for name in ERROR_COLUMNS})

    def batch(part: slice) -> pd.DataFrame:
        """The errors of the samples in `part`, in float64."""
        gt_v, gt_p = np.asarray(verts_gt[part], np.float64), np.asarray(Rt_gt[part], np.float64)
        pr_v, pr_p = np.asarray(verts_pred[part], np.float64), np.asarray(Rt_pred[part], np.float64)
        return pd.DataFrame({**score_terms(gt_v, gt_p, pr_v, pr_p), **pose_errors(gt_p, pr_p)})

    return pd.concat(map_rows(batch, len(verts_gt), workers, CHUNK), ignore_index=True)[ERROR_COLUMNS]


def landmark_errors(uv_gt: np.ndarray, uv_pred: np.ndarray) -> np.ndarray:
    """Mean 2D point error per sample: (N, L, 2), (N, L, 2) pixels -> (N,) pixels."""
    return mean_distance(np.asarray(uv_gt, np.float64), np.asarray(uv_pred, np.float64))


def summarize(errors: pd.DataFrame) -> dict[str, float]:
    """Per-sample errors (a sample_errors table) -> the challenge score and the paper's metrics.

    Keys: score, score_cam, score_add, score_shape10 (the weighted shape term; the three add up
    to score), ADD (mm), MAE_r (deg), MAE_t (mm), mesh_median, mesh_mean (mm), n; plus
    landmark_px when the table has a 'landmark_px' column.
    """
    if errors.empty:
        raise ValueError("no samples to summarise")
    out = {
        "score": float(errors["score"].mean()),
        "score_cam": float(errors["cam"].mean()),
        "score_add": float(errors["add"].mean()),
        "score_shape10": float(SHAPE_WEIGHT * errors["shape"].mean()),
        "ADD": float(errors["add"].mean()),
        "MAE_r": float(errors[["yaw_err", "pitch_err", "roll_err"]].to_numpy().mean()),
        "MAE_t": float(errors[["tx_err", "ty_err", "tz_err"]].to_numpy().mean()),
        "mesh_median": float(errors["shape"].median()),
        "mesh_mean": float(errors["shape"].mean()),
        "n": int(len(errors)),
    }
    if "landmark_px" in errors:
        out["landmark_px"] = float(errors["landmark_px"].mean())
    return out
