"""Evaluation tables of one split: per-sample errors with ids and pose, and the plot data.

errors table: the list's id columns, the errors of stages/wcpa/score.py (mm, degrees), the
landmark error when 2D predictions exist, and the ground truth's yaw (deg) and distance
(|t|, m) against which errors are plotted. Plot tables are small CSVs for `dvc plots`.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from stages.wcpa.camera import Camera, euler_from_rt
from stages.wcpa.layout import ID_COLUMNS
from stages.wcpa.score import CHUNK, ERROR_COLUMNS, landmark_errors, sample_errors

HIST_METRICS = ("score", "add", "shape")
CURVE_METRICS = ("score", "cam", "add", "shape")


def error_table(table: pd.DataFrame, verts_gt: np.ndarray, Rt_gt: np.ndarray, predictions: dict,
                camera: Camera) -> pd.DataFrame:
    """Per-sample errors of a block of a split, one row per list row (stages.evaluate scores a
    split block by block, on threads).

    table: the block's list rows; verts_gt (N, V, 3), Rt_gt (N, 4, 4): ground truth; predictions:
    arrays verts (N, V, 3), R_t (N, 4, 4) and optionally landmarks (N, V, 2) full-image px.
    """
    errors = sample_errors(verts_gt, Rt_gt, predictions["verts"], predictions["R_t"])
    if "landmarks" in predictions:
        errors["landmark_px"] = projected_landmark_errors(camera, verts_gt, Rt_gt, predictions["landmarks"])
    context = pd.DataFrame({"yaw_deg": np.degrees(euler_from_rt(Rt_gt)[:, 0]),
                            "distance_m": np.linalg.norm(Rt_gt[:, 3, :3], axis=1)})
    return pd.concat([table[ID_COLUMNS].reset_index(drop=True), errors, context], axis=1)


def projected_landmark_errors(camera: Camera, verts_gt: np.ndarray, Rt_gt: np.ndarray,
                              uv_pred: np.ndarray) -> np.ndarray:
    """Mean px distance of predicted 2D points (N, V, 2) to the projected ground truth, (N,), in
    batches of CHUNK samples."""
    parts = [landmark_errors(camera.project(verts_gt[start:start + CHUNK], Rt_gt[start:start + CHUNK]),
                             uv_pred[start:start + CHUNK]) for start in range(0, len(verts_gt), CHUNK)]
    return np.concatenate(parts or [np.empty(0)])


def empty_error_table(with_landmarks: bool) -> pd.DataFrame:
    """The error table's header without rows (a split without ground truth)."""
    columns = ID_COLUMNS + ERROR_COLUMNS + ["landmark_px"] * with_landmarks + ["yaw_deg", "distance_m"]
    return pd.DataFrame(columns=columns)


def histogram(values: np.ndarray, bins: int) -> pd.DataFrame:
    """Histogram of per-sample errors over [0, max]: columns error_mm (bin centre), samples."""
    top = float(values.max()) if len(values) and values.max() > 0 else 1.0
    counts, edges = np.histogram(values, bins=bins, range=(0.0, top))
    return pd.DataFrame({"error_mm": (edges[:-1] + edges[1:]) / 2, "samples": counts})


def binned_means(errors: pd.DataFrame, by: pd.Series, name: str, bins: int) -> pd.DataFrame:
    """Mean errors in equal-width bins of `by`: columns <name> (bin centre), samples, <metric>_mm.

    Empty bins are left out.
    """
    columns = [name, "samples"] + [f"{m}_mm" for m in CURVE_METRICS]
    if errors.empty:
        return pd.DataFrame(columns=columns)
    edges = np.linspace(by.min(), by.max() + 1e-9, bins + 1)
    which = np.clip(np.digitize(by, edges) - 1, 0, bins - 1)
    groups = errors[list(CURVE_METRICS)].groupby(which)
    out = groups.mean().add_suffix("_mm")
    out.insert(0, "samples", groups.size())
    out.insert(0, name, (edges[out.index] + edges[out.index + 1]) / 2)
    return out.reset_index(drop=True)[columns]


def plot_tables(errors: pd.DataFrame, bins: int) -> dict[str, pd.DataFrame]:
    """The plot data of one split: {'hist_score', 'hist_add', 'hist_shape', 'vs_yaw', 'vs_distance'}."""
    out = {f"hist_{m}": histogram(errors[m].to_numpy(float), bins) for m in HIST_METRICS}
    yaw = errors["yaw_deg"].astype(float).abs()
    out["vs_yaw"] = binned_means(errors, yaw, "abs_yaw_deg", bins)
    out["vs_distance"] = binned_means(errors, errors["distance_m"].astype(float), "distance_m", bins)
    return out
