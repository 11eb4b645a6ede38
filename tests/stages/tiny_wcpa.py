"""A hand-made tiny data root in the WCPA layout (no synth stage needed), for stage tests.

A 6 x 5 grid mesh on a face-sized half ellipsoid, 6 landmark vertices, 160 x 160 images with
the challenge's projection matrix, a few subjects; test ground truth in a separate folder.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import yaml

from stages.common.params import load_params
from stages.wcpa.camera import Camera
from stages.wcpa.layout import image_path, info_path, landmarks_path, list_path, write_landmarks, write_list
from stages.wcpa.obj import write_obj
from tests.conftest import CHALLENGE_PROJ, random_poses

IMAGE_SIZE = 160
KPT_IND = np.array([0, 5, 12, 17, 24, 29])


def grid_mesh(rows: int = 5, cols: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (rows*cols, 3) metres on a half ellipsoid facing +z, and their triangles (F, 3)."""
    u, v = np.meshgrid(np.linspace(-0.9, 0.9, cols), np.linspace(-0.9, 0.9, rows))
    z = np.sqrt(np.clip(1 - u ** 2 - v ** 2, 0.05, None))
    verts = np.stack([u * 0.078, v * 0.092, z * 0.048], axis=-1).reshape(-1, 3)
    index = np.arange(rows * cols).reshape(rows, cols)
    a, b, c, d = index[:-1, :-1], index[:-1, 1:], index[1:, :-1], index[1:, 1:]
    faces = np.concatenate([np.stack([a, b, d], -1).reshape(-1, 3), np.stack([a, d, c], -1).reshape(-1, 3)])
    return verts, faces


def _ids(subjects: list[str], actions: int, frames: int) -> pd.DataFrame:
    return pd.DataFrame([(s, f"{a:02d}", f"{f:04d}") for s in subjects for a in range(actions) for f in range(frames)],
                        columns=["subject_id", "facial_action", "img_id"])


def _write_samples(root: Path, label_root: Path, table: pd.DataFrame, template: np.ndarray, seed: int) -> None:
    rng = np.random.default_rng(seed)
    camera = Camera(CHALLENGE_PROJ, IMAGE_SIZE, IMAGE_SIZE)
    poses = random_poses(rng, len(table))
    poses[:, 3, 2] -= 0.25                       # further away: the face fits the small image
    for row, R_t in zip(table.itertuples(index=False), poses):
        verts = (template * rng.normal(1.0, 0.03, size=3)).astype(np.float32)
        uv = camera.project(verts, R_t)
        image = rng.integers(0, 80, size=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        for x, y in uv:
            cv2.circle(image, (int(x), int(y)), 2, (220, 200, 180), -1)
        image_path(root, row).parent.mkdir(parents=True, exist_ok=True)
        image_path(root, row).write_bytes(cv2.imencode(".jpg", image)[1].tobytes())
        write_landmarks(landmarks_path(root, row), uv[KPT_IND])
        info_path(label_root, row).parent.mkdir(parents=True, exist_ok=True)
        np.savez(info_path(label_root, row), verts=verts, R_t=R_t)


def make_tiny_root(root: Path, test_gt: Path, train_subjects: int = 5, test_subjects: int = 2) -> None:
    """Write a tiny data root (train: 2 actions x 2 frames per subject) and its test ground truth."""
    template, faces = grid_mesh()
    resources = root / "resources"
    resources.mkdir(parents=True)
    write_obj(resources / "example.obj", template, faces)
    np.save(resources / "kpt_ind.npy", KPT_IND)
    np.savetxt(resources / "projection_matrix.txt", CHALLENGE_PROJ)
    train = _ids([f"{100 + s}" for s in range(train_subjects)], 2, 2)
    test = _ids([f"{900 + s}" for s in range(test_subjects)], 1, 2)
    write_list(list_path(root, "train"), train)
    write_list(list_path(root, "test"), test)
    _write_samples(root, root, train, template, seed=0)
    _write_samples(root, test_gt, test, template, seed=1)


def write_params(path: Path, root: Path, test_gt: Path | str, **changes) -> Path:
    """The project's params.yaml with data.root / data.test_gt pointed at the tiny set, then
    `changes` (Params.replace's: data={"skip_bad": True}, ...)."""
    params = load_params("params.yaml").replace(data={"root": str(root), "test_gt": str(test_gt), "workers": 1})
    path.write_text(yaml.safe_dump(params.replace(**changes).as_dict()))
    return path
