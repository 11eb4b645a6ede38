"""A tiny project tree for the pca/train tests: data root, split, crop store and params.yaml.

Faces are small symmetric point clouds (V points) with per-subject identity and sparse
blendshape expressions; the action 'neutral' has no expression. Crops are random noise with a
similarity warp that puts the face's projection in the crop, so targets are realistic while
nothing has to be rendered.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml

from stages.common.cropstore import stamp_run
from stages.common.params import Params, load_params
from stages.face.pca import ARKIT_BLENDSHAPES
from stages.wcpa.camera import Camera, rt_from_euler
from stages.wcpa.obj import write_obj

PROJ = np.array([[1.57443701, 0, 0, 0], [0, 1.57443701, 0, 0], [0, 0, -0.99999976, -1], [0, 0, -0.001, 0]])
REPO = Path(__file__).resolve().parents[1]


def symmetric_template(half: int, rng: np.random.Generator) -> np.ndarray:
    """(2 * half + 4, 3) metres: `half` points with x > 0, their mirrors, 4 points on x = 0."""
    right = np.column_stack([rng.uniform(0.01, 0.07, half), rng.uniform(-0.09, 0.09, half),
                             rng.uniform(-0.03, 0.05, half)])
    middle = np.column_stack([np.zeros(4), np.linspace(-0.08, 0.08, 4), np.full(4, 0.06)])
    return np.concatenate([right, right * [-1, 1, 1], middle])


def make_faces(rng: np.random.Generator, template: np.ndarray, subjects: int, actions: list[str],
               frames: int, blendshapes: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    """Ids table and meshes (N, V, 3): identity (1 mm) + non-negative blendshape mix (none when neutral)."""
    rows, meshes = [], []
    deltas = blendshapes - template
    for s in range(subjects):
        identity = template + rng.normal(0, 0.001, template.shape)
        for action in actions:
            weights = np.zeros(len(deltas)) if action == "neutral" else rng.uniform(0, 1, len(deltas)) * (rng.random(len(deltas)) < 0.2)
            for f in range(frames):
                scale = 0.0 if action == "neutral" else (f + 1) / frames
                meshes.append(identity + np.tensordot(weights * scale, deltas, 1) + rng.normal(0, 1e-5, template.shape))
                rows.append((f"{s:04d}", action, f"{f:05d}"))
    return pd.DataFrame(rows, columns=["subject_id", "facial_action", "img_id"]), np.asarray(meshes, np.float32)


def face_blendshapes(rng: np.random.Generator, template: np.ndarray) -> np.ndarray:
    """(51, V, 3): each blendshape moves a few points by a few mm."""
    shapes = np.repeat(template[None], len(ARKIT_BLENDSHAPES), 0)
    for shape in shapes:
        moved = rng.choice(len(template), 4, replace=False)
        shape[moved] += rng.normal(0, 0.0015, (4, 3))
    return shapes


def crop_warps(uv: np.ndarray, size: int) -> np.ndarray:
    """Similarity warps (N, 2, 3) putting each projection's bounding box in the crop."""
    low, high = uv.min(1), uv.max(1)
    scale = 0.8 * size / (high - low).max(1)
    warps = np.zeros((len(uv), 2, 3))
    warps[:, 0, 0] = warps[:, 1, 1] = scale
    warps[:, :, 2] = size / 2 - scale[:, None] * (low + high) / 2
    return warps


def memory_store(rng: np.random.Generator, n: int, size: int, camera: Camera, skipped: tuple = ()) -> tuple:
    """A crop store in memory over n noisy copies of a 34-point symmetric template (noise crops,
    warps framing each projection; the rows in `skipped` have NaN warps, as the crop stage marks
    them) -> (template (V, 3), verts (n, V, 3) float32, poses (n, 4, 4), CropStore, 3-component PCA)."""
    from stages.face.pca import fit_pca
    from stages.face.warp import invert_warp
    from stages.nets.dataset import CropStore
    from tests.conftest import random_poses
    template = symmetric_template(15, rng)
    verts = (template[None] + rng.normal(0, 0.002, (n,) + template.shape)).astype(np.float32)
    poses = random_poses(rng, n)
    warps = crop_warps(camera.project(verts, poses), size)
    warps[list(skipped)] = np.nan
    store = CropStore(images=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), warps=warps,
                      inv_warps=invert_warp(warps), index=pd.DataFrame(index=range(n)))
    return template, verts, poses, store, fit_pca(verts.astype(np.float64), 3)


def write_store(folder: Path, table: pd.DataFrame, uv: np.ndarray, size: int, rng: np.random.Generator) -> None:
    from stages.face.warp import invert_warp
    folder.mkdir(parents=True, exist_ok=True)
    warps = crop_warps(uv, size)
    np.save(folder / "images.npy", rng.integers(0, 256, (len(table), size, size, 3), dtype=np.uint8))
    np.save(folder / "warps.npy", warps)
    np.save(folder / "inv_warps.npy", invert_warp(warps))
    table.to_csv(folder / "index.csv", index=False)


def make_tiny_project(root: Path, subjects: int = 6, crop_size: int = 32, half: int = 12,
                      seed: int = 0) -> Params:
    """Write the tree under `root`; returns its params (also in root/params.yaml)."""
    rng = np.random.default_rng(seed)
    data = root / "data" / "synth"
    template = symmetric_template(half, rng)
    blendshapes = face_blendshapes(rng, template)
    table, meshes = make_faces(rng, template, subjects, ["neutral", "smile", "talk"], 3, blendshapes)
    (data / "resources").mkdir(parents=True)
    write_obj(data / "resources" / "example.obj", template)
    np.save(data / "resources" / "kpt_ind.npy", np.arange(4))
    np.savetxt(data / "resources" / "projection_matrix.txt", PROJ)
    (data / "list").mkdir()
    table.to_csv(data / "list" / "WCPA_track2_train.csv", index=False)
    poses = rt_from_euler(rng.normal(0, 0.2, (len(table), 3)),
                          np.column_stack([rng.normal(0, 0.02, (len(table), 2)), rng.normal(-0.5, 0.03, len(table))]))
    for row, verts, pose in zip(table.itertuples(index=False), meshes, poses):
        info = data / "info" / row.subject_id / row.facial_action / f"{row.img_id}_info.npz"
        info.parent.mkdir(parents=True, exist_ok=True)
        np.savez(info, verts=verts, R_t=pose)
    first = table.iloc[0]
    image = data / "image" / first.subject_id / first.facial_action / f"{first.img_id}_ar.jpg"
    image.parent.mkdir(parents=True)
    cv2.imwrite(str(image), np.zeros((800, 800, 3), np.uint8))
    for name, shape in zip(ARKIT_BLENDSHAPES, blendshapes):
        write_obj(data / "blendshapes" / f"{name}.obj", shape)
    uv = Camera(PROJ, 800, 800).project(meshes, poses)
    is_val = table.subject_id.isin(table.subject_id.unique()[-2:]).to_numpy()
    for split, mask in (("train", ~is_val), ("val", is_val)):
        part = table[mask].reset_index(drop=True)
        (root / "artifacts" / "split").mkdir(parents=True, exist_ok=True)
        part.to_csv(root / "artifacts" / "split" / f"{split}.csv", index=False)
        write_store(root / "artifacts" / "crop" / split, part, uv[mask], crop_size, rng)
    stamp_run([root / "artifacts" / "crop" / split for split in ("train", "val")])
    params = tiny_params()
    write_params(root / "params.yaml", params)
    return params


def tiny_params() -> Params:
    """The repository's params.yaml with a tiny, fast train/pca configuration."""
    params = load_params(REPO / "params.yaml")
    return params.replace(data={"root": "data/synth", "blendshapes": "data/synth/blendshapes"},
                          pca={"n_components": 20, "neutral_list": ""},
                          train={"depth": 18, "pretrained": False, "input_size": 0, "epochs": 1, "batch_size": 4,
                                 "workers": 0, "device": "cpu", "val_batch_size": 8, "lr": 1e-3})


def write_params(path: Path, params: Params) -> None:
    """`params` as a params file (what the stages' --params and `main` read)."""
    path.write_text(yaml.safe_dump(params.as_dict(), sort_keys=False))


def interrupt_after(owner, name: str, calls: int, run, monkeypatch) -> None:
    """Call run() with owner.<name> stopping, as a kill would, right after its `calls`-th call
    has done its work (a chunk written, a checkpoint saved); the method is restored afterwards."""
    method, done = getattr(owner, name), []

    def then_stop(self, *args):
        result = method(self, *args)
        done.append(1)
        if len(done) == calls:
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(owner, name, then_stop)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(owner, name, method)


def interrupt_in(owner, name: str, calls: int, run, monkeypatch) -> None:
    """Call run() with owner.<name> stopping, as a kill would, at its `calls`-th call before it
    does its work (a checkpoint being written); the method is restored afterwards."""
    method, seen = getattr(owner, name), []

    def stop(self, *args):
        seen.append(1)
        if len(seen) == calls:
            raise KeyboardInterrupt
        return method(self, *args)

    monkeypatch.setattr(owner, name, stop)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(owner, name, method)


def kill_in_epoch(run, trainer_cls, epoch: int, monkeypatch) -> None:
    """Call run() with trainer_cls.train_epoch stopping, as a kill would, when it reaches `epoch`
    (0-based); the trainer is restored afterwards."""
    train_epoch = trainer_cls.train_epoch

    def stop(self, current):
        if current == epoch:
            raise KeyboardInterrupt
        return train_epoch(self, current)

    monkeypatch.setattr(trainer_cls, "train_epoch", stop)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(trainer_cls, "train_epoch", train_epoch)
