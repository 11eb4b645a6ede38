"""What limits the demo's val score (docs/experiments.md "Open problems"): oracle rows that keep part of the
truth, against the trained network, all scored with stages/wcpa/score.py on the val split.

1. PnP oracles (OpenCV EPnP + LM on all vertices, exact 2D = the true mesh projected with the
   true pose): the mean training mesh; the true mesh rescaled to the mean mesh's size (what a
   perfect shape would score when its size, which one image barely shows, is not known); the
   network's own 3D branch (what perfect landmarks would give the trained network).
2. How much of the shape the 2D landmarks carry: a ridge regression from the 2D landmarks of
   all vertices (crop px) to the mesh, fitted on train, tested on val; once with the exact
   landmarks, once with the network's predicted ones. The network's own 3D branch is printed
   beside them, with the share of each val mesh's deviation from the mean mesh it recovers
   (the least-squares slope of its deviation on the true one: 1 = all, 0 = the mean mesh).

    python -m benchmarks.score_floor [--checkpoint train] [--ridge 100]
Needs artifacts/crop, artifacts/pca and artifacts/<checkpoint>/model.pt (dvc repro train).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from stages.common.params import load_params
from stages.face.pca import PCABasis
from stages.nets.checkpoint import Expected, load_network, used_inputs
from stages.nets.dataset import CropStore, crop_targets
from stages.nets.validate import predict
from stages.nets.poses import solve_poses
from stages.wcpa.layout import load_resources
from stages.wcpa.score import sample_errors, summarize

ARTIFACTS = Path("artifacts")


def mesh_error_mm(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean over samples of the mean vertex distance (mm); (N, V, 3) metres."""
    return float(np.linalg.norm(pred - true, axis=-1).mean() * 1000)


def rescaled_to(meshes: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Each mesh (N, V, 3) scaled about its centroid to the least-squares size of `reference` (V, 3)."""
    centred = meshes - meshes.mean(1, keepdims=True)
    ref = reference - reference.mean(0)
    scale = (centred * ref).sum((1, 2)) / (ref * ref).sum()
    return meshes.mean(1, keepdims=True) + centred / scale[:, None, None]


def recovered_share(pred: np.ndarray, true: np.ndarray, mean: np.ndarray) -> float:
    """Median over samples of <pred - mean, true - mean> / |true - mean|^2; (N, V, 3), mean (V, 3)."""
    d_pred, d_true = (pred - mean).reshape(len(pred), -1), (true - mean).reshape(len(true), -1)
    return float(np.median((d_pred * d_true).sum(1) / (d_true * d_true).sum(1)))


def pnp_oracle(name: str, meshes: np.ndarray, uv: np.ndarray, camera, verts: np.ndarray, poses: np.ndarray) -> None:
    sigma = np.ones(uv.shape[:2])
    poses_pred = solve_poses("opencv", meshes, uv, sigma, camera, "EPNP+ITERATIVE", workers=2)
    s = summarize(sample_errors(verts, poses, meshes, poses_pred))
    print(f"  {name:58s} score {s['score']:7.2f}  ADD {s['ADD']:6.2f}  10 x shape {s['score_shape10']:6.2f}  "
          f"mesh {s['mesh_mean']:.2f}")


def ridge_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, strength: float) -> np.ndarray:
    """Ridge regression (centred, closed form) of y (N, D) on x (N, F); predictions for x_test."""
    mx, my = x_train.mean(0), y_train.mean(0)
    a = x_train - mx
    weights = np.linalg.solve(a.T @ a + strength * np.eye(a.shape[1]), a.T @ (y_train - my))
    return (x_test - mx) @ weights + my


def load_split(name: str) -> tuple[CropStore, np.ndarray, np.ndarray]:
    """The crop store, true meshes (N, V, 3) metres and poses (N, 4, 4) of a split."""
    store = CropStore.open(ARTIFACTS / "crop" / name)
    verts = np.load(ARTIFACTS / "pca" / f"verts_{name}.npy").astype(np.float64)
    return store, verts, np.load(ARTIFACTS / "pca" / f"poses_{name}.npy")


def print_pnp_oracles(split: dict, net_mesh: np.ndarray, camera) -> None:
    _, verts, poses = split["val"]
    mean_mesh = split["train"][1].mean(0)
    uv = camera.project(verts, poses)
    print("PnP oracles on val (exact 2D of all vertices):")
    pnp_oracle("mean training mesh", np.broadcast_to(mean_mesh, verts.shape).copy(), uv, camera, verts, poses)
    pnp_oracle("true mesh at the mean mesh's size", rescaled_to(verts, mean_mesh), uv, camera, verts, poses)
    pnp_oracle("the network's 3D branch", net_mesh, uv, camera, verts, poses)


def print_ridge_probe(split: dict, predicted: dict, camera, strength: float) -> None:
    verts, mean_mesh, n_train = split["val"][1], split["train"][1].mean(0), len(split["train"][1])
    print(f"Mesh from 2D landmarks by ridge regression (fitted on {n_train} train samples), val mesh error (mm):")
    exact = {name: crop_targets(camera, v, p, s.warps).reshape(len(v), -1) for name, (s, v, p) in split.items()}
    network = {name: out["mu"].reshape(len(out["mu"]), -1) for name, out in predicted.items()}
    y_train = split["train"][1].reshape(n_train, -1)
    for label, x in (("exact 2D", exact), ("network's 2D", network)):
        mesh = ridge_predict(x["train"], y_train, x["val"], strength).reshape(verts.shape)
        print(f"  from the {label:14s} {mesh_error_mm(mesh, verts):.2f}")
    net_mesh = predicted["val"]["verts"].astype(np.float64)
    print(f"  network's 3D branch    {mesh_error_mm(net_mesh, verts):.2f} (recovers "
          f"{recovered_share(net_mesh, verts, mean_mesh):.2f} of the deviation from the mean mesh)")
    print(f"  mean training mesh     {mesh_error_mm(np.broadcast_to(mean_mesh, verts.shape), verts):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--checkpoint", default="train", help="artifacts/<checkpoint>/model.pt")
    parser.add_argument("--ridge", type=float, default=100.0, help="ridge strength (crop px^2)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    params = load_params(args.params)
    resources = load_resources(params.data.root)
    split = {name: load_split(name) for name in ("train", "val")}
    basis = PCABasis.load(ARTIFACTS / "pca" / "basis.npz")
    model = load_network(ARTIFACTS / args.checkpoint / "model.pt",
                         Expected.of(params.train, split["val"][0].size, resources.n_verts,
                                     basis.n_components),
                         used_inputs(split["val"][0].run, ARTIFACTS / "pca" / "basis.npz"))
    predicted = {name: predict(model, s[0].images, s[0].inv_warps, 64, torch.device("cpu")) for name, s in split.items()}
    print_pnp_oracles(split, predicted["val"]["verts"].astype(np.float64), resources.camera)
    print_ridge_probe(split, predicted, resources.camera, args.ridge)


if __name__ == "__main__":
    main()
