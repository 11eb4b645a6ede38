"""Per-predictor stages (submit, evaluate): their command line and where predictions live.

A predictor (baseline, infer, ...) writes artifacts/<predictor>/predictions_<split>.npz for the
splits val and test (stages/wcpa/predictions.py); params submit.predictors lists them.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from stages.wcpa.layout import DataError
from stages.wcpa.predictions import BLOCK_ROWS

ARTIFACTS = Path("artifacts")


def add_predictor(parser: argparse.ArgumentParser) -> None:
    """The per-predictor stages' option: --predictor NAME."""
    parser.add_argument("--predictor", required=True, help="reads artifacts/<predictor>/predictions_*.npz")


def predictions_path(predictor: str, split: str) -> Path:
    """artifacts/<predictor>/predictions_<split>.npz (split: 'val' or 'test')."""
    return ARTIFACTS / predictor / f"predictions_{split}.npz"


def check_finite(path: Path, predictions: dict) -> None:
    """Stop, naming the file and the first bad row, when verts or R_t hold NaN or inf.

    predictions: open_predictions() or load_predictions() output (verts (N, V, 3), R_t (N, 4, 4),
    ...), read BLOCK_ROWS rows at a time.
    """
    for key in ("verts", "R_t"):
        values = predictions[key]
        blocks = (values[start:start + BLOCK_ROWS] for start in range(0, len(values), BLOCK_ROWS))
        bad = np.concatenate([np.zeros(0, bool)] + [~np.isfinite(part.reshape(len(part), -1)).all(axis=1)
                                                    for part in blocks])
        if bad.any():
            raise DataError(f"{path}: '{key}' has NaN or inf in {int(bad.sum())} row(s), "
                            f"first row {int(np.flatnonzero(bad)[0])}")
