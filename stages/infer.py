"""Stage infer: the trained network's predictions on val or test (flip & merge, unwarp, PnP).

`python -m stages.infer --split val|test` reads the network artifacts/<infer.checkpoint>/model.pt
(checked against train.depth / coordconv / shape_head / input_size, the crop size, the data's
vertex count and the PCA size), the crop store artifacts/crop/<split>, artifacts/pca (flip
permutation, mean mesh, training poses for the fallback) and the camera of data.root. Writes
artifacts/infer/predictions_<split>.npz (stages/wcpa/predictions.py; rows =
artifacts/split/val.csv or <data.root>/list/WCPA_track2_test.csv) with verts, R_t, landmarks (N, V, 2) full-image px,
sigma (N, V) full-image px (NaN for skipped samples) and skipped (N,) bool.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from stages.common.params import Params
from stages.common.stage import stage_main
from stages.face.pca import PCABasis, load_flip_perm
from stages.nets.checkpoint import Expected, load_network, used_inputs
from stages.nets.dataset import CropStore
from stages.nets.inference import Fallback, InferSettings, infer_split, mean_pose, prediction_rows
from stages.wcpa.layout import list_path, load_resources, read_list
from stages.wcpa.predictions import PredictionWriter

log = logging.getLogger("infer")
SPLITS = ("val", "test")


ARTIFACTS = Path("artifacts")


def split_list(params: Params, split: str) -> pd.DataFrame:
    """The list the predictions are aligned with: artifacts/split/val.csv or the data's test list."""
    if split == "val":
        return read_list(ARTIFACTS / "split" / "val.csv")
    if split == "test":
        return read_list(list_path(Path(params.data.root), "test"))
    raise ValueError(f"--split {split!r}: expected one of {', '.join(SPLITS)}")


def run(params: Params, split: str, artifacts: Path = ARTIFACTS) -> Path:
    """Predict one split into artifacts/infer/predictions_<split>.npz, batch by batch (the
    resident memory stays flat in the split's size); returns the file's path."""
    cfg, train = params.infer, params.train
    resources = load_resources(params.data.root)
    table = split_list(params, split)
    store = CropStore.open(artifacts / "crop" / split)
    store.check_rows(table, str(artifacts / "crop" / split))
    basis_path = artifacts / "pca" / "basis.npz"
    basis = PCABasis.load(basis_path)
    perm = load_flip_perm(basis_path, "set infer.flip_merge: none") if cfg.flip_merge != "none" else None
    checkpoint = artifacts / cfg.checkpoint / "model.pt"
    model = load_network(checkpoint, Expected.of(train, store.size, resources.n_verts, basis.n_components),
                         used_inputs(store.run, basis_path))
    fallback = Fallback(verts=basis.mean.astype(np.float32),
                        R_t=mean_pose(np.load(artifacts / "pca" / "poses_train.npy")))
    settings = InferSettings.of(cfg)
    log.info("%s: %d crops, checkpoint %s, flip_merge=%s, pnp=%s, device %s", split, len(store), checkpoint,
             settings.flip_merge, settings.pnp, settings.device)
    started = time.perf_counter()
    path = artifacts / "infer" / f"predictions_{split}.npz"
    with PredictionWriter(path, table, prediction_rows(resources.n_verts)) as out:
        infer_split(model, store, table, perm, resources.camera, settings, fallback,
                    f"{checkpoint} on {artifacts / 'crop' / split}", out)
    elapsed = time.perf_counter() - started
    log.info("%s: %d samples in %.1f s (%.1f images/s)", split, len(store), elapsed, len(store) / max(elapsed, 1e-9))
    return path


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split", required=True, choices=SPLITS)


def main(argv: list[str] | None = None) -> None:
    stage_main(__doc__, run, options, argv)


if __name__ == "__main__":
    main()
