"""Per-predictor stages (submit, evaluate): their command line and where predictions live.

A predictor (baseline, infer, ...) writes artifacts/<predictor>/predictions_<split>.npz for the
splits val and test (stages/wcpa/predictions.py); params submit.predictors lists them.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from stages.wcpa.layout import DataError

ARTIFACTS = Path("artifacts")


def add_predictor(parser: argparse.ArgumentParser) -> None:
    """The per-predictor stages' option: --predictor NAME."""
    parser.add_argument("--predictor", required=True, help="reads artifacts/<predictor>/predictions_*.npz")


def predictions_path(predictor: str, split: str) -> Path:
    """artifacts/<predictor>/predictions_<split>.npz (split: 'val' or 'test')."""
    return ARTIFACTS / predictor / f"predictions_{split}.npz"


def check_finite(path: Path, predictions: dict) -> None:
    """Stop, naming the file and the first bad row, when verts or R_t hold NaN or inf.

    predictions: load_predictions() output (verts (N, V, 3), R_t (N, 4, 4), ...).
    """
    for key in ("verts", "R_t"):
        values = predictions[key]
        rows = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
        if rows.any():
            raise DataError(f"{path}: '{key}' has NaN or inf in {int(rows.sum())} row(s), "
                            f"first row {int(np.flatnonzero(rows)[0])}")
