"""The predictions file every predictor writes (baseline, infer) and submit/evaluate read.

One .npz per predictor and split, rows aligned with the split's list:
  ids:      (N, 3) str   subject_id, facial_action, img_id
  verts:    (N, V, 3) float32  canonical vertices, metres
  R_t:      (N, 4, 4) float64  pose, row-vector form (WCPA.md)
  optional: landmarks (N, V, 2) float32 pixels in the full image; sigma (N, V) or (N, V, 2)
            pixels (the landmarks' uncertainty); any extra (infer adds skipped (N,) bool)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from stages.common.io import save_npz
from stages.wcpa.layout import ID_COLUMNS, DataError


def save_predictions(path: Path | str, table: pd.DataFrame, verts: np.ndarray, R_t: np.ndarray,
                     **extra: np.ndarray) -> None:
    """Write predictions aligned with `table` (a list DataFrame), atomically."""
    n = len(table)
    if len(verts) != n or len(R_t) != n:
        raise ValueError(f"{path}: {len(verts)} meshes / {len(R_t)} poses for {n} list rows")
    ids = table[ID_COLUMNS].to_numpy(dtype=str)
    save_npz(path, ids=ids, verts=np.asarray(verts, np.float32), R_t=np.asarray(R_t, np.float64), **extra)


def load_predictions(path: Path | str, table: pd.DataFrame | None = None) -> dict[str, np.ndarray]:
    """Read a predictions file; with `table`, check that its rows are the list's rows in order."""
    path = Path(path)
    try:
        with np.load(path) as npz:
            data = {key: npz[key] for key in npz.files}
    except FileNotFoundError:
        raise DataError(f"{path}: predictions file not found") from None
    for key in ("ids", "verts", "R_t"):
        if key not in data:
            raise DataError(f"{path}: missing '{key}'")
    if table is not None:
        expected = table[ID_COLUMNS].to_numpy(dtype=str)
        if data["ids"].shape != expected.shape or not (data["ids"] == expected).all():
            raise DataError(f"{path}: rows do not match the list ({len(data['ids'])} vs {len(expected)} rows, "
                            "or another order)")
    return data
