"""Inference variants on val (docs/experiments.md "Flip-merge and PnP at inference"): flip & merge none / 3d / both x OpenCV PnP /
the sigma-weighted batched solver, and OpenCV's PnP methods, scored with stages/wcpa/score.py.

The network runs once over the val crops with the mirror pass; each variant then merges, unwarps
and solves the poses as stage infer does (skipped crops get its fallback). Ground truth: the pca
stage's label cache (artifacts/pca/verts_val.npy, poses_val.npy). Prints one row per variant:
challenge score, ADD, MAE_r, MAE_t, mean mesh error (mm, deg) and the landmark error (full px,
against the ground-truth mesh projected with the ground-truth pose) over the samples PnP solved,
and how many it failed on.

    python -m benchmarks.ablate_infer [--params params.yaml] [--checkpoint train]
Needs artifacts/crop/val, artifacts/pca, artifacts/split and artifacts/<checkpoint>/model.pt.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from stages.common.params import load_params
from stages.face.pca import PCABasis
from stages.nets.checkpoint import Expected, load_network, used_inputs
from stages.nets.dataset import CropStore
from stages.nets.flipmerge import FLIP_MERGE_MODES
from stages.nets.inference import (Fallback, InferSettings, batch_predictions, fallback_rows, mean_pose,
                                   network_outputs, skipped_rows)
from stages.nets.poses import solve_poses
from stages.pnp.opencv import METHODS
from stages.wcpa.layout import load_resources
from stages.wcpa.score import landmark_errors, sample_errors, summarize

ARTIFACTS = Path("artifacts")
COLUMNS = ["score", "ADD", "MAE_r", "MAE_t", "mesh_mean", "landmark_px"]
OPENCV_FLAGS = ("ITERATIVE", "EPNP", "SQPNP", "EPNP+ITERATIVE")


def collect_outputs(model, store: CropStore, perm: np.ndarray, settings) -> tuple[dict, dict]:
    """The network's outputs on all crops and on their mirrors (mapped back), (N, ...) each."""
    plain, back = {}, {}
    for _, p, b in network_outputs(model, store.images, store.inv_warps, settings.batch_size, settings.device, settings.amp, perm):
        for out, part in ((plain, p), (back, b)):
            for key, value in part.items():
                out.setdefault(key, []).append(value)
    return ({k: np.concatenate(v) for k, v in plain.items()}, {k: np.concatenate(v) for k, v in back.items()})


def variants(default_flags: str) -> list[tuple[str, str, str]]:
    """(flip_merge, pnp, pnp_flags): every merge mode with both solvers, and OpenCV's methods."""
    grid = [(mode, method, default_flags) for mode in FLIP_MERGE_MODES for method in METHODS]
    return grid + [("3d", "opencv", flags) for flags in OPENCV_FLAGS if flags != default_flags]


def variant_metrics(plain, back, store, mode, method, camera, settings, fallback, labels) -> dict:
    verts, uv, sigma = batch_predictions(plain, back, store.inv_warps, mode)
    pred = {"verts": verts.astype(np.float32), "landmarks": uv, "sigma": sigma,
            "R_t": solve_poses(method, verts, uv, sigma, camera, settings.pnp_flags, settings.workers)}
    skipped = skipped_rows(store)
    for key, value in fallback_rows(int(skipped.sum()), fallback, camera).items():
        pred[key][skipped] = value
    pred["R_t"][skipped] = fallback.R_t
    solved = np.isfinite(pred["R_t"]).all((1, 2))
    if not solved.any():
        return {**{name: np.nan for name in COLUMNS}, "pnp_failed": len(solved)}
    verts_gt, poses_gt = labels[0][solved], labels[1][solved]
    errors = sample_errors(verts_gt, poses_gt, pred["verts"][solved], pred["R_t"][solved])
    errors["landmark_px"] = landmark_errors(camera.project(verts_gt, poses_gt), pred["landmarks"][solved])
    return {**summarize(errors), "pnp_failed": int((~solved).sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--checkpoint", help="artifacts/<checkpoint>/model.pt (default: infer.checkpoint)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    params = load_params(args.params)
    cfg, train = params.infer, params.train
    settings = InferSettings.of(cfg)
    resources = load_resources(params.data.root)
    store = CropStore.open(ARTIFACTS / "crop" / "val")
    basis = PCABasis.load(ARTIFACTS / "pca" / "basis.npz")
    perm = np.load(ARTIFACTS / "pca" / "basis.npz")["flip_perm"]
    checkpoint = ARTIFACTS / (args.checkpoint or cfg.checkpoint) / "model.pt"
    model = load_network(checkpoint, Expected.of(train, store.size, resources.n_verts, basis.n_components),
                         used_inputs(store.run, ARTIFACTS / "pca" / "basis.npz"))
    fallback = Fallback(basis.mean.astype(np.float32), mean_pose(np.load(ARTIFACTS / "pca" / "poses_train.npy")))
    labels = (np.load(ARTIFACTS / "pca" / "verts_val.npy"), np.load(ARTIFACTS / "pca" / "poses_val.npy"))
    plain, back = collect_outputs(model, store, perm, settings)
    rows = {}
    for mode, method, flags in variants(settings.pnp_flags):
        run = replace(settings, pnp_flags=flags)
        rows[(mode, method, flags if method == "opencv" else "1/sigma")] = variant_metrics(
            plain, back, store, mode, method, resources.camera, run, fallback, labels)
    table = pd.DataFrame(rows).T[COLUMNS + ["pnp_failed"]]
    table.index.names = ["flip_merge", "pnp", "flags"]
    print(f"{checkpoint} on {len(store)} val crops (mm, deg, px):")
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
